"""The confirm bookkeeping of a burst: RabbitMQ acks or nacks delivery tags one by one or up
to a tag ("multiple"), in any order across the two; a message counts as taken only once it
is acked and never nacked. (The burst itself runs on a real broker in the integration and
e2e tests: tests/integration/tasks/test_bulk_runs.py, tests/e2e/test_bulk_submission.py.)"""

from __future__ import annotations

from switchyard.platform.publisher import _Burst


def burst() -> _Burst:
    return _Burst(connection=None, channel=None, producer=None)


def test_a_multiple_ack_confirms_every_tag_up_to_it() -> None:
    confirms = burst()
    confirms.on_ack(3, multiple=True)
    assert [confirms.confirmed(tag) for tag in (1, 2, 3, 4)] == [True, True, True, False]
    assert not confirms.settled(4)


def test_single_acks_out_of_order_settle_only_their_tags() -> None:
    confirms = burst()
    confirms.on_ack(2, multiple=False)
    assert confirms.settled(2)
    assert not confirms.settled(1)
    confirms.on_ack(1, multiple=False)
    assert confirms.confirmed(1)
    assert confirms.confirmed(2)


def test_a_multiple_nack_refuses_only_the_tags_not_acked_before_it() -> None:
    confirms = burst()
    confirms.on_ack(1, multiple=True)
    confirms.on_ack(3, multiple=False)
    confirms.on_nack(4, multiple=True)
    assert [confirms.confirmed(tag) for tag in (1, 2, 3, 4)] == [True, False, True, False]
    assert all(confirms.settled(tag) for tag in (1, 2, 3, 4))


def test_a_nacked_tag_stays_refused_under_a_later_multiple_ack() -> None:
    confirms = burst()
    confirms.on_nack(2, multiple=False)
    confirms.on_ack(5, multiple=True)
    assert [confirms.confirmed(tag) for tag in range(1, 6)] == [True, False, True, True, True]


def test_forgetting_settled_tags_keeps_what_comes_after() -> None:
    confirms = burst()
    confirms.on_ack(2, multiple=False)
    confirms.on_ack(7, multiple=False)
    confirms.forget(5)
    assert confirms.acked == {7}

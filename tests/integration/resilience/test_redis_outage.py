"""Redis stopped (a relay in front of it cut): cached reads fall through to the ledger, rate
limits fall back to counting in the process, submission still works, live event streams answer
503 problem+json; all of it recovers by itself."""

from __future__ import annotations

import asyncio
import time

from switchyard.api.app import create_app
from tests.fixtures.accounts import sign_up
from tests.fixtures.faults import relayed_url
from tests.fixtures.gateway import SettingsFactory, running

RUN = {"task": "system.echo", "payload": {"message": "no redis"}}
RUNS_PER_MINUTE = 3


async def test_the_api_works_around_a_redis_outage_and_recovers(
    make_settings: SettingsFactory, redis_url: str, own_broker: str
) -> None:
    with relayed_url(redis_url, 6379) as (relay, through):
        settings = make_settings(
            redis_url=through,
            celery_broker_url=own_broker,  # no worker: the runs stay queued, to be cancelled
            rate_limit_task_runs=f"{RUNS_PER_MINUTE}/minute",
            redis_socket_timeout_seconds=1.0,
        )
        async with running(create_app(settings)) as client:
            account = await sign_up(client)
            client.headers.update(account.headers)
            relay.stop()

            # Submission works, and its limit is still enforced, counted in the process.
            accepted = []
            for _ in range(RUNS_PER_MINUTE):
                answer = await client.post("/api/v1/tasks/run", json=RUN)
                assert answer.status_code == 202, answer.text
                accepted.append(answer.json()["task_id"])
            limited = await client.post("/api/v1/tasks/run", json=RUN)
            assert limited.status_code == 429
            assert int(limited.headers["retry-after"]) >= 1

            # Reads fall through the cache to the ledger.
            run_id = accepted[0]
            read = await client.get(f"/api/v1/tasks/{run_id}")
            assert read.status_code == 200
            assert read.json()["payload"] == RUN["payload"]
            cancelled = await client.post(f"/api/v1/tasks/{run_id}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            assert (await client.get(f"/api/v1/tasks/{run_id}")).json()["state"] == "cancelled"

            # Following a run live needs Redis: a clear 503, not a broken stream.
            started = time.perf_counter()
            events = await client.get(f"/api/v1/tasks/{run_id}/events")
            assert time.perf_counter() - started < settings.redis_socket_timeout_seconds + 1
            assert events.status_code == 503, events.text
            assert events.headers["content-type"] == "application/problem+json"
            assert events.headers["retry-after"] == "5"
            assert "Redis" in events.json()["detail"]

            relay.start()
            deadline = time.monotonic() + 15
            while True:
                events = await client.get(f"/api/v1/tasks/{run_id}/events")
                if events.status_code == 200:
                    break
                assert time.monotonic() < deadline, events.text
                await asyncio.sleep(0.2)
            assert '"state": "cancelled"' in events.text
            checks = (await client.get("/health")).json()["checks"]
            assert checks["redis"]["status"] == "up"


async def test_a_silent_redis_is_waited_for_once_then_skipped_until_it_answers(
    make_settings: SettingsFactory, redis_url: str, own_broker: str
) -> None:
    """Redis accepts connections and never answers: after the first call times out, requests
    stop sending it anything (only the breaker's probe does), limits count in the process and
    reads come from the ledger; when it answers again, it is used again."""
    with relayed_url(redis_url, 6379) as (relay, through):
        settings = make_settings(
            redis_url=through,
            celery_broker_url=own_broker,
            rate_limit_task_runs="5/minute",
            redis_socket_timeout_seconds=1.0,
        )
        async with running(create_app(settings)) as client:
            account = await sign_up(client)
            client.headers.update(account.headers)
            breaker = client._transport.app.state.gateway.services.redis_breaker  # type: ignore[attr-defined]
            relay.hang()

            first = await client.get("/api/v1/tasks/", params={"limit": 1})
            assert first.status_code == 200
            assert breaker.open_since is not None
            sent_so_far = relay.swallowed

            answers = [await client.get("/api/v1/tasks/", params={"limit": 1}) for _ in range(10)]
            answers += [await client.post("/api/v1/tasks/run", json=RUN) for _ in range(6)]
            assert [a.status_code for a in answers] == [200] * 10 + [202] * 5 + [429]
            read = await client.get(f"/api/v1/tasks/{answers[10].json()['task_id']}")
            assert read.json()["payload"] == RUN["payload"]
            # Nothing of those 17 requests went to Redis: at most the breaker's probes did.
            assert relay.swallowed - sent_so_far <= 2

            relay.answer()
            deadline = time.monotonic() + 15
            while breaker.open_since is not None:
                assert time.monotonic() < deadline, "the breaker never closed"
                await asyncio.sleep(0.1)
            checks = (await client.get("/health")).json()["checks"]
            assert checks["redis"]["status"] == "up"
            run_id = answers[10].json()["task_id"]
            assert (await client.post(f"/api/v1/tasks/{run_id}/cancel")).status_code == 200
            events = await client.get(f"/api/v1/tasks/{run_id}/events")  # needs Redis
            assert events.status_code == 200
            assert '"state": "cancelled"' in events.text

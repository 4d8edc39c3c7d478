from __future__ import annotations

import uuid
from datetime import UTC, datetime

from switchyard.platform.dead_letters import parse


def test_parse_reads_celery_headers_and_the_work_queue_death() -> None:
    run_id = uuid.uuid4()
    when = datetime(2026, 5, 1, tzinfo=UTC)
    headers = {
        "id": str(run_id),
        "task": "system.fail",
        "x-death": [
            {"queue": "default", "reason": "delivery_limit", "count": 1, "time": when},
            {"queue": "celery_delayed_0", "reason": "expired", "count": 3},
        ],
    }
    record = parse(headers, [[str(run_id)], {}, {}])
    assert record.run_id == run_id
    assert (record.task, record.queue, record.reason) == (
        "system.fail",
        "default",
        "delivery_limit",
    )
    assert record.dead_lettered_at == when
    assert record.headers["x-death"][0]["time"] == when.isoformat()


def test_parse_falls_back_to_the_body_and_to_unknowns() -> None:
    run_id = uuid.uuid4()
    record = parse({"id": "not-a-uuid"}, [[str(run_id)], {}, {}])
    assert record.run_id == run_id
    assert (record.task, record.queue, record.reason) == ("unknown", "unknown", "unknown")
    assert parse({}, None).run_id is None

"""The workflow benchmark's plain Celery app: the same work as `tests.fakes.workflow_tasks`
(square an item, total the list) and a no-op step, composed with Celery's canvas — a chord
(a group of N squares, then the total) and chains of five steps. Chords need a result backend:
Redis, at BENCH_RESULT_BACKEND. Otherwise the reliability of bench/celery_baseline.py
(publisher confirms, acks late, prefetch 1, a quorum queue)."""

from __future__ import annotations

import os
from typing import Any

from bench.celery_baseline import baseline_app

QUEUE = "bench-workflows"

app = baseline_app("bench-workflows", QUEUE)
app.conf.update(
    result_backend=os.environ.get("BENCH_RESULT_BACKEND", "redis://127.0.0.1:6379/0"),
    task_ignore_result=False,
    result_expires=600,
)


@app.task(name="bench.square")  # type: ignore[untyped-decorator]
def square(n: int) -> dict[str, int]:
    return {"n": n, "square": n * n}


@app.task(name="bench.total")  # type: ignore[untyped-decorator]
def total(values: list[dict[str, int]]) -> dict[str, Any]:
    numbers = [value["n"] for value in values]
    return {
        "count": len(numbers),
        "sum": sum(value["square"] for value in values),
        "ascending": numbers == sorted(numbers),
    }


@app.task(name="bench.step")  # type: ignore[untyped-decorator]
def step(previous: Any = None) -> str:
    return "done"

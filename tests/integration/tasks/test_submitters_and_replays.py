"""Every run records who submitted it; a dead letter is replayed into one run, however often
and however concurrently it is asked."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.db.models import TaskRun
from tests.fixtures.accounts import Account
from tests.fixtures.tasks import insert_dead_letter

RUN = {"task": "system.echo", "payload": {"message": "who"}}


async def test_runs_record_the_user_or_key_that_submitted_them(
    api_client: httpx.AsyncClient, tasks_account: Account
) -> None:
    by_user = await api_client.post("/api/v1/tasks/run", json=RUN, headers=tasks_account.headers)
    assert by_user.status_code == 202, by_user.text
    key = await api_client.post(
        "/api/v1/api-keys",
        json={"name": "ci", "scopes": ["tasks:run", "tasks:read"]},
        headers=tasks_account.headers,
    )
    created = key.json()
    by_key = await api_client.post(
        "/api/v1/tasks/run", json=RUN, headers={"X-API-Key": created["key"]}
    )
    assert by_key.status_code == 202, by_key.text

    user_run = await api_client.get(
        f"/api/v1/tasks/{by_user.json()['task_id']}", headers=tasks_account.headers
    )
    key_run = await api_client.get(
        f"/api/v1/tasks/{by_key.json()['task_id']}", headers=tasks_account.headers
    )
    assert user_run.json()["submitted_by"] == f"user:{tasks_account.user_id}"
    assert key_run.json()["submitted_by"] == f"api_key:{created['id']}"


async def _replays_of(engine: AsyncEngine, run_id: uuid.UUID) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(
            select(func.count()).select_from(TaskRun).where(TaskRun.replay_of == run_id)
        )
    return int(count or 0)


async def test_replaying_a_dead_letter_twice_answers_with_the_first_replay(
    tasks_api: httpx.AsyncClient, tasks_account: Account, engine: AsyncEngine
) -> None:
    letter = await insert_dead_letter(engine, tasks_account.tenant_id)
    first = await tasks_api.post(f"/api/v1/tasks/dead-letters/{letter.id}/replay")
    second = await tasks_api.post(f"/api/v1/tasks/dead-letters/{letter.id}/replay")
    assert (first.status_code, second.status_code) == (202, 202), second.text
    assert first.json()["task_id"] == second.json()["task_id"]
    assert await _replays_of(engine, letter.run_id) == 1  # type: ignore[arg-type]
    letters = (await tasks_api.get("/api/v1/tasks/dead-letters")).json()
    shown = next(item for item in letters if item["id"] == str(letter.id))
    assert shown["replayed_task_id"] == first.json()["task_id"]


async def test_concurrent_replays_of_one_dead_letter_make_one_run(
    tasks_api: httpx.AsyncClient, tasks_account: Account, engine: AsyncEngine
) -> None:
    letter = await insert_dead_letter(engine, tasks_account.tenant_id)
    answers = await asyncio.gather(
        *(tasks_api.post(f"/api/v1/tasks/dead-letters/{letter.id}/replay") for _ in range(5))
    )
    assert {answer.status_code for answer in answers} == {202}
    assert len({answer.json()["task_id"] for answer in answers}) == 1
    assert await _replays_of(engine, letter.run_id) == 1  # type: ignore[arg-type]

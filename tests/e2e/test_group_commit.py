"""Group commit of single submissions (POST /api/v1/tasks/run) on the real servers.

Concurrent requests share one transaction and one burst of publishes, and each still answers
only once its own run is committed and confirmed; a broker failure in the middle of 200
concurrent submissions leaves no accepted run unpublished and no refused run in the ledger."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.api.app import create_app
from switchyard.db.models import TaskRun
from tests.fixtures.accounts import sign_up
from tests.fixtures.faults import relayed_url
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.processes import RunningRole
from tests.fixtures.scrape import metric_value
from tests.fixtures.tasks import DELIVERY_LIMIT, published_at, start_worker_on, wait_for_run

pytestmark = pytest.mark.e2e

RUN = {"task": "system.echo", "payload": {"message": "grouped"}}
GROUP_SIZE = "switchyard_task_run_group_size"


async def ledger_of(engine: AsyncEngine, tenant_id: uuid.UUID) -> dict[uuid.UUID, Any]:
    """The tenant's runs: id -> (id, published_at)."""
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                select(TaskRun.id, TaskRun.published_at).where(TaskRun.tenant_id == tenant_id)
            )
        ).all()
    return {row.id: row for row in rows}


async def test_concurrent_submissions_share_groups_and_each_answers_once_committed(
    make_settings: SettingsFactory, own_broker: str, engine: AsyncEngine
) -> None:
    settings = make_settings(
        celery_broker_url=own_broker,
        task_delivery_limit=DELIVERY_LIMIT,
        task_group_commit_ms=50,
        rate_limits_enabled=False,
    )
    async with running(create_app(settings)) as client:
        account = await sign_up(client)
        client.headers.update(account.headers)
        before = (await client.get("/metrics")).text
        committed_at_answer: list[bool] = []

        async def submit() -> str:
            answer = await client.post("/api/v1/tasks/run", json=RUN)
            assert answer.status_code == 202, answer.text
            run_id = uuid.UUID(answer.json()["task_id"])
            committed_at_answer.append(run_id in await ledger_of(engine, account.tenant_id))
            return str(run_id)

        ids = await asyncio.gather(*(submit() for _ in range(40)))
        after = (await client.get("/metrics")).text
    assert len(set(ids)) == 40
    assert all(committed_at_answer)  # no 202 came before its row was committed
    groups = metric_value(after, f"{GROUP_SIZE}_count") - metric_value(
        before, f"{GROUP_SIZE}_count"
    )
    grouped = metric_value(after, f"{GROUP_SIZE}_sum") - metric_value(before, f"{GROUP_SIZE}_sum")
    assert grouped == 40
    assert groups < 40  # some runs shared a transaction and a burst
    stored = await ledger_of(engine, account.tenant_id)
    assert set(stored) == {uuid.UUID(run_id) for run_id in ids}


async def test_a_broker_failure_amid_200_concurrent_submissions_leaves_ledger_and_broker_agreeing(
    make_settings: SettingsFactory,
    own_broker: str,
    engine: AsyncEngine,
    start_role: Callable[..., RunningRole],
    task_env: dict[str, str],
    tmp_path: Path,
) -> None:
    with relayed_url(own_broker, 5672) as (relay, through):
        settings = make_settings(
            celery_broker_url=through,
            task_delivery_limit=DELIVERY_LIMIT,
            broker_publish_timeout_seconds=2,
            rate_limits_enabled=False,
        )
        async with running(create_app(settings)) as client:
            account = await sign_up(client)
            client.headers.update(account.headers)
            answers: list[httpx.Response] = []
            failed = asyncio.Event()

            async def submit() -> None:
                answers.append(await client.post("/api/v1/tasks/run", json=RUN))
                if len(answers) == 60:  # the broker fails in the middle, then comes back
                    relay.stop()
                    await asyncio.sleep(0.5)
                    relay.start()
                    failed.set()

            await asyncio.gather(*(submit() for _ in range(200)))
            assert failed.is_set()
            accepted = {uuid.UUID(a.json()["task_id"]) for a in answers if a.status_code == 202}
            refused = [a for a in answers if a.status_code != 202]
            assert len(answers) == 200
            assert refused, "no submission met the failure"
            assert accepted, "no submission was accepted"
            for answer in refused:
                assert answer.status_code == 503, answer.text
                assert answer.headers["content-type"] == "application/problem+json"
                assert answer.headers["retry-after"] == "5"

            stored = await ledger_of(engine, account.tenant_id)
            assert set(stored) == accepted  # no refused run in the ledger, no accepted one lost
            # Every accepted run was confirmed by the broker, but those waiting for the
            # tenant's share (TENANT_MAX_RUNS_IN_FLIGHT): they are published when admitted
            # (by a worker's sweep, once the refused runs' slots are free).
            waiting = {
                uuid.UUID(a.json()["task_id"])
                for a in answers
                if a.status_code == 202 and a.json()["state_detail"] == "waiting_for_capacity"
            }
            for run_id in accepted - waiting:
                assert await published_at(engine, run_id) is not None

            start_worker_on(
                start_role,
                task_env,
                own_broker,
                tmp_path / "worker",
                WORKER_CONCURRENCY="50",
            )
            for run_id in accepted:
                run = await wait_for_run(client, str(run_id), within=90)
                assert run["state"] == "succeeded", run
                assert run["attempts"] == 1

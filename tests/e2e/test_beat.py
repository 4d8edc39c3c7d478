"""Beat processes publishing schedules from the database."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.fixtures.processes import RunningRole
from tests.fixtures.processes import healthcheck as role_healthcheck
from tests.fixtures.tasks import unique

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("default_worker")]


def start_beat(
    start_role: Callable[..., RunningRole], task_env: dict[str, str], workdir: Path
) -> RunningRole:
    workdir.mkdir()
    beat = start_role("beat", cwd=workdir, **{**task_env, "VAR_DIR": str(workdir)})
    beat.wait_heartbeat(workdir / "beat.heartbeat")
    return beat


async def runs_per_tick(engine: AsyncEngine, name: str) -> list[tuple[object, int]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT r.scheduled_for, count(*) FROM task_runs r "
                "JOIN task_definitions d ON d.id = r.definition_id "
                "WHERE d.name = :name GROUP BY 1 ORDER BY 1"
            ),
            {"name": name},
        )
        return [(row[0], int(row[1])) for row in rows]


def healthcheck(beat: RunningRole) -> subprocess.CompletedProcess[str]:
    return role_healthcheck("beat", beat.env)


async def test_two_beats_publish_each_tick_once_and_a_standby_takes_over(
    tasks_api: httpx.AsyncClient,
    start_role: Callable[..., RunningRole],
    task_env: dict[str, str],
    engine: AsyncEngine,
    tmp_path: Path,
) -> None:
    beats = [start_beat(start_role, task_env, tmp_path / f"beat-{i}") for i in range(2)]
    name = unique("every-second")
    created = await tasks_api.post(
        "/api/v1/tasks/register",
        json={
            "name": name,
            "task": "system.echo",
            "payload": {"message": "tick"},
            "schedule": {"every_seconds": 1},
        },
    )
    assert created.status_code == 201
    await asyncio.sleep(4)

    checks = [healthcheck(beat) for beat in beats]
    assert all(check.returncode == 0 for check in checks)
    roles = sorted("leader" if "leader" in check.stdout else "standby" for check in checks)
    assert roles == ["leader", "standby"]
    leader = beats[0] if "leader" in checks[0].stdout else beats[1]
    standby = beats[1] if leader is beats[0] else beats[0]

    leader.stop(signal.SIGKILL)
    before = len(await runs_per_tick(engine, name))
    await asyncio.sleep(4)
    assert "leader" in healthcheck(standby).stdout
    assert len(await runs_per_tick(engine, name)) > before

    disabled = await tasks_api.patch(f"/api/v1/tasks/definitions/{name}", json={"enabled": False})
    assert disabled.json()["enabled"] is False
    await asyncio.sleep(1.5)
    ticks = await runs_per_tick(engine, name)
    assert len(ticks) >= 5
    assert {count for _, count in ticks} == {1}
    await asyncio.sleep(2)
    assert await runs_per_tick(engine, name) == ticks

    runs = (
        await tasks_api.get("/api/v1/tasks/", params={"task": "system.echo", "limit": 200})
    ).json()
    ours = [run for run in runs["items"] if run["submitted_by"] == "beat"]
    assert ours
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(run["state"] != "succeeded" for run in ours):
        await asyncio.sleep(0.5)
        runs = (
            await tasks_api.get("/api/v1/tasks/", params={"task": "system.echo", "limit": 200})
        ).json()
        ours = [run for run in runs["items"] if run["submitted_by"] == "beat"]
    assert {run["state"] for run in ours} == {"succeeded"}


async def test_schedule_changes_take_effect_without_restarting_beat(
    tasks_api: httpx.AsyncClient,
    start_role: Callable[..., RunningRole],
    task_env: dict[str, str],
    engine: AsyncEngine,
    tmp_path: Path,
) -> None:
    start_beat(start_role, task_env, tmp_path / "beat")
    name = unique("later")
    created = await tasks_api.post(
        "/api/v1/tasks/register",
        json={
            "name": name,
            "task": "system.echo",
            "payload": {"message": "x"},
            "schedule": {"every_seconds": 3600},
        },
    )
    assert created.status_code == 201
    await asyncio.sleep(2)
    assert await runs_per_tick(engine, name) == []
    patched = await tasks_api.patch(
        f"/api/v1/tasks/definitions/{name}", json={"schedule": {"every_seconds": 1}}
    )
    assert patched.json()["schedule"] == {"every_seconds": 1}
    await asyncio.sleep(3)
    assert len(await runs_per_tick(engine, name)) >= 1
    assert (await tasks_api.delete(f"/api/v1/tasks/definitions/{name}")).status_code == 204

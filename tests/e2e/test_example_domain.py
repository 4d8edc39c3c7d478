"""The guide's example domain (docs/adding-a-domain.md, tests/example_domain/notes), switched on
with DOMAIN_PACKAGES in real processes: `migrate` creates its table from its own migration
branch, the gateway mounts its routes, a worker runs its task. Over HTTP only."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.fixtures.accounts import sign_up
from tests.fixtures.postgres import DatabaseFactory, tables
from tests.fixtures.processes import SWITCHYARD, RunningRole, said, switchyard_env
from tests.fixtures.servers import free_port
from tests.fixtures.tasks import wait_for_run

pytestmark = pytest.mark.e2e

REPOSITORY = Path(__file__).resolve().parents[2]
PACKAGE = "tests.example_domain.notes"


async def test_the_example_domain_migrates_serves_and_runs_its_task(
    start_role: Callable[..., RunningRole],
    create_database: DatabaseFactory,
    task_env: dict[str, str],
    own_broker: str,
    tmp_path: Path,
) -> None:
    url = await create_database()
    env = {
        **task_env,
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "CELERY_BROKER_URL": own_broker,  # no other test's worker takes notes.count_words
        "DOMAIN_PACKAGES": PACKAGE,
        "PYTHONPATH": str(REPOSITORY),
    }
    migrated = await asyncio.to_thread(
        subprocess.run,
        [SWITCHYARD, "run", "migrate"],
        env=switchyard_env(**env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr
    assert {"notes", "task_runs", "tenants"} <= await tables(url)

    worker_dir = tmp_path / "worker"
    worker_dir.mkdir()
    worker = start_role("worker", cwd=worker_dir, **env, VAR_DIR=str(worker_dir))
    gateway = start_role("api-gateway", free_port(), **env, VAR_DIR=str(tmp_path))
    gateway.wait_healthy()
    worker.wait_heartbeat(worker_dir / "worker.heartbeat")

    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client:
        spec = (await client.get("/openapi.json")).json()
        assert {"/api/v1/notes", "/api/v1/notes/{note_id}"} <= set(spec["paths"])
        owner, other = await sign_up(client), await sign_up(client, "Other")
        client.headers.update(owner.headers)

        created = await client.post(
            "/api/v1/notes", json={"title": "Groceries", "body": "eggs milk  bread\ncoffee"}
        )
        assert created.status_code == 201, created.text
        note, task_id = created.json()["note"], created.json()["task_id"]
        assert note["word_count"] is None
        run = await wait_for_run(client, task_id)
        assert run["state"] == "succeeded", run
        assert run["task"] == "notes.count_words"
        assert run["result"] == {"note_id": note["id"], "words": 4}
        counted = (await client.get(f"/api/v1/notes/{note['id']}")).json()
        assert counted["word_count"] == 4

        invalid = await client.post("/api/v1/notes", json={"title": "", "body": "x"})
        assert invalid.status_code == 422
        assert [e["field"] for e in invalid.json()["errors"]] == ["body.title"]
        # An internal task: not startable over REST, as unknown as a missing one.
        direct = await client.post(
            "/api/v1/tasks/run", json={"task": "notes.count_words", "payload": {}}
        )
        assert direct.status_code == 404

        second = await client.post("/api/v1/notes", json={"title": "Two", "body": "a b"})
        page = (await client.get("/api/v1/notes", params={"limit": 1})).json()
        assert [item["id"] for item in page["items"]] == [second.json()["note"]["id"]]
        rest = (await client.get("/api/v1/notes", params={"cursor": page["next_cursor"]})).json()
        assert [item["id"] for item in rest["items"]] == [note["id"]]

        theirs = await client.get(f"/api/v1/notes/{note['id']}", headers=other.headers)
        assert theirs.status_code == 404
        assert (await client.get("/api/v1/notes", headers=other.headers)).json()["items"] == []
        refused = await client.delete(f"/api/v1/notes/{note['id']}", headers=other.headers)
        assert refused.status_code == 404

        assert (await client.delete(f"/api/v1/notes/{note['id']}")).status_code == 204
        assert (await client.get(f"/api/v1/notes/{note['id']}")).status_code == 404

    # The package taken out of DOMAIN_PACKAGES again: migrate names it, no Alembic traceback.
    without = await asyncio.to_thread(
        subprocess.run,
        [SWITCHYARD, "run", "migrate"],
        env=switchyard_env(**{**env, "DOMAIN_PACKAGES": ""}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert without.returncode == 78, without.stderr[-2000:]
    assert said(without.stderr)[-1].startswith(
        "switchyard: configuration error: DOMAIN_PACKAGES: the database has revision "
    )
    assert "Traceback" not in without.stderr

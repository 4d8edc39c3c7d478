"""A tenant's deletion at scale: a tenant with `--runs` runs (1 M), `--documents` documents (10,000,
each a stored object) and their dead letters is erased as beat erases it, while another
tenant's API is measured.

One scratch database and vhost; a real gateway process (`switchyard run api-gateway`) with the
product's defaults, on its own VAR_DIR (the local object store). Seeded by SQL (runs as
bench.ledger_queries seeds them, documents' rows) and by the object store's own `put` (the
objects). The other tenant asks one request at a time, as bench.ledger_scale does: submit
(`POST /tasks/run`) and get-run (`GET /tasks/{id}` of a final run never asked for before) —
`--requests` pairs before, then the same mix while the deletion runs in a process of its own
(`tenants.deletion.Eraser.erase`, with the defaults: TENANT_DELETION_BATCH_ROWS,
TENANT_DELETION_REST_RATIO) until it ends.

Target: the other tenant's p99 during the deletion within 1.5x of its p99 before; what the
deletion took and removed, printed.
Usage: uv run python -m bench.tenant_deletion [--runs 1000000] [--documents 10000]
       [--requests 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench import ledger_queries as hot
from bench.console_runs import account
from bench.harness import (
    DEFAULT_REDIS,
    SWITCHYARD,
    free_port,
    percentile,
    print_table,
    print_targets,
    process,
    role_env,
    scratch_database,
    scratch_vhost,
    wait_http,
)
from bench.ledger_scale import Api, Timed, final_runs
from switchyard.services.container import Services
from switchyard.services.objects import create_object_store
from switchyard.settings import Settings
from switchyard.tenants.deletion import Eraser

TARGET = 1.5
DOOMED = "doomed-"
BYSTANDER = "bystander-"

_DOCUMENTS = text(
    """
    INSERT INTO knowledge_documents (id, tenant_id, title, filename, content_type, size_bytes,
                                     object_key, status, chunk_count)
    SELECT d, :tenant, 'Document ' || d, 'notes.txt', 'text/plain', 64,
           'documents/' || d, 'ready', 3
    FROM unnest(CAST(:ids AS uuid[])) AS d
    """
)
_LETTERS = text(
    """
    INSERT INTO dead_letters (tenant_id, run_id, task, queue, payload, reason, last_error,
                              attempts, dead_lettered_at, headers)
    SELECT tenant_id, id, task, queue, payload, 'delivery_limit', error_message, 5,
           finished_at, '{}'::jsonb
    FROM task_runs WHERE tenant_id = :tenant AND state = 'dead_lettered'
    """
)


def settings_for(database: str, var_dir: Path) -> Settings:
    """The deletion's settings: the product's defaults, on the benchmark's servers."""
    return Settings(
        _env_file=None,
        environment="test",
        database_url=database,
        redis_url=DEFAULT_REDIS,
        var_dir=var_dir,
    )


async def seed_doomed(
    engine: AsyncEngine, settings: Settings, tenant_id: uuid.UUID, args: argparse.Namespace
) -> None:
    started = time.perf_counter()

    def progress(done: int) -> None:
        print(f"  {done:,} runs, {time.perf_counter() - started:.0f} s")

    await hot.seed_runs(
        engine,
        args.runs,
        tenants=1,
        now=datetime.now(UTC),
        rebuild_indexes=True,
        progress=progress,
        slug_prefix=DOOMED,
    )
    ids = [uuid.uuid4() for _ in range(args.documents)]
    async with engine.begin() as connection:
        await connection.execute(_LETTERS, {"tenant": tenant_id})
        await connection.execute(_DOCUMENTS, {"tenant": tenant_id, "ids": ids})
    store = create_object_store(settings)
    for start in range(0, len(ids), 50):
        await asyncio.gather(
            *(
                store.put(tenant_id, f"documents/{document}", b"a stored document " * 4)
                for document in ids[start : start + 50]
            )
        )
    async with engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        for table in ("task_runs", "dead_letters", "knowledge_documents"):
            await connection.execute(text(f"VACUUM (ANALYZE) {table}"))
    print(
        f"seeded {args.runs:,} runs and {args.documents:,} documents "
        f"in {time.perf_counter() - started:.0f} s"
    )


async def schedule(engine: AsyncEngine, tenant_id: uuid.UUID) -> uuid.UUID:
    """A deletion due now, as the superuser schedules it with `grace_days: 0`."""
    async with engine.begin() as connection:
        deletion = await connection.scalar(
            text(
                "INSERT INTO tenant_deletions (target_tenant_id, requested_by, delete_after) "
                "VALUES (:tenant, 'bench', now()) RETURNING id"
            ),
            {"tenant": tenant_id},
        )
    assert deletion is not None
    return uuid.UUID(str(deletion))


async def erase_only(database: str, var_dir: str, deletion: str) -> None:
    """One deletion, as beat runs it; prints what it removed and how long it took."""
    services = Services.create(settings_for(database, Path(var_dir)), "beat")
    started = time.perf_counter()
    try:
        removed = await Eraser(services).erase(uuid.UUID(deletion))
    finally:
        await services.close()
    print(json.dumps({"seconds": time.perf_counter() - started, "removed": removed}))


def in_a_process(command: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


async def while_erasing(
    api: Api, command: list[str], run_ids: list[uuid.UUID]
) -> tuple[Timed, dict[str, object]]:
    erasing = in_a_process(command)
    during: Timed = []
    for run_id in run_ids:
        if erasing.poll() is not None:
            break
        submit, get = await api.mix([run_id])
        during.append((time.time(), submit[0]))
        during.append((time.time(), get[0]))
    stdout, _ = erasing.communicate()
    if erasing.returncode != 0:
        raise RuntimeError(f"the deletion failed ({erasing.returncode})")
    return during, json.loads(stdout.strip().splitlines()[-1])


async def measure(args: argparse.Namespace, database: str, broker: str, var_dir: Path) -> int:
    port = free_port()
    env = role_env(
        DATABASE_URL=database,
        REDIS_URL=DEFAULT_REDIS,
        CELERY_BROKER_URL=broker,
        API_HOST="127.0.0.1",
        API_PORT=str(port),
        VAR_DIR=str(var_dir),
        ACCESS_TOKEN_MINUTES="1440",  # noqa: S106 - a lifetime: one sign-in outlives the run
    )
    settings = settings_for(database, var_dir)
    engine = create_async_engine(database, pool_size=2)
    with process([SWITCHYARD, "run", "api-gateway"], env) as gateway:
        wait_http(f"http://127.0.0.1:{port}/health/ready", gateway)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            doomed, _ = await account(client, "Doomed")
            other, headers = await account(client, "Bystander")
            async with engine.begin() as connection:
                for tenant, slug in ((doomed, f"{DOOMED}0"), (other, f"{BYSTANDER}0")):
                    await connection.execute(
                        text(
                            "UPDATE tenants SET slug = :slug, max_runs_in_flight = 100000 "
                            "WHERE id = :id"
                        ),
                        {"slug": slug, "id": tenant},
                    )
            await hot.seed_runs(
                engine,
                40 * args.requests,
                first=args.runs,
                tenants=1,
                now=datetime.now(UTC),
                slug_prefix=BYSTANDER,
            )
            await seed_doomed(engine, settings, doomed, args)
            api = Api(client, headers)
            ids = await final_runs(engine, other, 25 * args.requests)
            await api.mix(ids[:20])  # warm-up
            before = await api.mix(ids[20 : 20 + args.requests])
            deletion = await schedule(engine, doomed)
            command = [
                sys.executable,
                "-m",
                "bench.tenant_deletion",
                "--erase",
                database,
                str(var_dir),
                str(deletion),
            ]
            during, erased = await while_erasing(api, command, ids[20 + args.requests :])
            async with engine.connect() as left:
                runs_left = await left.scalar(
                    text("SELECT count(*) FROM task_runs WHERE tenant_id = :t"), {"t": doomed}
                )
    await engine.dispose()
    return report(args, before, during, erased, int(runs_left or 0), var_dir, doomed)


def report(
    args: argparse.Namespace,
    before: tuple[list[float], list[float]],
    during: Timed,
    erased: dict[str, object],
    runs_left: int,
    var_dir: Path,
    doomed: uuid.UUID,
) -> int:
    before_all = before[0] + before[1]
    during_ms = [ms for _, ms in during]
    p99_before, p99_during = percentile(before_all, 0.99), percentile(during_ms, 0.99)
    seconds = float(erased["seconds"])  # type: ignore[arg-type]
    removed = erased["removed"]
    assert isinstance(removed, dict)
    settings = settings_for("postgresql+asyncpg://unused", var_dir)
    objects = [
        path
        for path in (settings.object_dir / "data" / "tenants" / str(doomed)).rglob("*")
        if path.is_file()
    ]
    print_table(
        f"Deleting a tenant of {args.runs:,} runs and {args.documents:,} documents",
        ("what", "figure"),
        [
            ("deletion took", f"{seconds:,.0f} s"),
            ("runs removed", f"{removed.get('task_runs', 0):,}"),
            ("dead letters removed", f"{removed.get('dead_letters', 0):,}"),
            ("documents removed", f"{removed.get('knowledge_documents', 0):,}"),
            ("objects removed", f"{removed.get('objects', 0):,}"),
            ("runs per second", f"{removed.get('task_runs', 0) / seconds:,.0f}"),
        ],
    )
    print_table(
        "The other tenant's API (submit and get-run, one at a time)",
        ("", "requests", "p50 ms", "p99 ms"),
        [
            ("before", len(before_all), f"{percentile(before_all, 0.5):.1f}", f"{p99_before:.1f}"),
            (
                "during the deletion",
                len(during_ms),
                f"{percentile(during_ms, 0.5):.1f}",
                f"{p99_during:.1f}",
            ),
        ],
    )
    ratio = p99_during / p99_before
    print_targets(
        [
            (
                f"the other tenant's p99 during the deletion <= {TARGET}x before",
                f"{ratio:.2f}x",
                ratio <= TARGET,
            ),
            (
                "nothing of the tenant left (runs, objects)",
                f"{runs_left}, {len(objects)}",
                not runs_left and not objects,
            ),
        ]
    )
    return 0 if runs_left == 0 and not objects else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--documents", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--erase", nargs=3, metavar=("DATABASE", "VAR_DIR", "DELETION"))
    args = parser.parse_args(argv)
    if args.erase:
        asyncio.run(erase_only(*args.erase))
        return 0
    with (
        scratch_database() as database,
        scratch_vhost() as broker,
        tempfile.TemporaryDirectory(prefix="switchyard-bench-") as var_dir,
    ):
        return asyncio.run(measure(args, database, broker, Path(var_dir)))


if __name__ == "__main__":
    sys.exit(main())

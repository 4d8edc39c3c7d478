"""The console's runs page on a tenant with 100,000 runs: server time of `GET /api/v1/tasks/`
(what the page asks for) with each of its filters, through the real gateway app in process
(routing, auth, the query, the response), on PostgreSQL.

The tenant's runs span 30 days, mostly succeeded (a few failed, dead-lettered, cancelled,
queued), over 20 tasks of which one is rare; a second tenant holds half as many runs again.
Baseline, in the same run: the same requests without the list's filter indexes
(ix_task_runs_tenant_id_state_created_at and ..._task_created_at), i.e. as before migration
0008; rounds alternate with and without them.
Target: every page answers in <= 300 ms server time (p95) at 100,000 runs.
Usage: uv run python -m bench.console_runs [--runs 100000] [--requests 30] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Callable

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench.harness import Figures, percentile, print_table, print_targets, ratio, scratch_database
from switchyard.api.app import create_app
from switchyard.settings import Settings

TARGET_MS = 300.0
PASSWORD = "correct horse battery staple"  # noqa: S105 - a scratch database's account
INDEXES = {
    "ix_task_runs_tenant_id_state_created_at": "(tenant_id, state, created_at)",
    "ix_task_runs_tenant_id_task_created_at": "(tenant_id, task, created_at)",
}
# The mix of a tenant whose runs mostly went well; one task in 997 is the rare one.
SEED = """
INSERT INTO task_runs (id, tenant_id, task, queue, payload, state, attempts, created_at,
                       updated_at, started_at, finished_at, published_at, admitted_at)
SELECT gen_random_uuid(), :tenant,
       CASE WHEN i % 997 = 0 THEN 'reports.rare' ELSE 'jobs.task_' || (i % 19) END,
       'default', '{"n": 1}'::jsonb,
       CASE WHEN r < 0.90 THEN 'succeeded' WHEN r < 0.95 THEN 'failed'
            WHEN r < 0.96 THEN 'dead_lettered' WHEN r < 0.98 THEN 'cancelled'
            ELSE 'queued' END,
       1, now() - (i * interval '30 days' / :runs), now(), now(), now(), now(),
       CASE WHEN r >= 0.98 THEN NULL ELSE now() END
FROM (SELECT i, random() AS r FROM generate_series(1, :runs) AS i) AS s
"""


async def seed(engine: AsyncEngine, tenant: uuid.UUID, noise: uuid.UUID, runs: int) -> float:
    started = time.perf_counter()
    async with engine.begin() as connection:
        await connection.execute(text(SEED), {"tenant": tenant, "runs": runs})
        await connection.execute(text(SEED), {"tenant": noise, "runs": runs // 2})
    async with engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(text("VACUUM ANALYZE task_runs"))
    return time.perf_counter() - started


async def set_indexes(engine: AsyncEngine, present: bool) -> None:
    async with engine.begin() as connection:
        for name, columns in INDEXES.items():
            if present:
                await connection.execute(
                    text(f"CREATE INDEX IF NOT EXISTS {name} ON task_runs {columns}")
                )
            else:
                await connection.execute(text(f"DROP INDEX IF EXISTS {name}"))
    async with engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(text("ANALYZE task_runs"))


async def account(api: httpx.AsyncClient, name: str) -> tuple[uuid.UUID, dict[str, str]]:
    email = f"{name}-{uuid.uuid4().hex[:8]}@example.com"
    registered = await api.post(
        "/api/v1/auth/register",
        json={"email": email, "password": PASSWORD, "tenant_name": name},
    )
    if registered.status_code != 201:
        raise RuntimeError(f"sign-up: {registered.status_code} {registered.text}")
    tokens = await api.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    if tokens.status_code != 200:
        raise RuntimeError(f"sign-in: {tokens.status_code} {tokens.text}")
    return uuid.UUID(registered.json()["tenant"]["id"]), {
        "Authorization": f"Bearer {tokens.json()['access_token']}"
    }


async def deep_cursor(api: httpx.AsyncClient, headers: dict[str, str], pages: int) -> str:
    """The cursor of page `pages` + 1 (50 runs a page), followed from the newest."""
    cursor = ""
    for _ in range(pages):
        page = await api.get(
            "/api/v1/tasks/", params={"cursor": cursor} if cursor else {}, headers=headers
        )
        cursor = page.json()["next_cursor"]
    return cursor


async def timed(
    api: httpx.AsyncClient, headers: dict[str, str], params: dict[str, str], n: int
) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        answer = await api.get("/api/v1/tasks/", params=params, headers=headers)
        samples.append((time.perf_counter() - started) * 1000)
        if answer.status_code != 200:
            raise RuntimeError(answer.text)
    return samples


def main(runs: int, requests: int, rounds: int) -> None:
    with scratch_database() as database:
        asyncio.run(measure(database, runs, requests, rounds))


async def measure(database: str, runs: int, requests: int, rounds: int) -> None:
    settings = Settings(
        _env_file=None,
        environment="test",
        database_url=database,
        jwt_secret="bench-console-signing-secret-" + "x" * 40,
        rate_limits_enabled=False,
        chroma_host="127.0.0.1",
        chroma_port=9,
    )
    engine = create_async_engine(database)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as api:
            tenant, headers = await account(api, "Busy")
            noise, _ = await account(api, "Noise")
            seeded = await seed(engine, tenant, noise, runs)
            print(f"seeded {runs:,} runs (+{runs // 2:,} of another tenant) in {seeded:.1f} s")
            now = time.time()
            window = {
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 15 * 86400)),
                "until": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 14 * 86400)),
            }
            pages: dict[str, Callable[[], dict[str, str]]] = {
                "newest 50": dict,
                "state=failed": lambda: {"state": "failed"},
                "state=dead_lettered": lambda: {"state": "dead_lettered"},
                "task=reports.rare": lambda: {"task": "reports.rare"},
                "state=failed & task=reports.rare": lambda: {
                    "state": "failed",
                    "task": "reports.rare",
                },
                "one day, 2 weeks ago": lambda: dict(window),
                "page 40 (cursor)": dict,
            }
            cursor = await deep_cursor(api, headers, 39)
            results: dict[tuple[str, bool], list[float]] = {}
            for _ in range(rounds):
                for indexed in (True, False):
                    await set_indexes(engine, indexed)
                    for name, params in pages.items():
                        query = params()
                        if name.startswith("page 40"):
                            query = {"cursor": cursor}
                        samples = await timed(api, headers, query, requests)
                        results.setdefault((name, indexed), []).extend(samples)
            await set_indexes(engine, True)
    await engine.dispose()

    rows = []
    worst = 0.0
    for name in pages:
        after, before = results[(name, True)], results[(name, False)]
        p95_after = percentile(after, 0.95)
        worst = max(worst, p95_after)
        rows.append(
            [
                name,
                f"{Figures(tuple(after)).median:.1f}",
                f"{p95_after:.1f}",
                f"{Figures(tuple(before)).median:.1f}",
                f"{percentile(before, 0.95):.1f}",
                ratio(Figures(tuple(before)).median, Figures(tuple(after)).median),
            ]
        )
    print_table(
        f"GET /api/v1/tasks/ on a tenant with {runs:,} runs, ms server time "
        f"({requests * rounds} requests each)",
        ["page", "p50", "p95", "p50 without (baseline)", "p95 without", "baseline / product"],
        rows,
    )
    print_targets(
        [
            (
                f"every page p95 <= {TARGET_MS:.0f} ms at {runs:,} runs",
                f"{worst:.1f} ms",
                worst <= TARGET_MS,
            )
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    arguments = parser.parse_args()
    main(arguments.runs, arguments.requests, arguments.rounds)

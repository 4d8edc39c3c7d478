"""Every hot path of the ledger is served by its index on a seeded ledger: the plan PostgreSQL
makes for the very statements the product sends (captured as the product's own functions run,
then EXPLAINed with their parameters). Plan shape, not timings — bench/ledger_scale.py
measures the time at 10 million runs and prints the same plans there.

The ledger: 200,000 runs of 1,000 tenants, their dead letters and definitions (bench.ledger_queries
seeds it as the benchmark does), vacuumed and analysed as autovacuum would leave it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime

import asyncpg
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench import ledger_queries as hot
from switchyard.db.migrate import migrate
from switchyard.embedded.postgres import EmbeddedPostgres
from tests.fixtures.postgres import DatabaseFactory
from tests.fixtures.processes import outside_pytest_temp

RUNS = 200_000
TENANTS = 1000
# The tables that grow with the product's work: never read whole on a hot path.
LARGE = {"task_runs", "dead_letters", "task_definitions"}
HOT = {query.name: query for query in hot.HOT_QUERIES}


@pytest.fixture(scope="module", params=["server", "embedded"])
async def ledger(
    request: pytest.FixtureRequest, create_database: DatabaseFactory
) -> AsyncIterator[tuple[AsyncEngine, list[hot.Sample]]]:
    """On the test server (PostgreSQL 15 here) and on the embedded one standalone falls back
    to (18): a plan must not depend on the version's planner."""
    async with AsyncExitStack() as stack:
        if request.param == "server":
            url = await create_database()
        else:
            url = await stack.enter_async_context(embedded_database())
        async for prepared in _seeded(url):
            yield prepared


@asynccontextmanager
async def embedded_database() -> AsyncIterator[URL]:
    with outside_pytest_temp("plans") as root:
        async with _running(EmbeddedPostgres(root)) as server:
            yield server.url("plans")


@asynccontextmanager
async def _running(server: EmbeddedPostgres) -> AsyncIterator[EmbeddedPostgres]:
    """The server started, with an empty database `plans`; stopped after."""
    await asyncio.to_thread(server.start)
    try:
        connection = await asyncpg.connect(
            host="127.0.0.1", port=server.port, user="postgres", database="postgres"
        )
        try:
            await connection.execute('CREATE DATABASE "plans"')
        finally:
            await connection.close()
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def _seeded(url: URL) -> AsyncIterator[tuple[AsyncEngine, list[hot.Sample]]]:
    await migrate(url)
    engine = create_async_engine(url)
    hot.install_capture(engine)
    tenants = await hot.seed_tenants(engine, TENANTS)
    await hot.seed_runs(engine, RUNS, tenants=TENANTS, now=datetime.now(UTC), rebuild_indexes=True)
    await hot.seed_live(engine, 0, TENANTS)
    await hot.seed_extras(engine, letters_in_ten=10)
    samples = await hot.samples(engine, 3, tenants)
    yield engine, samples
    await engine.dispose()


@pytest.mark.parametrize("name", sorted(HOT))
async def test_the_hot_path_uses_its_index(
    name: str, ledger: tuple[AsyncEngine, list[hot.Sample]]
) -> None:
    engine, samples = ledger
    query = HOT[name]
    for sample in samples:
        plans = await hot.plan(engine, query, sample)
        assert plans, f"{name} sent no statement"
        used = hot.indexes_used(plans)
        assert set(query.indexes) <= used, f"{name}: {sorted(used)}"
        scanned = hot.sequential_scans(plans) & LARGE
        # A retention batch may read the dead letters whole to join its batch with them: on
        # this seeded ledger they are a couple of thousand rows, cheaper read than probed.
        allowed = {"dead_letters"} if name.startswith("retention:") else set()
        assert scanned <= allowed, f"{name} reads {sorted(scanned)} whole"


async def test_the_catalogue_covers_every_hot_path_the_issue_names() -> None:
    """Submit (the key lookup too), claim, outcome, get run, every list filter and the cursor,
    beat's due definitions and outbox, the dead-letter list, and the retention batches."""
    names = set(HOT)
    for expected in (
        "submit: idempotency key",
        "submit: store and admit",
        "claim",
        "claim a group",
        "outcome",
        "outcomes of a group",
        "get run",
        "list runs: newest",
        "list runs: state=failed",
        "list runs: task=reports.rare",
        "list runs: since/until (a week)",
        "list runs: next page (cursor)",
        "beat: due definitions",
        "beat: outbox scan",
        "dead letters: list",
        "retention: runs batch",
        "retention: dead letters batch",
        "retention: keys batch",
    ):
        assert expected in names

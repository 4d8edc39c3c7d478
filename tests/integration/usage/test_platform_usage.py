"""The platform's view of spend, on a database of the test's own: this month's top spenders
and every other tenant together, the same figures beat sets as `switchyard_tenant_spend` (a
bounded set of labels: the top tenants by slug, then "other")."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from switchyard.db.models import Tenant
from switchyard.platform.beat import spend_metric
from switchyard.services import usage
from switchyard.services.usage import Meter, Use


def spend_samples() -> dict[tuple[str, str], float]:
    return {
        (sample.labels["tenant"], sample.labels["what"]): sample.value
        for family in REGISTRY.collect()
        if family.name == "switchyard_tenant_spend"
        for sample in family.samples
    }


async def test_the_top_spenders_are_named_and_the_rest_summed(own_engine: AsyncEngine) -> None:
    engine = own_engine
    tenants = [Tenant(name=f"T{n}", slug=f"t{n}-{uuid.uuid4().hex[:6]}") for n in range(4)]
    async with async_sessionmaker(engine, expire_on_commit=False).begin() as session:
        session.add_all(tenants)
    big, small, runner, searcher = (tenant.id for tenant in tenants)
    async with engine.begin() as connection:
        await usage.add_in(
            connection,
            Use(big, Meter.LLM_PROMPT_TOKENS, "chat/glm", 4000),
            Use(big, Meter.LLM_COMPLETION_TOKENS, "chat/glm", 1000),
            Use(big, Meter.RUNS_ACCEPTED, "system.echo", 3),
            Use(small, Meter.EMBEDDING_TOKENS, "embedding-3", 300),
            Use(runner, Meter.RUNS_ACCEPTED, "system.echo", 7),
            Use(runner, Meter.RUN_MILLISECONDS, "system.echo", 4500),
            Use(searcher, Meter.SEARCH_QUERIES, "search", 2),
        )
    now = datetime.now(UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    async with engine.connect() as connection:
        top, rest = await usage.top_spenders(connection, start, now + timedelta(hours=1), 2)
    assert top == [
        usage.Spender(big, 5000, 3, 0, 0),
        usage.Spender(small, 300, 0, 0, 0),
    ]
    assert rest == usage.Spender(None, 0, 7, 4, 2)
    async with engine.connect() as connection:  # a month before: nothing
        before, nothing = await usage.top_spenders(connection, start - timedelta(days=40), start, 2)
    assert (before, nothing) == ([], usage.Spender(None, 0, 0, 0, 0))

    await spend_metric(engine, now, 2)
    samples = spend_samples()
    assert samples[(tenants[0].slug, "llm_tokens")] == 5000
    assert samples[(tenants[1].slug, "llm_tokens")] == 300
    assert samples[("other", "runs")] == 7
    assert samples[("other", "searches")] == 2
    assert {tenant for tenant, _ in samples} == {tenants[0].slug, tenants[1].slug, "other"}

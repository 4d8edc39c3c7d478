"""LLM budgets at the edge: twenty concurrent chats of one tenant against a monthly token
budget a call and a half past what its tokens allow, many times over, with the production
client (`services.llm.ZhipuClient` with its `LlmBudget`) on the real PostgreSQL and a local
stand-in of the Zhipu API that reports token counts (`tests.fakes.zhipu`, as the tests use).
Prints the overshoot of each trial against one call's tokens, and what a reservation costs a
call (sequential calls with a budget against the same calls without one).

Usage: uv run python -m bench.llm_budget [--trials 10] [--spenders 20] [--calls 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from tests.fakes.zhipu import API_KEY, FakeZhipu

from bench.harness import print_table, print_targets, ratio, scratch_database
from switchyard.db.models import Plan, Tenant, UsageCounter
from switchyard.services.llm import ChatMessage, ZhipuClient
from switchyard.services.quotas import LlmBudget, QuotaExceededError
from switchyard.settings import Settings

USER = [ChatMessage(role="user", content="how many tokens does this question take")]


async def tenant_with_budget(engine: AsyncEngine, tokens: int | None) -> uuid.UUID:
    async with async_sessionmaker(engine, expire_on_commit=False).begin() as session:
        tenant = Tenant(name="Bench", slug=f"bench-{uuid.uuid4().hex[:10]}")
        session.add(tenant)
        await session.flush()
        if tokens is not None:
            plan = Plan(name=f"bench-{uuid.uuid4().hex[:10]}", llm_tokens_per_month=tokens)
            session.add(plan)
            await session.flush()
            await session.execute(
                update(Tenant).where(Tenant.id == tenant.id).values(plan_id=plan.id)
            )
    return tenant.id


async def spent(engine: AsyncEngine, tenant_id: uuid.UUID) -> int:
    async with engine.connect() as connection:
        rows = await connection.execute(
            UsageCounter.__table__.select().where(UsageCounter.tenant_id == tenant_id)
        )
        return sum(row.quantity for row in rows if row.meter.startswith("llm."))


async def measure(database: str, fake: FakeZhipu, args: argparse.Namespace) -> int:
    engine = create_async_engine(database.replace("postgresql://", "postgresql+asyncpg://", 1))
    settings = Settings(
        _env_file=None,
        zhipuai_api_key=API_KEY,
        zhipuai_base_url=fake.base_url,
        zhipuai_tenant_concurrency=args.spenders,
    )
    llm = ZhipuClient(settings, budget=LlmBudget(engine))
    try:
        probe = await tenant_with_budget(engine, None)  # one call's tokens, with no budget
        call = (await llm.chat(probe, USER, max_tokens=32)).usage.total_tokens
        fake.delay = 0.02  # the calls overlap
        rows, overshoots = [], []
        for trial in range(args.trials):
            budget = (3 + trial % 5) * call + call // 2
            tenant = await tenant_with_budget(engine, budget)
            results = await asyncio.gather(
                *(llm.chat(tenant, USER, max_tokens=32) for _ in range(args.spenders)),
                return_exceptions=True,
            )
            answered = sum(not isinstance(result, BaseException) for result in results)
            refused = sum(isinstance(result, QuotaExceededError) for result in results)
            total = await spent(engine, tenant)
            overshoots.append(total - budget)
            rows.append([trial + 1, budget, answered, refused, total, total - budget, call])
        print_table(
            f"{args.spenders} concurrent chats at the edge of a monthly budget (tokens)",
            ["trial", "budget", "answered", "refused", "spent", "overshoot", "one call"],
            rows,
        )

        fake.delay = 0.0
        timings: dict[str, float] = {}
        cases: tuple[tuple[str, int | None], ...] = (
            ("no budget (no plan)", None),
            ("with a budget", 10**12),
        )
        for label, limit in cases:
            tenant = await tenant_with_budget(engine, limit)
            started = time.perf_counter()
            for _ in range(args.calls):
                await llm.chat(tenant, USER, max_tokens=32)
            timings[label] = (time.perf_counter() - started) * 1000 / args.calls
        base = timings["no budget (no plan)"]
        print_table(
            f"{args.calls} sequential chats against the local stand-in (no delay)",
            ["what", "ms per call", "vs no budget"],
            [[label, f"{ms:.2f}", ratio(ms, base)] for label, ms in timings.items()],
        )
        worst = max(overshoots)
        print_targets(
            [
                (
                    "overshoot < one call's tokens, every trial",
                    f"worst {worst} < {call}",
                    worst < call,
                ),
                (
                    "no trial under its budget",
                    f"least {min(overshoots)} >= 0",
                    min(overshoots) >= 0,
                ),
            ]
        )
        print(f"\nreservation and settlement: +{timings['with a budget'] - base:.2f} ms a call")
        print(f"median overshoot: {statistics.median(overshoots)} tokens")
        return 0
    finally:
        await llm.close()
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--spenders", type=int, default=20)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args(argv)
    fake = FakeZhipu()
    fake.start()
    try:
        with scratch_database() as database:
            return asyncio.run(measure(database, fake, args))
    finally:
        fake.stop()


if __name__ == "__main__":
    raise SystemExit(main())

"""A tenant's LLM token budget at each provider call, on the real PostgreSQL and the fake
Zhipu API (which reports token counts): twenty concurrent calls at the edge of a budget pass
it by less than one call's tokens, and what they spent is recorded exactly; a run whose next
call would pass it fails at once, without its retries, and is dead-lettered for a replay
after the reset; a call that fails gives its reservation back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import func, select, update
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from switchyard.db.models import LlmReservation, Plan, RunState, Tenant
from switchyard.platform import runtime
from switchyard.platform.celery_app import AMQP_TRANSPORT
from switchyard.platform.delivery import deliver
from switchyard.platform.registry import RetryPolicy, TaskContext, TaskSpec
from switchyard.platform.runs import admission
from switchyard.services.llm import ChatMessage, LLMError, ZhipuClient
from switchyard.services.quotas import LlmBudget, QuotaExceededError
from switchyard.settings import Settings
from tests.fakes.broker import InMemoryBroker
from tests.fakes.zhipu import API_KEY, FakeZhipu
from tests.fixtures.gateway import SettingsFactory
from tests.fixtures.tasks import insert_run
from tests.integration.services.test_llm import llm_settings
from tests.integration.tasks.test_worker_core import delivery, stored
from tests.integration.usage.test_recorded_usage import used

USER = [ChatMessage(role="user", content="how many tokens is this")]
SPENDERS = 20


async def with_budget(engine: AsyncEngine, tenant_id: uuid.UUID, tokens: int) -> None:
    """Put the tenant on a plan of its own with a monthly budget of `tokens`."""
    async with async_sessionmaker(engine, expire_on_commit=False).begin() as session:
        plan = Plan(name=f"budget-{uuid.uuid4().hex[:8]}", llm_tokens_per_month=tokens)
        session.add(plan)
        await session.flush()
        await session.execute(update(Tenant).where(Tenant.id == tenant_id).values(plan_id=plan.id))


async def spent(engine: AsyncEngine, tenant_id: uuid.UUID) -> int:
    figures = await used(engine, tenant_id)
    return sum(n for (meter, _), n in figures.items() if meter.startswith("llm."))


async def reservations(engine: AsyncEngine, tenant_id: uuid.UUID) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(
            select(func.count())
            .select_from(LlmReservation)
            .where(LlmReservation.tenant_id == tenant_id)
        )
    return int(count or 0)


async def one_call(zhipu: FakeZhipu, engine: AsyncEngine) -> int:
    """The tokens the fake reports for one call of USER (a tenant without a budget)."""
    llm = ZhipuClient(llm_settings(zhipu))
    try:
        return (await llm.chat(uuid.uuid4(), USER, max_tokens=32)).usage.total_tokens
    finally:
        await llm.close()


async def test_twenty_concurrent_calls_at_a_budgets_edge_pass_it_by_less_than_one_call(
    engine: AsyncEngine, tenant_id: uuid.UUID, zhipu: FakeZhipu
) -> None:
    call = await one_call(zhipu, engine)
    budget = 5 * call + call // 2
    await with_budget(engine, tenant_id, budget)
    zhipu.reset()
    zhipu.delay = 0.05  # the calls overlap
    llm = ZhipuClient(llm_settings(zhipu), budget=LlmBudget(engine))
    try:
        results = await asyncio.gather(
            *(llm.chat(tenant_id, USER, max_tokens=32) for _ in range(SPENDERS)),
            return_exceptions=True,
        )
    finally:
        await llm.close()
    answered = [result for result in results if not isinstance(result, BaseException)]
    refusals = [result for result in results if isinstance(result, QuotaExceededError)]
    assert len(answered) + len(refusals) == SPENDERS, results
    total = await spent(engine, tenant_id)
    # Exactly what the provider reported for the calls it answered ...
    assert total == sum(result.usage.total_tokens for result in answered)
    # ... which reached the budget and passed it by less than one call's tokens.
    assert budget <= total < budget + call, (budget, total, call)
    assert len(zhipu.requests) == len(answered)  # a refused call never reached the provider
    assert {error.extensions["quota"] for error in refusals} == {"llm_tokens_per_month"}
    assert await reservations(engine, tenant_id) == 0


async def test_a_failed_call_gives_its_reservation_back(
    engine: AsyncEngine, tenant_id: uuid.UUID, zhipu: FakeZhipu
) -> None:
    await with_budget(engine, tenant_id, 10_000)
    zhipu.fail_next(500, times=10)
    llm = ZhipuClient(llm_settings(zhipu, zhipuai_max_retries=1), budget=LlmBudget(engine))
    try:
        with pytest.raises(LLMError):
            await llm.chat(tenant_id, USER, max_tokens=32)
        assert await reservations(engine, tenant_id) == 0
        assert await spent(engine, tenant_id) == 0
    finally:
        await llm.close()


class AskInput(BaseModel):
    calls: int


@pytest.fixture
def worker_settings(
    make_settings: SettingsFactory, own_database: URL, zhipu: FakeZhipu
) -> Settings:
    return make_settings(
        database_url=own_database.render_as_string(hide_password=False),
        fair_share=True,
        fair_share_slots=1,
        zhipuai_api_key=API_KEY,
        zhipuai_base_url=zhipu.base_url,
        zhipuai_retry_backoff_seconds=0.01,
    )


@pytest.fixture
def loop(worker_settings: Settings) -> Iterator[runtime.WorkerLoop]:
    broker = InMemoryBroker(delivery_limit=2)
    current = runtime.WorkerLoop(
        worker_settings, "worker", admission.dispatcher_for(broker, worker_settings)
    ).start()
    yield current
    current.close()


async def ask(payload: AskInput, ctx: TaskContext) -> dict[str, Any]:
    assert ctx.services.llm is not None
    for _ in range(payload.calls):
        await ctx.services.llm.chat(ctx.tenant_id, USER, max_tokens=32)
    return {"calls": payload.calls}


ASK = TaskSpec(
    name="testing.ask",
    description="Ask the LLM `calls` times",
    input_model=AskInput,
    handler=ask,
    retry=RetryPolicy(max_retries=3, backoff_seconds=1),
    spends_llm_tokens=True,
)


async def test_a_run_whose_next_call_would_pass_the_budget_fails_at_once(
    loop: runtime.WorkerLoop, own_engine: AsyncEngine, zhipu: FakeZhipu
) -> None:
    engine = own_engine
    async with async_sessionmaker(engine, expire_on_commit=False).begin() as session:
        tenant = Tenant(name="Spender", slug=f"spender-{uuid.uuid4().hex[:8]}")
        session.add(tenant)
    call = await one_call(zhipu, engine)
    zhipu.reset()
    await with_budget(engine, tenant.id, call + call // 2)  # one call and a half
    run = await insert_run(engine, tenant.id, task=ASK.name, payload={"calls": 3})

    settled = loop.call(deliver(loop, ASK, delivery(run), AMQP_TRANSPORT), 30)

    assert settled.kind == "reject"  # to the dead letters, not retried: replay it after the reset
    failed = await stored(engine, run.id)
    assert (failed.state, failed.attempts) == (RunState.FAILED, 1)
    assert failed.error_message is not None
    assert "llm_tokens_per_month" in failed.error_message
    # The second call began under the budget and was let through; the third was not.
    assert len(zhipu.requests) == 2
    assert await spent(engine, tenant.id) == 2 * call
    assert await reservations(engine, tenant.id) == 0

"""Usage is recorded where it happens, exactly once, on the real PostgreSQL: a run's attempts
and their milliseconds with the attempt's outcome (in the same statement), LLM tokens as the
provider reported them (a call the client retried counts once), embedded texts, documents and
stored bytes with their rows, searches soon after. Concurrent writers of one counter add up."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.api.app import create_app
from switchyard.db.models import RunState, UsageCounter
from switchyard.platform.runs import ledger
from switchyard.services.llm import ChatMessage, ZhipuClient
from switchyard.services.quotas import LlmBudget
from switchyard.services.usage import WRITES_FAILED, Meter, UsageRecorder, Use
from tests.fakes.zhipu import API_KEY, FakeZhipu
from tests.fixtures.accounts import sign_up
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.tasks import DELIVERY_LIMIT, insert_run
from tests.integration.services.test_llm import llm_settings

USER = [ChatMessage(role="user", content="how many tokens is this")]


async def used(engine: AsyncEngine, tenant_id: uuid.UUID) -> dict[tuple[str, str], int]:
    """The tenant's counters summed over the hours, by (meter, subject)."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(UsageCounter.meter, UsageCounter.subject, UsageCounter.quantity).where(
                UsageCounter.tenant_id == tenant_id
            )
        )
        totals: dict[tuple[str, str], int] = {}
        for meter, subject, quantity in rows:
            totals[(meter, subject)] = totals.get((meter, subject), 0) + quantity
        return totals


@pytest.fixture
async def recorder(engine: AsyncEngine) -> AsyncIterator[UsageRecorder]:
    recording = UsageRecorder(engine, flush_seconds=0.05)
    yield recording
    await recording.close()


async def test_an_attempt_is_counted_with_its_outcome_once(
    engine: AsyncEngine, tenant_id: uuid.UUID
) -> None:
    runs = [await insert_run(engine, tenant_id, task="reports.build") for _ in range(3)]
    async with engine.begin() as connection:
        claimed = await ledger.claim_group(
            connection, [(run.id, tenant_id) for run in runs], redelivered=False
        )
    assert len(claimed) == 3
    outcomes = [
        ledger.Finish(runs[0].id, RunState.SUCCEEDED, result={}, elapsed_ms=120),
        ledger.Finish(runs[1].id, RunState.RETRYING, error=OSError("flaky"), elapsed_ms=30),
        ledger.Finish(runs[2].id, RunState.FAILED, error=ValueError("no"), elapsed_ms=7),
    ]
    async with engine.begin() as connection:
        assert len(await ledger.finish_group(connection, outcomes)) == 3
    assert await used(engine, tenant_id) == {
        ("run.attempts", "reports.build"): 3,
        ("run.milliseconds", "reports.build"): 157,
    }
    # The same outcomes again (a redelivered group): no run is `started`, nothing is counted.
    async with engine.begin() as connection:
        assert await ledger.finish_group(connection, outcomes) == {}
    assert (await used(engine, tenant_id))[("run.attempts", "reports.build")] == 3


async def test_an_outcome_not_metered_records_the_run_and_counts_nothing(
    engine: AsyncEngine, tenant_id: uuid.UUID
) -> None:
    run = await insert_run(engine, tenant_id, task="reports.build")
    async with engine.begin() as connection:
        await ledger.claim_group(connection, [(run.id, tenant_id)], redelivered=False)
        outcome = ledger.Finish(run.id, RunState.SUCCEEDED, result={}, elapsed_ms=120)
        finished = await ledger.finish_group(connection, [outcome], metered=False)
    assert finished[run.id].state is RunState.SUCCEEDED
    assert await used(engine, tenant_id) == {}


async def test_tokens_are_the_providers_once_whatever_the_client_retried(
    engine: AsyncEngine, tenant_id: uuid.UUID, zhipu: FakeZhipu, recorder: UsageRecorder
) -> None:
    llm = ZhipuClient(llm_settings(zhipu), budget=LlmBudget(engine))
    try:
        zhipu.fail_next(429, times=2)  # two refusals the client retries: no tokens spent
        chatted = await llm.chat(tenant_id, USER, purpose="answer")
        chunks = [chunk async for chunk in llm.chat_stream(tenant_id, USER)]
        embedded = await llm.embed(tenant_id, ["one text", "and another one"])
    finally:
        await llm.close()
    streamed = next(chunk.usage for chunk in chunks if chunk.usage is not None)
    model = chatted.model
    assert await used(engine, tenant_id) == {
        ("llm.prompt_tokens", f"answer/{model}"): chatted.usage.prompt_tokens,
        ("llm.completion_tokens", f"answer/{model}"): chatted.usage.completion_tokens,
        ("llm.prompt_tokens", f"chat/{model}"): streamed.prompt_tokens,
        ("llm.completion_tokens", f"chat/{model}"): streamed.completion_tokens,
        ("embedding.tokens", "embedding-3"): embedded.usage.total_tokens,
        ("embedding.texts", "zhipu-embedding-3"): 2,
    }
    assert chatted.usage.prompt_tokens > 0


async def test_counted_uses_are_written_together_soon_and_at_close(
    engine: AsyncEngine, tenant_id: uuid.UUID
) -> None:
    recorder = UsageRecorder(engine, flush_seconds=3600)
    for _ in range(5):
        recorder.count(Use(tenant_id, Meter.SEARCH_QUERIES, "search", 1))
    assert await used(engine, tenant_id) == {}  # not before the hour is up…
    await recorder.close()  # …or the process stops
    assert await used(engine, tenant_id) == {("search.queries", "search"): 5}


async def test_concurrent_writers_of_one_counter_add_up(
    engine: AsyncEngine, tenant_id: uuid.UUID
) -> None:
    recorders = [UsageRecorder(engine) for _ in range(4)]
    uses = [
        Use(tenant_id, Meter.LLM_PROMPT_TOKENS, "chat/glm", 10),
        Use(tenant_id, Meter.LLM_COMPLETION_TOKENS, "chat/glm", 1),
    ]
    # Each writer adds both counters; half of them in the other order (locks in one order).
    await asyncio.gather(
        *(
            recorder.add(*(uses if n % 2 else uses[::-1]))
            for n in range(40)
            for recorder in recorders[n % 4 : n % 4 + 1]
        )
    )
    assert await used(engine, tenant_id) == {
        ("llm.prompt_tokens", "chat/glm"): 400,
        ("llm.completion_tokens", "chat/glm"): 40,
    }


async def test_a_write_that_fails_never_fails_the_use(tenant_id: uuid.UUID) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    failed = WRITES_FAILED._value.get()
    nowhere = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:9/none")
    try:
        await UsageRecorder(nowhere).add(Use(tenant_id, Meter.SEARCH_QUERIES, "search", 1))
    finally:
        await nowhere.dispose()
    assert WRITES_FAILED._value.get() == failed + 1  # counted (and logged), not raised


async def test_a_use_of_a_deleted_tenant_is_dropped_and_the_others_of_the_write_kept(
    engine: AsyncEngine, tenant_id: uuid.UUID
) -> None:
    recorder = UsageRecorder(engine, flush_seconds=3600)
    gone = uuid.uuid4()  # a tenant deleted as its last run's use was counted
    recorder.count(Use(gone, Meter.RUN_ATTEMPTS, "system.echo", 1))
    recorder.count(Use(tenant_id, Meter.RUN_ATTEMPTS, "system.echo", 1))
    await recorder.close()
    assert await used(engine, tenant_id) == {("run.attempts", "system.echo"): 1}
    assert await used(engine, gone) == {}


async def test_with_metering_off_a_submission_and_an_llm_call_count_nothing(
    make_settings: SettingsFactory, own_broker: str, zhipu: FakeZhipu, engine: AsyncEngine
) -> None:
    # On a broker of its own: the session's worker (metering on, a process of its own) must
    # not run the submission and count its attempt while this looks.
    settings = make_settings(
        celery_broker_url=own_broker,
        task_delivery_limit=DELIVERY_LIMIT,
        usage_metering=False,
        zhipuai_api_key=API_KEY,
        zhipuai_base_url=zhipu.base_url,
    )
    app = create_app(settings)
    async with running(app) as client:
        owner = await sign_up(client)
        accepted = await client.post(
            "/api/v1/tasks/run",
            json={"task": "system.echo", "payload": {"message": "uncounted"}},
            headers=owner.headers,
        )
        assert accepted.status_code == 202, accepted.text
        services = app.state.gateway.services
        assert services.llm is not None
        assert services.llm.budget is None
        await services.llm.chat(owner.tenant_id, USER)
        assert len(zhipu.requests) == 1
        await services.usage.flush()
    assert await used(engine, owner.tenant_id) == {}

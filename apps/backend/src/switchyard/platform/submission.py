"""The one way a run enters the platform: `Submissions.submit`. Every caller goes through it
— single and bulk REST, definitions run now, replays, uploads' ingestion, data-source tests,
beat's scheduled ticks, account emails — with a run order that knows nothing of HTTP (a
transient `TaskRun`, or a `ledger.NewRun` by the thousand) and an explicit policy for a
broker that says no (`OnRefusal`).

What every submission does, in order:

1. store the runs in one multi-row INSERT and, with fair share on, admit what each tenant's
   share has room for, under the tenants' advisory locks taken in id order
   (platform.runs.admission); a run whose idempotency key its tenant used already is not
   stored (the caller answers with that run);
2. commit — in a transaction of its own, or with the caller's unit of work (`within`, when
   the run must appear together with the caller's other changes: a document and its
   ingestion run, a tick of a schedule and its run, an account and its email);
3. publish what was admitted (and the older runs of the tenants admitted along the way) in
   one burst of confirmed publishes, and mark what the broker confirmed;
4. for what the broker did not confirm: `REFUSE` removes the runs again and the caller
   answers 503 (or `accepted: false` in a bulk's answer); `KEEP` leaves them admitted in the
   ledger, and beat's outbox publishes them after TASK_REPUBLISH_AFTER_SECONDS.

Fair share treats every caller alike. The one exception, a documented policy
(`outside_share`), is the account emails the platform sends on its own behalf: a sign-up's
confirmation does not wait behind the tenant's backlog (docs/operations.md, "Fair share").

Single runs that concurrent requests submit within a few milliseconds (`TASK_GROUP_COMMIT_MS`,
or `TASK_GROUP_COMMIT_RUNS` of them) share one transaction and one burst (group commit, as
databases and Kafka producers do); each request still waits for its own run's outcome."""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from switchyard import tracing
from switchyard.db.session import after_commit
from switchyard.errors import ServiceUnavailableError
from switchyard.platform.coalesce import Coalescer
from switchyard.platform.metrics import RUN_GROUPS, RUNS_ADMITTED, RUNS_SUBMITTED
from switchyard.platform.publisher import RunBroker, RunMessage
from switchyard.platform.runs import admission, ledger
from switchyard.services import usage
from switchyard.services.outages import RETRY_AFTER_SECONDS
from switchyard.services.usage import UsageRecorder
from switchyard.settings import Settings

logger = logging.getLogger(__name__)

NO_BROKER = "No task broker is configured (CELERY_BROKER_URL)."


class OnRefusal(enum.StrEnum):
    """What becomes of a run whose message the broker did not confirm."""

    REFUSE = "refuse"  # removed again; the caller answers 503 (the client may try again)
    KEEP = "keep"  # kept, admitted; beat's outbox publishes it later (the caller is not refused)


class RunsRefusedError(ServiceUnavailableError):
    """The broker did not confirm the runs' messages: they are not in the ledger."""

    def __init__(self, run_ids: Sequence[uuid.UUID]) -> None:
        super().__init__(
            "The task broker is unreachable; nothing was queued. Try again shortly.",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
        self.run_ids = tuple(run_ids)


# stored: committed and published (or waiting for its tenant's share, or kept for the
# outbox); taken: its idempotency key names a run stored before; refused: the broker did not
# confirm it, and it is not in the ledger.
Outcome = Literal["stored", "taken", "refused"]


@dataclass(frozen=True, slots=True)
class Accepted:
    stored: frozenset[uuid.UUID]
    refused: frozenset[uuid.UUID]

    def outcome(self, run_id: uuid.UUID) -> Outcome:
        if run_id in self.refused:
            return "refused"
        return "stored" if run_id in self.stored else "taken"


_OUTSIDE_SHARE = admission.Policy(enabled=False)


class Submissions:
    """One per process and event loop (the gateway's, beat's)."""

    def __init__(
        self,
        engine: AsyncEngine,
        broker: RunBroker | None,
        marks: ledger.PublishedMarks,
        policy: admission.Policy,
        *,
        window_seconds: float = 0.002,
        most: int = 200,
        usage: UsageRecorder | None = None,
    ) -> None:
        self.engine = engine
        self.broker = broker  # None: a role without one (its platform runs wait for the outbox)
        self.marks = marks
        self.policy = policy
        # Counts the runs accepted (`run.accepted`, the runs quotas' figure) once they are:
        # written within a second, several at once, never in the submission's transaction,
        # where every submission of a tenant would queue for its counter's row lock.
        self.usage = usage
        self._group: Coalescer[ledger.Stored, Outcome] = Coalescer(
            self._group_of, window_seconds=window_seconds, most=most, observe=RUN_GROUPS.observe
        )

    @classmethod
    def create(
        cls,
        settings: Settings,
        engine: AsyncEngine,
        broker: RunBroker | None,
        marks: ledger.PublishedMarks,
        usage: UsageRecorder | None = None,
    ) -> Submissions:
        return cls(
            engine,
            broker,
            marks,
            admission.Policy.of(settings),
            window_seconds=settings.task_group_commit_ms / 1000,
            most=settings.task_group_commit_runs,
            usage=usage,
        )

    async def submit(
        self,
        runs: Sequence[ledger.Stored],
        *,
        on_refusal: OnRefusal,
        within: AsyncSession | None = None,
        outside_share: bool = False,
    ) -> Accepted:
        """Store, admit, commit and publish `runs` (new, transient, of any tenants; ids set).
        Each run's `admitted_at` says afterwards whether it took a slot of its tenant's share
        (a delayed run is admitted when it comes due; one waiting is admitted when a slot
        frees).

        Without `within`: in a transaction of its own; this returns once the broker has
        answered, with what was stored and what was refused (and removed). A single run
        joins the single runs of concurrent requests (group commit).

        With `within` (the caller's unit of work, `db.session.unit_of_work`): the runs are
        stored in it and published once it commits; a refusal under `REFUSE` then removes
        them and fails the request with `RunsRefusedError` (503). `refused` is empty here.

        Raises `ServiceUnavailableError` (503, nothing stored) when `REFUSE` is asked in a
        role without a broker; otherwise only when the transaction fails."""
        if on_refusal is OnRefusal.REFUSE and self.broker is None:
            raise ServiceUnavailableError(NO_BROKER)
        if tracing.enabled():  # the submitting request's trace, for the runs' attempts
            traceparent = tracing.current_traceparent()
            for run in runs:
                run.trace_parent = traceparent
        policy = _OUTSIDE_SHARE if outside_share else self.policy
        if within is not None:
            return await self._within(within, runs, on_refusal, policy)
        if len(runs) == 1 and on_refusal is OnRefusal.REFUSE and policy is self.policy:
            (run,) = runs
            outcome = await self._group(run)
            return Accepted(
                frozenset((run.id,)) if outcome == "stored" else frozenset(),
                frozenset((run.id,)) if outcome == "refused" else frozenset(),
            )
        return await self._accept(runs, on_refusal, policy)

    async def close(self) -> None:
        """Accept what is pending and wait for the groups under way (at shutdown)."""
        await self._group.close()

    async def _group_of(self, runs: list[ledger.Stored]) -> list[Outcome]:
        accepted = await self._accept(runs, OnRefusal.REFUSE, self.policy)
        return [accepted.outcome(run.id) for run in runs]

    async def _accept(
        self, runs: Sequence[ledger.Stored], on_refusal: OnRefusal, policy: admission.Policy
    ) -> Accepted:
        now = datetime.now(UTC)
        async with self.engine.begin() as connection:
            stored, admitted = await _store(connection, runs, policy, now)
        unconfirmed = await self._publish(runs, stored, admitted)
        refused = await self._refuse(unconfirmed, on_refusal)
        self._count(runs, stored - refused, policy)
        return Accepted(frozenset(stored), frozenset(refused))

    async def _within(
        self,
        session: AsyncSession,
        runs: Sequence[ledger.Stored],
        on_refusal: OnRefusal,
        policy: admission.Policy,
    ) -> Accepted:
        now = datetime.now(UTC)
        stored, admitted = await _store(await session.connection(), runs, policy, now)

        async def publish() -> None:
            unconfirmed = await self._publish(runs, stored, admitted)
            refused = await self._refuse(unconfirmed, on_refusal)
            self._count(runs, stored - refused, policy)
            if refused:
                for run in unconfirmed:
                    RUNS_SUBMITTED.labels(task=run.task, outcome="broker_unavailable").inc()
                raise RunsRefusedError(sorted(refused))

        after_commit(session, publish)
        return Accepted(frozenset(stored), frozenset())

    async def _publish(
        self,
        runs: Sequence[ledger.Stored],
        stored: set[uuid.UUID],
        admitted: list[admission.Admitted],
    ) -> list[ledger.Stored]:
        """One burst: the older runs admitted along the way, then the new runs that are
        admitted or delayed; marks what the broker confirmed. The new runs it did not
        confirm (all of them in a role without a broker)."""
        ours = [
            run
            for run in runs
            if run.id in stored and (run.eta is not None or run.admitted_at is not None)
        ]
        others = [entry for entry in admitted if entry.id not in stored]  # older, waited
        if self.broker is None:
            return ours
        messages = [RunMessage.of(entry) for entry in others]
        messages += [RunMessage.of(run, run.eta) for run in ours]
        confirmed = await self.broker.publish_many(messages)
        for message, ok in zip(messages, confirmed, strict=True):
            if ok:
                self.marks.add(uuid.UUID(message.run_id))
        if others:
            RUNS_ADMITTED.inc(sum(confirmed[: len(others)]))
        unconfirmed = [
            run for run, ok in zip(ours, confirmed[len(others) :], strict=True) if not ok
        ]
        return unconfirmed

    def _count(
        self, runs: Sequence[ledger.Stored], accepted: set[uuid.UUID], policy: admission.Policy
    ) -> None:
        """The tenants' accepted runs, by task; not the platform's own emails (outside the
        share: they are not the tenant's runs)."""
        if self.usage is None or policy is _OUTSIDE_SHARE:
            return
        for run in runs:
            if run.id in accepted:
                self.usage.count(usage.Use(run.tenant_id, usage.Meter.RUNS_ACCEPTED, run.task, 1))

    async def _refuse(
        self, unconfirmed: list[ledger.Stored], on_refusal: OnRefusal
    ) -> set[uuid.UUID]:
        """What becomes of the runs the broker did not confirm: the ids removed (`REFUSE`),
        none when they are kept for the outbox (`KEEP`)."""
        if on_refusal is OnRefusal.KEEP:
            _kept(unconfirmed)
            return set()
        return await self._drop(unconfirmed)

    async def _drop(self, runs: list[ledger.Stored]) -> set[uuid.UUID]:
        """Remove runs the broker did not confirm; if the database fails too, they stay and
        the outbox publishes them (accepted, then)."""
        if not runs:
            return set()
        run_ids = [run.id for run in runs]
        try:
            async with self.engine.begin() as connection:
                return await ledger.drop_unpublished(connection, run_ids)
        except Exception as exc:
            logger.warning(
                "unconfirmed runs not removed; the outbox publishes them",
                extra={"runs": len(run_ids), "error": repr(exc)},
            )
            return set()


async def _store(
    connection: AsyncConnection,
    runs: Sequence[ledger.Stored],
    policy: admission.Policy,
    now: datetime,
) -> tuple[set[uuid.UUID], list[admission.Admitted]]:
    """Store the runs and admit (platform.runs.admission.store); each stored run's
    `admitted_at` set as it was admitted."""
    for run in runs:  # every run sets the same columns: one multi-row INSERT
        run.admitted_at = None if policy.enabled else now
    stored, admitted = await admission.store(connection, runs, policy)
    admitted_now = {entry.id for entry in admitted}
    for run in runs:
        if run.id in admitted_now:
            run.admitted_at = now
    return stored, admitted


def _kept(runs: Sequence[ledger.Stored]) -> None:
    if runs:
        logger.warning(
            "broker unreachable; the outbox publishes the runs later",
            extra={"runs": len(runs), "tasks": sorted({run.task for run in runs})},
        )

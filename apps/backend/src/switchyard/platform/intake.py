"""Accepting runs in groups: the runs of a bulk request, or of many requests at once in one
gateway process, share one transaction and one burst of confirmed publishes (group commit,
as databases and Kafka producers do), and nothing of the promise is weakened: a run counts
as accepted only once its row is committed and the broker has confirmed its message.

`Intake.accept` stores runs in one statement (admitting what each tenant's share has room
for, under its lock: platform.runs.admission), commits, publishes in one burst, and deletes the
runs the broker did not confirm (a run a worker has started meanwhile stays: its message
arrived). The runs of older requests a slot admitted along the way are published in the
same burst; one the broker refuses stays admitted for beat's outbox.

`GroupCommit` gathers the single runs that concurrent requests submit within a few
milliseconds (`TASK_GROUP_COMMIT_MS`, or `TASK_GROUP_COMMIT_RUNS` of them) into one
`accept`; each request waits for its own run's outcome. A failure of that transaction
answers every run of the group as a single run's would be answered; nothing is stored."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.db.models import TaskRun
from switchyard.platform.coalesce import Coalescer
from switchyard.platform.metrics import RUN_GROUPS, RUNS_ADMITTED
from switchyard.platform.publisher import RunMessage, RunPublisher
from switchyard.platform.runs import admission, ledger

logger = logging.getLogger(__name__)

# stored: committed and published (or waiting for its tenant's share); taken: its
# idempotency key names a run stored before; refused: the broker did not confirm it, and it
# is not in the ledger.
Outcome = Literal["stored", "taken", "refused"]


@dataclass(frozen=True, slots=True)
class Accepted:
    stored: frozenset[uuid.UUID]
    refused: frozenset[uuid.UUID]

    def outcome(self, run_id: uuid.UUID) -> Outcome:
        if run_id in self.refused:
            return "refused"
        return "stored" if run_id in self.stored else "taken"


class Intake:
    """One per process and event loop (the gateway's)."""

    def __init__(
        self,
        engine: AsyncEngine,
        publisher: RunPublisher,
        marks: ledger.PublishedMarks,
        policy: admission.Policy,
    ) -> None:
        self.engine = engine
        self.publisher = publisher
        self.marks = marks
        self.policy = policy

    async def accept(self, runs: Sequence[ledger.Stored]) -> Accepted:
        """Store, commit, publish and keep what the broker confirmed. Each run's
        `admitted_at` says afterwards whether it took a slot of its tenant's share (a
        delayed run is admitted when it comes due). Raises only when the transaction
        fails, and then nothing is stored."""
        policy, now = self.policy, datetime.now(UTC)
        for run in runs:  # every run sets the same columns: one multi-row INSERT
            run.admitted_at = None if policy.enabled else now
        async with self.engine.begin() as connection:
            stored, admitted = await admission.store(connection, runs, policy)
        admitted_now = {entry.id for entry in admitted}
        ours: list[ledger.Stored] = []
        for run in runs:
            if run.id not in stored:
                continue
            if run.id in admitted_now:
                run.admitted_at = now
            if run.eta is not None or run.admitted_at is not None:
                ours.append(run)
        others = [entry for entry in admitted if entry.id not in stored]  # older, waited
        messages = [RunMessage.of(entry) for entry in others]
        messages += [RunMessage.of(run, run.eta) for run in ours]
        confirmed = await self.publisher.publish_many(messages)
        for message, ok in zip(messages, confirmed, strict=True):
            if ok:
                self.marks.add(uuid.UUID(message.run_id))
        if others:
            RUNS_ADMITTED.inc(sum(confirmed[: len(others)]))
        unconfirmed = [
            run.id for run, ok in zip(ours, confirmed[len(others) :], strict=True) if not ok
        ]
        refused = await self._drop(unconfirmed)
        return Accepted(frozenset(stored), frozenset(refused))

    async def _drop(self, run_ids: list[uuid.UUID]) -> set[uuid.UUID]:
        """Remove runs the broker did not confirm; if the database fails too, they stay and
        the outbox publishes them (accepted, then)."""
        if not run_ids:
            return set()
        try:
            async with self.engine.begin() as connection:
                return await ledger.drop_unpublished(connection, run_ids)
        except Exception as exc:
            logger.warning(
                "unconfirmed runs not removed; the outbox publishes them",
                extra={"runs": len(run_ids), "error": repr(exc)},
            )
            return set()


class GroupCommit:
    """Single runs of concurrent requests, accepted together: one per gateway process."""

    def __init__(self, intake: Intake, *, window_seconds: float, most: int) -> None:
        self.intake = intake
        self._group: Coalescer[TaskRun, Outcome] = Coalescer(
            self._accept, window_seconds=window_seconds, most=most, observe=RUN_GROUPS.observe
        )

    async def accept(self, run: TaskRun) -> Outcome:
        """Wait for the run's group to be stored and published: its outcome."""
        return await self._group(run)

    async def _accept(self, runs: list[TaskRun]) -> list[Outcome]:
        accepted = await self.intake.accept(runs)
        return [accepted.outcome(run.id) for run in runs]

    async def close(self) -> None:
        """Accept what is pending and wait for the groups under way (at shutdown)."""
        await self._group.close()

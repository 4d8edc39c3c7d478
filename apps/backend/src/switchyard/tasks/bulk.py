"""Bulk submission (POST /tasks/runs): many runs in one request, checked together, stored in
one statement and published in one burst of confirmed messages.

The promise is a single run's, per run: a run accepted is in the ledger and its message
confirmed by the broker (or it waits for its tenant's share, or the outbox publishes it);
a run refused is not in the ledger. Nothing is stored unless every run is valid. The
storing and publishing are platform.submission's, the one way every run enters."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from limits import parse
from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.db.models import RunState, TaskDefinition, TaskRun
from switchyard.db.session import end_reads
from switchyard.errors import (
    ConflictError,
    FieldError,
    InvalidInputError,
    ServiceUnavailableError,
)
from switchyard.platform.metrics import RUNS_SUBMITTED
from switchyard.platform.registry import TaskRegistry, TaskSpec
from switchyard.platform.runs.ledger import NewRun
from switchyard.platform.submission import Accepted, OnRefusal, Submissions
from switchyard.services.outages import RETRY_AFTER_SECONDS
from switchyard.settings import Settings
from switchyard.tasks import repository
from switchyard.tasks.schemas import (
    BulkRunRequest,
    BulkRunResult,
    BulkRunsAccepted,
    state_detail,
)
from switchyard.tasks.service import Submitter, _new_run, check_quotas

logger = logging.getLogger(__name__)

MAX_ERRORS = 100  # a 422 names at most this many failing fields
CONFLICT = "Its idempotency key was taken meanwhile by a different request; it was not queued."
REFUSED = "The task broker did not confirm this run; it was not queued. Submit it again."


@dataclass(frozen=True)
class Bulk:
    """What a bulk submission needs of its process."""

    submissions: Submissions
    registry: TaskRegistry
    settings: Settings


def check_size(count: int, settings: Settings, rate_limit: str) -> None:
    """422 on `body.runs` for more runs than one request may carry, or than the tenant's
    rate limit allows in a whole window (such a request could never pass it)."""
    most = settings.task_bulk_max_runs
    if count > most:
        raise InvalidInputError.on(
            "body.runs",
            f"A request may submit at most {most} runs (TASK_BULK_MAX_RUNS); this one has {count}.",
            message=f"at most {most} items",
            type="too_long",
        )
    window = parse(rate_limit)
    if settings.rate_limits_enabled and count > window.amount:
        raise InvalidInputError.on(
            "body.runs",
            f"The rate limit allows {rate_limit} runs per tenant (its plan's "
            f"task_runs_per_minute, else RATE_LIMIT_TASK_RUNS); a request of {count} runs "
            "could never pass it.",
            message=f"at most {window.amount} items under the rate limit",
            type="too_long",
        )


def _target(
    registry: TaskRegistry,
    item: BulkRunRequest,
    definitions: dict[str, TaskDefinition],
    at: str,
) -> tuple[TaskSpec[Any], TaskDefinition | None]:
    """The task (and definition) an item names; unknown ones are 422 on the item's field."""
    if item.definition is not None:
        definition = definitions.get(item.definition)
        if definition is None:
            raise InvalidInputError.on(
                f"{at}.definition",
                f"No task definition named {item.definition!r}.",
                message="unknown definition",
                type="unknown_definition",
            )
        name, field = definition.task, f"{at}.definition"
    else:
        assert item.task is not None
        definition, name, field = None, item.task, f"{at}.task"
    spec = registry.get(name)
    if spec is None or spec.access == "internal":
        raise InvalidInputError.on(
            field,
            f"No task named {name!r} is registered.",
            message="unknown task",
            type="unknown_task",
        )
    return spec, definition  # a scope it lacks is 403 for the whole request (check_access)


def _duplicate_keys(items: list[BulkRunRequest]) -> list[FieldError]:
    first: dict[str, int] = {}
    errors = []
    for index, item in enumerate(items):
        key = item.idempotency_key
        if key is None:
            continue
        if key in first:
            errors.append(
                FieldError(
                    field=f"body.runs.{index}.idempotency_key",
                    message=f"also the key of runs[{first[key]}]",
                    type="duplicate",
                )
            )
        else:
            first[key] = index
    return errors


async def _checked_runs(
    session: AsyncSession, bulk: Bulk, items: list[BulkRunRequest], submitter: Submitter
) -> list[NewRun]:
    """Every item as a run, or one 422 naming every failing field by index."""
    errors = _duplicate_keys(items)
    names = {item.definition for item in items if item.definition is not None}
    definitions = await repository.DefinitionRepository(session, submitter.tenant_id).by_names(
        names
    )
    runs: list[NewRun] = []
    failing = 0
    for index, item in enumerate(items):
        at = f"body.runs.{index}"
        try:
            spec, definition = _target(bulk.registry, item, definitions, at)
            run = _new_run(
                NewRun,
                spec,
                definition,
                item,
                submitter,
                at=at,
                idempotency_key=item.idempotency_key,
                max_countdown=bulk.settings.task_max_countdown_seconds,
                environment=bulk.settings.environment,
            )
        except InvalidInputError as exc:
            failing += 1
            errors.extend(exc.errors)
            continue
        runs.append(run)
    if errors:
        raise InvalidInputError(
            f"{max(failing, 1)} of the {len(items)} runs are invalid; none was accepted.",
            errors[:MAX_ERRORS],
        )
    return runs


def _same_request(index: int, run: NewRun, existing: TaskRun) -> TaskRun:
    if existing.request_hash != run.request_hash:
        raise ConflictError(
            f"runs[{index}]: its idempotency key was used with a different request; "
            "none was accepted."
        )
    return existing


async def submit_many(
    session: AsyncSession, bulk: Bulk, items: list[BulkRunRequest], submitter: Submitter
) -> BulkRunsAccepted:
    """The route has checked the request's size (`check_size`, before its rate limit).
    Check every run, then store the new ones in one transaction (admitting what the
    tenant's share has room for), publish them in one burst, and remove the runs the broker
    did not confirm (platform.submission, `OnRefusal.REFUSE`). 503 when none was accepted:
    nothing is left behind."""
    runs = await _checked_runs(session, bulk, items, submitter)
    by_key = repository.RunRepository(session, submitter.tenant_id)
    existing = await by_key.by_idempotency_keys(_keys(runs))
    duplicates = {  # 409 for a key used with another request: nothing is stored
        index: _same_request(index, run, existing[run.idempotency_key])
        for index, run in enumerate(runs)
        if run.idempotency_key in existing
    }
    new = [run for index, run in enumerate(runs) if index not in duplicates]
    specs = [bulk.registry.get(run.task) for run in new]
    await check_quotas(session, submitter, [spec for spec in specs if spec is not None])
    await end_reads(session)  # the runs' transaction takes a connection of its own
    accepted = await bulk.submissions.submit(new, on_refusal=OnRefusal.REFUSE)
    raced = [run for run in new if accepted.outcome(run.id) == "taken"]
    conflicts: set[int] = set()
    if raced:  # keys another request took meanwhile: the rest is stored already
        taken = await by_key.by_idempotency_keys(_keys(raced))
        for index, run in enumerate(runs):
            found = taken.get(run.idempotency_key or "")
            if found is None or index in duplicates or run.id in accepted.stored:
                continue
            if found.request_hash == run.request_hash:
                duplicates[index] = found
            else:
                conflicts.add(index)
    return _answer(runs, accepted, duplicates, conflicts, bulk.settings.fair_share)


def _keys(runs: list[NewRun]) -> list[str]:
    return [run.idempotency_key for run in runs if run.idempotency_key is not None]


def _answer(
    runs: list[NewRun],
    accepted: Accepted,
    duplicates: dict[int, TaskRun],
    conflicts: set[int],
    fair_share: bool,
) -> BulkRunsAccepted:
    results: list[BulkRunResult] = []
    outcomes: Counter[tuple[str, str]] = Counter()
    for index, run in enumerate(runs):
        if index in duplicates:
            found = duplicates[index]
            outcomes[found.task, "duplicate"] += 1
            results.append(
                BulkRunResult(
                    index=index,
                    accepted=True,
                    task_id=found.id,
                    state=found.state,
                    state_detail=state_detail(found),
                    eta=found.eta,
                    duplicate=True,
                )
            )
        elif index in conflicts:
            outcomes[run.task, "conflict"] += 1
            results.append(BulkRunResult(index=index, accepted=False, error=CONFLICT))
        elif accepted.outcome(run.id) != "stored":
            outcomes[run.task, "broker_unavailable"] += 1
            results.append(BulkRunResult(index=index, accepted=False, error=REFUSED))
        else:
            waiting = fair_share and run.eta is None and run.admitted_at is None
            outcomes[run.task, "waiting" if waiting else "accepted"] += 1
            results.append(
                BulkRunResult(
                    index=index,
                    accepted=True,
                    task_id=run.id,
                    state=RunState.SCHEDULED if run.eta else RunState.QUEUED,
                    state_detail="waiting_for_capacity" if waiting else None,
                    eta=run.eta,
                )
            )
    for (task, outcome), count in outcomes.items():
        RUNS_SUBMITTED.labels(task=task, outcome=outcome).inc(count)
    total = sum(result.accepted for result in results)
    if total == 0:
        raise ServiceUnavailableError(
            "The task broker is unreachable; none of the runs was queued. Try again shortly.",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    return BulkRunsAccepted(accepted=total, refused=len(results) - total, runs=results)

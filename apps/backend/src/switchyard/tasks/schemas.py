"""Request and response bodies of /api/v1/tasks."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from switchyard.db.models import DeadLetter, RunState, TaskDefinition, TaskRun
from switchyard.platform import schedules
from switchyard.platform.schedules import Schedule
from switchyard.platform.workers import WorkerReport

DefinitionName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,199}$")]
TaskName = Annotated[str, Field(min_length=3, max_length=200)]
Payload = dict[str, Any]
# Why a `queued` run has not started: its tenant has its share of runs in flight already.
StateDetail = Literal["waiting_for_capacity"]


def state_detail(run: TaskRun) -> StateDetail | None:
    if run.state is RunState.QUEUED and run.admitted_at is None:
        return "waiting_for_capacity"
    return None


class RetryPolicyOut(BaseModel):
    max_retries: int
    backoff_seconds: float
    backoff_max_seconds: float
    jitter: bool
    retry_on: list[str]


class RegisteredTask(BaseModel):
    name: str
    description: str
    scope: str = Field(description="The scope a caller needs to run it (POST /tasks/run)")
    queue: str
    retry: RetryPolicyOut
    soft_time_limit: float
    time_limit: float
    input_schema: dict[str, Any]


class DefinitionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: DefinitionName
    task: TaskName
    payload: Payload = Field(default_factory=dict)
    queue: str | None = None
    schedule: Schedule | None = None
    enabled: bool = True
    description: str | None = Field(default=None, max_length=2000)


class DefinitionPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payload: Payload | None = None
    queue: str | None = None
    schedule: Schedule | None = None
    enabled: bool | None = None
    description: str | None = Field(default=None, max_length=2000)


class DefinitionOut(BaseModel):
    id: uuid.UUID
    name: str
    task: str
    payload: Payload
    queue: str | None
    schedule: Schedule | None
    enabled: bool
    description: str | None
    last_scheduled_for: datetime | None
    next_fire_at: datetime | None = Field(
        default=None, description="When beat publishes it next (enabled and scheduled ones)"
    )
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, definition: TaskDefinition) -> DefinitionOut:
        out = cls.model_validate(definition, from_attributes=True)
        if definition.enabled and out.schedule is not None:
            anchor = definition.last_scheduled_for or definition.created_at
            out.next_fire_at = schedules.next_due(out.schedule, anchor, datetime.now(UTC))
        return out


class RegisteredTasks(BaseModel):
    tasks: list[RegisteredTask]
    definitions: list[DefinitionOut]


def _in_utc(value: datetime) -> datetime:
    """In UTC, and in range there (`0001-01-01T00:00+14:00` is before year 1 in UTC)."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


_NUMBER = re.compile(r"[+-]?\d+(?:\.\d*)?(?:[eE][+-]?\d+)?")


def _iso_text(value: object) -> object:
    """Only an ISO 8601 text (or a datetime): a number is not read as seconds since 1970."""
    if isinstance(value, datetime) or (isinstance(value, str) and not _NUMBER.fullmatch(value)):
        return value
    raise ValueError("must be an ISO 8601 time with its zone, like 2026-01-01T09:00:00Z")


# A time with its zone, as UTC; given as ISO 8601 text.
UtcDatetime = Annotated[AwareDatetime, BeforeValidator(_iso_text), AfterValidator(_in_utc)]


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: TaskName | None = None
    definition: DefinitionName | None = None
    payload: Payload | None = None
    # A number of seconds: `true` or "5" are refused, not read as 1 and 5.
    countdown: float | None = Field(default=None, ge=0, allow_inf_nan=False, strict=True)
    eta: UtcDatetime | None = None
    queue: str | None = None

    @model_validator(mode="after")
    def _one_target_one_delay(self) -> Self:
        if (self.task is None) == (self.definition is None):
            raise ValueError("give exactly one of `task` and `definition`")
        if self.countdown is not None and self.eta is not None:
            raise ValueError("give at most one of `countdown` and `eta`")
        return self


class BulkRunRequest(RunRequest):
    """One run of a bulk request: a run request with its own optional idempotency key."""

    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="As the Idempotency-Key header of POST /tasks/run, for this run alone",
    )


class BulkRunsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    runs: list[BulkRunRequest] = Field(
        min_length=1, description="At most TASK_BULK_MAX_RUNS (default 1,000) runs"
    )


class BulkRunResult(BaseModel):
    index: int = Field(description="The run's position in the request")
    accepted: bool
    task_id: uuid.UUID | None = Field(
        default=None, description="The run's id (an accepted run's, or the duplicate's)"
    )
    state: RunState | None = None
    state_detail: StateDetail | None = None
    eta: datetime | None = None
    duplicate: bool = Field(
        default=False, description="Its idempotency key named a run submitted before"
    )
    error: str | None = Field(default=None, description="Why it was not accepted")


class BulkRunsAccepted(BaseModel):
    accepted: int
    refused: int
    runs: list[BulkRunResult] = Field(description="One per requested run, in request order")


class RunAccepted(BaseModel):
    task_id: uuid.UUID
    state: RunState
    state_detail: StateDetail | None = None
    eta: datetime | None = None


class RunError(BaseModel):
    type: str
    message: str | None


class RunOut(BaseModel):
    task_id: uuid.UUID
    task: str
    definition_id: uuid.UUID | None
    queue: str
    state: RunState
    state_detail: StateDetail | None = Field(
        default=None,
        description="waiting_for_capacity: queued behind the tenant's own runs in flight "
        "(TENANT_MAX_RUNS_IN_FLIGHT); it starts when one of them finishes",
    )
    payload: Payload
    result: Any | None
    error: RunError | None
    attempts: int
    submitted_at: datetime
    eta: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    idempotency_key: str | None
    request_id: str | None
    submitted_by: str | None
    replay_of: uuid.UUID | None

    @classmethod
    def of(cls, run: TaskRun) -> RunOut:
        return cls(
            task_id=run.id,
            task=run.task,
            definition_id=run.definition_id,
            queue=run.queue,
            state=run.state,
            state_detail=state_detail(run),
            payload=run.payload,
            result=run.result,
            error=RunError(type=run.error_type, message=run.error_message)
            if run.error_type
            else None,
            attempts=run.attempts,
            submitted_at=run.created_at,
            eta=run.eta,
            started_at=run.started_at,
            finished_at=run.finished_at,
            idempotency_key=run.idempotency_key,
            request_id=run.request_id,
            submitted_by=run.submitted_by,
            replay_of=run.replay_of,
        )


class ShareOut(BaseModel):
    """The caller's tenant's share of the workers, now."""

    limit: int | None = Field(
        description="Runs it may have in flight now: its share of the slots, within its cap; "
        "null: fair share is off"
    )
    in_flight: int = Field(
        description="Runs holding a slot: queued in the broker, started, or retrying"
    )
    started: int
    waiting_for_capacity: int = Field(description="Queued runs waiting for a free slot")


class TenantLoad(BaseModel):
    tenant_id: uuid.UUID
    name: str
    slug: str
    in_flight: int
    waiting_for_capacity: int


class WorkersOverview(BaseModel):
    """The caller's tenant's share; for platform superusers also the broker's queues and the
    worker processes online (the deployment's, across tenants)."""

    share: ShareOut
    queues: dict[str, int] | None = Field(
        default=None, description="Messages ready per queue (superusers; null: not shown)"
    )
    workers: list[WorkerReport] | None = Field(
        default=None, description="Worker processes that reported lately (superusers)"
    )
    tenants: list[TenantLoad] | None = Field(
        default=None, description="The busiest tenants' runs in flight and waiting (superusers)"
    )


class RunPage(BaseModel):
    items: list[RunOut]
    next_cursor: str | None
    share: ShareOut | None = None


class DeadLetterOut(BaseModel):
    id: uuid.UUID
    task_id: uuid.UUID | None
    task: str
    queue: str
    payload: Payload | None
    reason: str
    last_error: str | None
    attempts: int
    dead_lettered_at: datetime
    replayed_task_id: uuid.UUID | None
    raw_message: dict[str, Any] | None = Field(
        default=None, description="A message not sent by Switchyard, as it came: args, kwargs"
    )

    @classmethod
    def of(cls, letter: DeadLetter) -> DeadLetterOut:
        return cls(
            id=letter.id,
            task_id=letter.run_id,
            task=letter.task,
            queue=letter.queue,
            payload=letter.payload,
            reason=letter.reason,
            last_error=letter.last_error,
            attempts=letter.attempts,
            dead_lettered_at=letter.dead_lettered_at,
            replayed_task_id=letter.replayed_run_id,
            raw_message=letter.headers.get("body") if letter.reason == "foreign_message" else None,
        )

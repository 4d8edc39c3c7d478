"""Run state changes on Redis pub/sub, for live followers (SSE)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Protocol

from pydantic import TypeAdapter, ValidationError
from typing_extensions import TypedDict

from switchyard.db.models import RunState
from switchyard.services.redis import Announcer


def channel(namespace: str, run_id: uuid.UUID) -> str:
    return f"{namespace}:runs:{run_id}"


def workflow_channel(namespace: str, workflow_run_id: uuid.UUID) -> str:
    """Where a workflow run's changes are announced (its steps', its own): a bare notice, the
    follower reads the run's graph from the ledger."""
    return f"{namespace}:workflow-runs:{workflow_run_id}"


def announce_workflow(announcer: Announcer, namespace: str, workflow_run_id: uuid.UUID) -> None:
    announcer.publish(workflow_channel(namespace, workflow_run_id), "changed")


class RunLike(Protocol):
    """A ledger row (TaskRun) or a ledger change (RunChange)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def state(self) -> RunState: ...
    @property
    def attempts(self) -> int: ...


class RunEvent(TypedDict):
    """One state change of a run, as published on its channel and sent to followers."""

    task_id: str
    state: RunState
    attempts: int
    at: str


_EVENT: TypeAdapter[RunEvent] = TypeAdapter(RunEvent)


def run_event(run: RunLike) -> RunEvent:
    return RunEvent(
        task_id=str(run.id),
        state=run.state,
        attempts=run.attempts,
        at=datetime.now(UTC).isoformat(),
    )


def encode(event: RunEvent) -> str:
    return json.dumps(event)  # the state is a str enum: its value


def decode(message: str | bytes) -> RunEvent | None:
    """An event read from a run's channel; None for anything else found there."""
    try:
        return _EVENT.validate_json(message)
    except ValidationError:
        return None


def publish(announcer: Announcer, namespace: str, run: RunLike) -> None:
    """Queue the run's event for its followers (sent in order, in pipelines, by the process's
    `Announcer`); best effort: the ledger is the truth, followers re-read it when they
    connect."""
    announcer.publish(channel(namespace, run.id), encode(run_event(run)))

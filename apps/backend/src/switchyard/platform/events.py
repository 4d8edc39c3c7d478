"""Run state changes on Redis pub/sub, for live followers (SSE)."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Protocol

from pydantic import TypeAdapter, ValidationError
from redis.exceptions import RedisError
from typing_extensions import TypedDict

from switchyard.db.models import RunState
from switchyard.services.redis import RedisBreaker, RedisUnavailableError

logger = logging.getLogger(__name__)


def channel(namespace: str, run_id: uuid.UUID) -> str:
    return f"{namespace}:runs:{run_id}"


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


async def publish(redis: RedisBreaker, namespace: str, run: RunLike) -> None:
    """Best effort: the ledger is the truth, followers re-read it when they connect."""
    if redis.client is None:
        return
    message = encode(run_event(run))
    try:
        await redis.call(lambda client: client.publish(channel(namespace, run.id), message))
    except RedisUnavailableError:
        return
    except RedisError as exc:
        logger.warning("run event not published", extra={"task_id": str(run.id), "error": str(exc)})

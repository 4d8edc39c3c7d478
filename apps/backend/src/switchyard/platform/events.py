"""Run state changes on Redis pub/sub, for live followers (SSE)."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any, Protocol

from redis.exceptions import RedisError

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


def run_event(run: RunLike) -> dict[str, Any]:
    return {
        "task_id": str(run.id),
        "state": run.state.value,
        "attempts": run.attempts,
        "at": datetime.now(UTC).isoformat(),
    }


async def publish(redis: RedisBreaker, namespace: str, run: RunLike) -> None:
    """Best effort: the ledger is the truth, followers re-read it when they connect."""
    if redis.client is None:
        return
    message = json.dumps(run_event(run))
    try:
        await redis.call(lambda client: client.publish(channel(namespace, run.id), message))
    except RedisUnavailableError:
        return
    except RedisError as exc:
        logger.warning("run event not published", extra={"task_id": str(run.id), "error": str(exc)})

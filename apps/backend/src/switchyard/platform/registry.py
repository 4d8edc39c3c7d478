"""The task registry: every task declared once, with its input schema, queue and policies."""

from __future__ import annotations

import importlib
import logging
import math
import random
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, TypeVar

from pydantic import BaseModel

from switchyard.errors import RoleConfigurationError
from switchyard.platform.topology import WORK_QUEUES

if TYPE_CHECKING:
    from switchyard.services.container import Services

# Test and demo tasks: outside production only, unless SYSTEM_TASKS_ENABLED (settings).
SYSTEM_TASKS: Final = frozenset({"system.sleep", "system.fail"})
_NAME = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
# Who may start a task over REST (POST /tasks/run, definitions): `public` tasks, by callers
# with the task's `scope`; `internal` tasks, only the platform (their own endpoints, which
# check their own scopes). Over REST an internal task is as unknown as a missing one.
Access = Literal["public", "internal"]
MIN_RETRY_DELAY_SECONDS: Final = 1

InputT = TypeVar("InputT", bound=BaseModel)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: delay n is min(cap, base * 2**(n-1)), with full jitter if asked."""

    max_retries: int = 3
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 300.0
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def delay(self, retry_number: int) -> int:
        """Seconds before retry `retry_number` (1-based); at least 1 (broker-held delays)."""
        delay = min(self.backoff_max_seconds, self.backoff_seconds * 2.0 ** (retry_number - 1))
        if self.jitter:
            delay = random.uniform(delay / 2, delay)  # noqa: S311 - spreading load, not security
        return max(MIN_RETRY_DELAY_SECONDS, math.ceil(delay))

    def retries(self, exc: BaseException) -> bool:
        """Whether an attempt that raised `exc` is tried again: an error that says it is not
        worth trying within the run (`retry_in_run`, a quota spent) never is."""
        return isinstance(exc, self.retry_on) and getattr(exc, "retry_in_run", True)


@dataclass(frozen=True)
class TaskContext:
    """What a handler gets besides its input."""

    services: Services
    tenant_id: uuid.UUID
    run_id: uuid.UUID
    attempt: int
    logger: logging.LoggerAdapter[logging.Logger]


@dataclass(frozen=True)
class TaskSpec(Generic[InputT]):
    name: str
    description: str
    input_model: type[InputT]
    handler: Callable[[InputT, TaskContext], Awaitable[Any]]
    queue: str = "default"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    soft_time_limit: float = 60.0
    time_limit: float = 90.0
    access: Access = "public"
    scope: str = "tasks:run"
    # It calls the LLM provider: a run of it is refused at submission once its tenant's
    # token budget is spent (services.quotas), as well as guarded at each call.
    spends_llm_tokens: bool = False

    def input_schema(self) -> dict[str, Any]:
        return self.input_model.model_json_schema()

    def validate(self, payload: Any, environment: str) -> InputT:
        """The payload as the handler's input; the validators see the environment (a task may
        refuse an input in production: system.fail's crash)."""
        return self.input_model.model_validate(payload, context={"environment": environment})

    def runnable_with(self, scopes: frozenset[str]) -> bool:
        """Whether a caller with `scopes` may start it over REST."""
        return self.access == "public" and self.scope in scopes


class RegistryError(ValueError):
    pass


class TaskRegistry:
    def __init__(self) -> None:
        self._tasks: dict[str, TaskSpec[Any]] = {}

    def register(self, spec: TaskSpec[Any]) -> None:
        if not _NAME.match(spec.name):
            raise RegistryError(f"task name {spec.name!r} is not of the form domain.verb")
        if spec.name in self._tasks:
            raise RegistryError(f"task {spec.name!r} is registered twice")
        if spec.queue not in WORK_QUEUES:
            raise RegistryError(f"task {spec.name!r}: unknown queue {spec.queue!r}")
        if not 0 < spec.soft_time_limit < spec.time_limit:
            raise RegistryError(f"task {spec.name!r}: need 0 < soft_time_limit < time_limit")
        self._tasks[spec.name] = spec

    def without(self, names: frozenset[str]) -> TaskRegistry:
        """A copy of this registry without the tasks `names`."""
        copy = TaskRegistry()
        copy._tasks = {name: spec for name, spec in self._tasks.items() if name not in names}
        return copy

    def get(self, name: str) -> TaskSpec[Any] | None:
        return self._tasks.get(name)

    def all(self) -> list[TaskSpec[Any]]:
        return sorted(self._tasks.values(), key=lambda spec: spec.name)


registry = TaskRegistry()


def task(
    name: str,
    *,
    input: type[InputT],
    description: str,
    queue: str = "default",
    retry: RetryPolicy | None = None,
    soft_time_limit: float = 60.0,
    time_limit: float = 90.0,
    access: Access = "public",
    scope: str = "tasks:run",
    spends_llm_tokens: bool = False,
) -> Callable[
    [Callable[[InputT, TaskContext], Awaitable[Any]]],
    Callable[[InputT, TaskContext], Awaitable[Any]],
]:
    """Declare an `async def handler(payload, ctx)` as the task `name`."""

    def register(
        handler: Callable[[InputT, TaskContext], Awaitable[Any]],
    ) -> Callable[[InputT, TaskContext], Awaitable[Any]]:
        registry.register(
            TaskSpec(
                name=name,
                description=description,
                input_model=input,
                handler=handler,
                queue=queue,
                retry=retry or RetryPolicy(),
                soft_time_limit=soft_time_limit,
                time_limit=time_limit,
                access=access,
                scope=scope,
                spends_llm_tokens=spends_llm_tokens,
            )
        )
        return handler

    return register


def load_task_modules(
    builtin: Sequence[str],
    extra: Sequence[str] = (),
    *,
    scopes: frozenset[str],
    system_tasks: bool = True,
) -> TaskRegistry:
    """Import every module that declares tasks: `builtin` (the domains' own, from
    `switchyard.domains`), then `extra` (the TASK_MODULES setting, a product's own); the
    registry is then complete, and each task's scope must be one of `scopes`. Without
    `system_tasks` (production, unless SYSTEM_TASKS_ENABLED) the registry returned lacks
    system.sleep and system.fail."""
    for module in (*builtin, *extra):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            if module in builtin:
                raise
            raise RoleConfigurationError(f"TASK_MODULES: cannot import {module!r}: {exc}") from exc
    for spec in registry.all():
        if spec.scope not in scopes:
            raise RegistryError(f"task {spec.name!r}: unknown scope {spec.scope!r}")
    return registry if system_tasks else registry.without(SYSTEM_TASKS)

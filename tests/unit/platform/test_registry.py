from __future__ import annotations

import pytest
from pydantic import BaseModel

from switchyard.domains import load_task_modules
from switchyard.errors import RoleConfigurationError
from switchyard.platform.registry import (
    RegistryError,
    RetryPolicy,
    TaskContext,
    TaskRegistry,
    TaskSpec,
)
from switchyard.platform.registry import load_task_modules as load_modules


class Empty(BaseModel):
    pass


async def handler(payload: Empty, ctx: TaskContext) -> None:
    return None


def spec(**overrides: object) -> TaskSpec[Empty]:
    values: dict[str, object] = {
        "name": "demo.run",
        "description": "d",
        "input_model": Empty,
        "handler": handler,
    }
    values.update(overrides)
    return TaskSpec(**values)  # type: ignore[arg-type]


def test_backoff_doubles_up_to_the_cap_and_never_under_a_second() -> None:
    policy = RetryPolicy(backoff_seconds=0.2, backoff_max_seconds=5, jitter=False)
    assert [policy.delay(n) for n in range(1, 8)] == [1, 1, 1, 2, 4, 5, 5]


def test_jitter_stays_between_half_and_the_full_delay() -> None:
    policy = RetryPolicy(backoff_seconds=8, backoff_max_seconds=300, jitter=True)
    delays = {policy.delay(3) for _ in range(200)}
    assert min(delays) >= 16
    assert max(delays) <= 32
    assert len(delays) > 1


def test_retry_on_limits_which_errors_retry() -> None:
    policy = RetryPolicy(retry_on=(TimeoutError,))
    assert policy.retries(TimeoutError())
    assert not policy.retries(ValueError())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "NoDot"}, "domain.verb"),
        ({"queue": "nowhere"}, "unknown queue"),
        ({"soft_time_limit": 10, "time_limit": 5}, "soft_time_limit"),
    ],
)
def test_registry_refuses_bad_declarations(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        TaskRegistry().register(spec(**overrides))


def test_registry_refuses_a_name_twice_and_lists_by_name() -> None:
    registry = TaskRegistry()
    registry.register(spec(name="b.run"))
    registry.register(spec(name="a.run"))
    with pytest.raises(RegistryError, match="twice"):
        registry.register(spec(name="a.run"))
    assert [task.name for task in registry.all()] == ["a.run", "b.run"]
    assert registry.get("c.run") is None


def test_a_task_module_that_cannot_be_imported_stops_the_role_with_a_clear_error() -> None:
    with pytest.raises(RoleConfigurationError, match=r"TASK_MODULES: cannot import 'acme\.nope'"):
        load_task_modules(["acme.nope"])


def test_a_task_whose_scope_is_not_a_known_scope_stops_the_role() -> None:
    load_task_modules()  # the domains' tasks are registered, each with a known scope
    with pytest.raises(RegistryError, match=r"task '[a-z_.]+': unknown scope"):
        load_modules((), scopes=frozenset({"no:such"}))

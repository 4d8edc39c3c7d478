"""A workflow's graph: its steps checked once, when it is registered, and its templates filled
in when a step becomes due.

A step's payload is a template: plain JSON, where an object of one of these shapes is a
reference, replaced by what it names when the step is due:

- `{"$input": "/pointer"}`: the workflow's input, at a JSON Pointer (RFC 6901; "" is all of it);
- `{"$step": "parent", "pointer": "/pointer"}`: a parent's result (`pointer` optional, "" by
  default); a mapped parent's result is the list of its items' results, in the items' order;
- `{"$item": "/pointer"}`: in a mapped step, the item this run is for;
- `{"$literal": value}`: `value` as it is (an object whose keys start with `$`, say).

A step that `map`s over a list (a reference to the input or to a parent's result) becomes one
run per item. What registration checks, every problem at once, each naming its step and field:
unique names, dependencies that exist and no cycle, tasks that exist and that the caller may
run, references that name a parent (and `$item` only in a mapped step), pointers that are JSON
Pointers, and the payload against the task's input schema wherever no reference stands."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from jsonpointer import JsonPointer, JsonPointerException
from pydantic import ValidationError

from switchyard.errors import FieldError
from switchyard.platform.registry import TaskRegistry, TaskSpec

INPUT, STEP, ITEM, LITERAL = "$input", "$step", "$item", "$literal"
ON_FAILURE = ("fail_workflow", "continue", "compensate")
# What a reference stands for while the payload is checked against the task's schema: no
# schema accepts it where a value is required, and its errors are left out (the value is only
# known when the step is due).
_STANDING_IN = object()
_POINTER = re.compile(r"^(/([^~]|~[01])*)*$")

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Reference:
    kind: Literal["$input", "$step", "$item"]
    pointer: str
    step: str | None = None


class BadReferenceError(ValueError):
    """A reference object that is not one of the shapes above."""


def reference(value: Any) -> Reference | None:
    """The reference `value` is, None for plain JSON; BadReferenceError for an object that uses
    a reference key wrongly."""
    if not isinstance(value, dict) or not any(
        isinstance(k, str) and k.startswith("$") for k in value
    ):
        return None
    keys = set(value)
    if keys in ({INPUT}, {ITEM}):
        kind = INPUT if INPUT in keys else ITEM
        pointer = value[kind]
        if not isinstance(pointer, str):
            raise BadReferenceError(f"{kind} takes a JSON Pointer string")
        return Reference("$input" if kind == INPUT else "$item", _checked_pointer(pointer))
    if STEP in keys and keys <= {STEP, "pointer"}:
        step, pointer = value[STEP], value.get("pointer", "")
        if not isinstance(step, str) or not isinstance(pointer, str):
            raise BadReferenceError("$step takes a step's name, and pointer a JSON Pointer string")
        return Reference("$step", _checked_pointer(pointer), step)
    if keys == {LITERAL}:
        return None
    raise BadReferenceError(
        "an object with a key starting with $ must be one reference: {$input: pointer}, "
        "{$step: name, pointer: pointer}, {$item: pointer}, or {$literal: value}"
    )


def _checked_pointer(pointer: str) -> str:
    if not _POINTER.match(pointer):
        raise BadReferenceError(f"{pointer!r} is not a JSON Pointer (RFC 6901: '' or '/a/0')")
    return pointer


def references(template: Any, path: Path = ()) -> Iterator[tuple[Path, Reference]]:
    """Every reference in `template`, with where it stands. BadReferenceError (with the path as
    its second argument) for a malformed one."""
    try:
        found = reference(template)
    except BadReferenceError as exc:
        raise BadReferenceError(str(exc), path) from None
    if found is not None:
        yield path, found
    elif isinstance(template, dict):
        if set(template) == {LITERAL}:
            return
        for key, value in template.items():
            yield from references(value, (*path, key))
    elif isinstance(template, list):
        for index, value in enumerate(template):
            yield from references(value, (*path, index))


def _standing_in(template: Any) -> Any:
    """`template` with each reference replaced by a stand-in, literals unwrapped."""
    if reference(template) is not None:
        return _STANDING_IN
    if isinstance(template, dict):
        if set(template) == {LITERAL}:
            return template[LITERAL]
        return {key: _standing_in(value) for key, value in template.items()}
    if isinstance(template, list):
        return [_standing_in(value) for value in template]
    return template


class MissingValueError(LookupError):
    """A reference points at nothing in the document it names (a step's input that its
    parents' results do not hold): the step cannot run."""


def fill(template: Any, workflow_input: Any, results: dict[str, Any], item: Any = None) -> Any:
    """The payload `template` makes once its parents have `results` (a mapped parent's: the
    list of its items' results) and, in a mapped step, for `item`."""
    found = reference(template)
    if found is not None:
        if found.kind == INPUT:
            document = workflow_input
        elif found.kind == ITEM:
            document = item
        else:
            document = results[str(found.step)]
        try:
            return JsonPointer(found.pointer).resolve(document)
        except JsonPointerException as exc:
            raise MissingValueError(f"{_describe(found)}: {exc}") from None
    if isinstance(template, dict):
        if set(template) == {LITERAL}:
            return template[LITERAL]
        return {key: fill(value, workflow_input, results, item) for key, value in template.items()}
    if isinstance(template, list):
        return [fill(value, workflow_input, results, item) for value in template]
    return template


def _describe(found: Reference) -> str:
    if found.kind == STEP:
        return f"step {found.step!r} result at {found.pointer!r}"
    return f"{'the input' if found.kind == INPUT else 'the item'} at {found.pointer!r}"


def digest(steps: Sequence[dict[str, Any]]) -> str:
    """The same for the same steps however their JSON was spelt (key order, spacing)."""
    canonical = json.dumps(list(steps), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    """Who registers the workflow: the tasks there are, the scopes the caller holds (a step's
    task must be public and its scope held), and the environment payloads are checked in."""

    registry: TaskRegistry
    scopes: frozenset[str]
    environment: str


def check(steps: Sequence[dict[str, Any]], caller: Caller, *, max_steps: int) -> list[FieldError]:
    """Every problem of `steps` (as the request gave them, after their own schema), as field
    errors under `body.steps`; none for a graph that can run."""
    errors: list[FieldError] = []

    def error(at: Path, message: str, kind: str) -> None:
        field = ".".join(["body", "steps", *(str(part) for part in at)])
        errors.append(FieldError(field=field, message=message, type=kind))

    if len(steps) > max_steps:
        errors.append(
            FieldError(
                field="body.steps",
                message=f"at most {max_steps} steps (WORKFLOW_MAX_STEPS)",
                type="too_long",
            )
        )
        return errors
    index_of: dict[str, int] = {}
    for index, step in enumerate(steps):
        if step["name"] in index_of:
            error((index, "name"), f"step {step['name']!r} is named twice", "duplicate")
        else:
            index_of[step["name"]] = index
    for index, step in enumerate(steps):
        needs = step["needs"]
        for position, parent in enumerate(needs):
            if parent == step["name"]:
                error((index, "needs", position), f"step {parent!r} needs itself", "cycle")
            elif parent not in index_of:
                error((index, "needs", position), f"no step is named {parent!r}", "unknown_step")
        if len(set(needs)) != len(needs):
            error((index, "needs"), f"step {step['name']!r} names a parent twice", "duplicate")
    if not errors:
        for index in _on_cycles(steps, index_of):
            names = " → ".join(_cycle_through(steps, index_of, index))
            error(
                (index, "needs"), f"step {steps[index]['name']!r} is on a cycle: {names}", "cycle"
            )
    for index, step in enumerate(steps):
        _check_step(step, (index,), caller, error)
    return errors


def _check_step(step: dict[str, Any], at: Path, caller: Caller, error: Any) -> None:
    name, parents = step["name"], set(step["needs"])
    mapped = step.get("map") is not None
    if mapped:
        try:
            source = reference(step["map"])
        except BadReferenceError as exc:
            error((*at, "map"), f"step {name!r}: {exc}", "reference")
        else:
            if source is None or source.kind == ITEM:
                error(
                    (*at, "map"), f"step {name!r} maps over $input or a parent's $step", "reference"
                )
            elif source.kind == STEP and source.step not in parents:
                error(
                    (*at, "map"),
                    f"step {name!r} maps over {source.step!r}, which is not one of its needs",
                    "not_a_parent",
                )
    spec = _task(step["task"], (*at, "task"), name, caller, error)
    _check_template(step["payload"], (*at, "payload"), name, parents, mapped, spec, caller, error)
    compensation = step.get("compensation")
    if step.get("on_failure") == "compensate" and compensation is None:
        error((*at, "compensation"), f"step {name!r} compensates: give its compensation", "missing")
    elif compensation is not None and step.get("on_failure") != "compensate":
        error(
            (*at, "compensation"),
            f"step {name!r} has a compensation but on_failure is not 'compensate'",
            "unexpected",
        )
    if compensation is not None:
        where = (*at, "compensation")
        compensating = _task(compensation["task"], (*where, "task"), name, caller, error)
        payload = compensation["payload"]
        _check_template(
            payload, (*where, "payload"), name, parents, mapped, compensating, caller, error
        )


def _task(task: str, at: Path, step: str, caller: Caller, error: Any) -> TaskSpec[Any] | None:
    spec = caller.registry.get(task)
    if spec is None or spec.access == "internal":
        error(at, f"step {step!r}: no task named {task!r} is registered", "unknown_task")
        return None
    if spec.scope not in caller.scopes:
        error(at, f"step {step!r}: running {task} needs the scope {spec.scope!r}", "scope")
        return None
    return spec


def _check_template(
    template: dict[str, Any],
    at: Path,
    step: str,
    parents: set[str],
    mapped: bool,
    spec: TaskSpec[Any] | None,
    caller: Caller,
    error: Any,
) -> None:
    standing: list[Path] = []
    try:
        for path, found in references(template):
            standing.append(path)
            where = (*at, *path)
            if found.kind == STEP and found.step not in parents:
                error(
                    where,
                    f"step {step!r} refers to {found.step!r}, which is not one of its needs",
                    "not_a_parent",
                )
            elif found.kind == ITEM and not mapped:
                error(where, f"step {step!r} uses $item but does not map", "not_mapped")
    except BadReferenceError as exc:
        message, path = exc.args
        error((*at, *path), f"step {step!r}: {message}", "reference")
        return
    if spec is None or reference(template) is not None:
        return
    try:
        spec.validate(_standing_in(template), caller.environment)
    except ValidationError as exc:
        for problem in exc.errors(include_url=False):
            location = tuple(problem["loc"])
            if any(location[: len(path)] == path for path in standing):
                continue  # where a reference stands: known when the step is due
            error((*at, *location), f"step {step!r}: {problem['msg']}", problem["type"])


def _on_cycles(steps: Sequence[dict[str, Any]], index_of: dict[str, int]) -> list[int]:
    """The steps no topological order reaches (Kahn's algorithm): those on or after a cycle,
    narrowed to those on one."""
    remaining = {index: len(step["needs"]) for index, step in enumerate(steps)}
    children: dict[int, list[int]] = {index: [] for index in remaining}
    for index, step in enumerate(steps):
        for parent in step["needs"]:
            children[index_of[parent]].append(index)
    ready = [index for index, count in remaining.items() if count == 0]
    while ready:
        done = ready.pop()
        for child in children[done]:
            remaining[child] -= 1
            if remaining[child] == 0:
                ready.append(child)
    stuck = [index for index, count in remaining.items() if count > 0]
    return [index for index in stuck if _reaches(steps, index_of, index, index)]


def _reaches(
    steps: Sequence[dict[str, Any]], index_of: dict[str, int], start: int, goal: int
) -> bool:
    seen: set[int] = set()
    pending = [index_of[parent] for parent in steps[start]["needs"]]
    while pending:
        index = pending.pop()
        if index == goal:
            return True
        if index not in seen:
            seen.add(index)
            pending.extend(index_of[parent] for parent in steps[index]["needs"])
    return False


def _cycle_through(
    steps: Sequence[dict[str, Any]], index_of: dict[str, int], start: int
) -> list[str]:
    """One cycle through `start`, as names, following parents (depth first)."""
    path = [start]

    def walk(index: int) -> bool:
        for parent in steps[index]["needs"]:
            following = index_of[parent]
            if following == start:
                return True
            if following not in path:
                path.append(following)
                if walk(following):
                    return True
                path.pop()
        return False

    walk(start)
    return [steps[index]["name"] for index in [start, *reversed(path[1:]), start]]


def order(steps: Sequence[dict[str, Any]]) -> list[str]:
    """The steps' names in an order where every step comes after its parents."""
    placed: list[str] = []
    pending = list(steps)
    while pending:
        for step in pending:
            if all(parent in placed for parent in step["needs"]):
                placed.append(step["name"])
                pending.remove(step)
                break
        else:
            raise ValueError("the steps have a cycle")
    return placed

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from switchyard.db.models import WorkflowDefinition

WorkflowName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,199}$")]
StepName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
TaskName = Annotated[str, Field(min_length=3, max_length=200)]
Template = dict[str, Any]


class CompensationIn(BaseModel):
    """The run started when its step has failed for good (`on_failure: compensate`)."""

    model_config = ConfigDict(extra="forbid")

    task: TaskName
    payload: Template = Field(default_factory=dict)


class StepIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StepName
    task: TaskName
    payload: Template = Field(
        default_factory=dict,
        description="The task's input; {$input: pointer}, {$step: parent, pointer: pointer} "
        "and {$item: pointer} stand for what they name when the step is due",
    )
    needs: list[StepName] = Field(default_factory=list, max_length=100)
    map: dict[str, Any] | None = Field(
        default=None,
        description="A list to run the step once per item of ({$input: ...} or a parent's "
        "{$step: ...}); the steps after it get the items' results, in order",
    )
    on_failure: Literal["fail_workflow", "continue", "compensate"] = "fail_workflow"
    compensation: CompensationIn | None = None


class WorkflowIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: WorkflowName
    description: str | None = Field(default=None, max_length=2000)
    steps: list[StepIn] = Field(min_length=1)


class WorkflowUpdate(BaseModel):
    """A workflow's next version: its steps (and description) as a whole."""

    model_config = ConfigDict(extra="forbid")

    description: str | None = Field(default=None, max_length=2000)
    steps: list[StepIn] = Field(min_length=1)


class WorkflowOut(BaseModel):
    id: uuid.UUID
    name: str
    version: int
    description: str | None
    steps: list[dict[str, Any]]
    created_by: str | None
    created_at: datetime

    @classmethod
    def of(cls, definition: WorkflowDefinition) -> WorkflowOut:
        return cls(
            id=definition.id,
            name=definition.name,
            version=definition.version,
            description=definition.description,
            steps=definition.steps,
            created_by=definition.created_by,
            created_at=definition.created_at,
        )


class WorkflowPage(BaseModel):
    items: list[WorkflowOut]
    next_cursor: str | None


class WorkflowRunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: Any = Field(default=None, description="What the steps' {$input: pointer} read")
    version: int | None = Field(
        default=None, ge=1, le=2_147_483_647, description="Default: the newest"
    )


class BulkWorkflowRunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: Any = Field(default=None, description="What the steps' {$input: pointer} read")
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="As the Idempotency-Key header of POST /workflows/{name}/runs, for this run",
    )


class WorkflowRunsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(
        default=None, ge=1, le=2_147_483_647, description="Default: the newest"
    )
    runs: list[BulkWorkflowRunIn] = Field(
        min_length=1, description="At most WORKFLOW_BULK_MAX_RUNS (default 100) runs"
    )


class StartedRunOut(BaseModel):
    index: int = Field(description="The run's position in the request")
    id: uuid.UUID
    state: str
    created: bool = Field(description="False: its idempotency key's earlier run")


class WorkflowRunsAccepted(BaseModel):
    items: list[StartedRunOut]


class StepRunOut(BaseModel):
    id: uuid.UUID
    state: str
    attempts: int
    item_index: int | None
    error: str | None


class StepOut(BaseModel):
    name: str
    task: str
    needs: list[str]
    state: str
    items: int | None = Field(description="Its runs: one, or one per item of its map")
    items_left: int | None
    failed_items: int
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    runs: list[StepRunOut] = Field(description="Its runs, the first 20 by item")
    result: Any = Field(default=None, description="An unmapped step's result, when small")


class WorkflowRunSummary(BaseModel):
    id: uuid.UUID
    workflow: str
    version: int
    state: str
    error: str | None
    steps_left: int
    created_at: datetime
    finished_at: datetime | None


class WorkflowRunPage(BaseModel):
    items: list[WorkflowRunSummary]
    next_cursor: str | None


class WorkflowRunOut(BaseModel):
    id: uuid.UUID
    workflow: str
    version: int
    state: str
    input: Any
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    steps: list[StepOut]

"""What the tasks domain offers other domains' routes: submitting a run on behalf of the
caller (`SubmitterDep`), in the request's unit of work, with the 202's Location."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.auth.dependencies import PrincipalDep
from switchyard.auth.principal import Principal
from switchyard.db.models import TaskRun
from switchyard.platform.dependencies import (
    RegistryDep,
    ServicesDep,
    SessionDep,
    SubmissionsDep,
)
from switchyard.platform.registry import TaskRegistry
from switchyard.platform.submission import Submissions
from switchyard.services.container import Services
from switchyard.tasks import bulk, service
from switchyard.tasks.schemas import (
    BulkRunRequest,
    BulkRunsAccepted,
    RunAccepted,
    RunRequest,
    state_detail,
)


@dataclass(frozen=True)
class RunSubmitter:
    request: Request
    response: Response
    session: AsyncSession
    services: Services
    submissions: Submissions
    registry: TaskRegistry
    principal: Principal

    async def __call__(
        self,
        body: RunRequest,
        *,
        idempotency_key: str | None = None,
        replay_of: uuid.UUID | None = None,
        over_rest: bool = False,
    ) -> tuple[TaskRun, RunAccepted]:
        """Submit a run for a route: the ledger row in the request's unit of work, the publish
        once that commits, and a 202 with its Location; the run records who submitted it.
        `over_rest`: the caller names the task (POST /tasks/run, a replay), so it must be one
        the caller may run."""
        request, principal, settings = self.request, self.principal, self.services.settings
        submitter = service.Submitter.of(
            principal,
            self.services,
            scopes=principal.scopes if over_rest else None,
            internal_ok=replay_of is not None,
        )
        run, _ = await service.submit(
            self.session,
            self.submissions,
            self.registry,
            body,
            submitter,
            idempotency_key=idempotency_key,
            max_countdown=settings.task_max_countdown_seconds,
            settings=settings,
            replay_of=replay_of,
            # POST /tasks/run: the run is all its unit of work holds; it may join others'.
            alone=over_rest and replay_of is None,
        )
        self.response.headers["Location"] = run_location(request, run.id)
        accepted = RunAccepted(
            task_id=run.id, state=run.state, state_detail=state_detail(run), eta=run.eta
        )
        return run, accepted

    async def many(self, items: list[BulkRunRequest]) -> BulkRunsAccepted:
        """Submit many runs the caller names (POST /tasks/runs): each one checked as over
        REST, stored and published together; 207 when the broker refused some of them."""
        principal, services = self.principal, self.services
        submitter = service.Submitter.of(principal, services, scopes=principal.scopes)
        accepted = await bulk.submit_many(
            self.session,
            bulk.Bulk(self.submissions, self.registry, services.settings),
            items,
            submitter,
        )
        if accepted.refused:
            self.response.status_code = 207
        return accepted


def run_location(request: Request, run_id: uuid.UUID) -> str:
    """What `request.url_for("get_run", ...).path` gives, without walking every route on each
    submission: the path template is worked out once per app."""
    template: str | None = getattr(request.app.state, "run_location", None)
    if template is None:
        template = str(request.app.url_path_for("get_run", task_id="{task_id}"))
        request.app.state.run_location = template
    root_path: str = request.scope.get("root_path", "")
    return root_path.rstrip("/") + template.format(task_id=run_id)


async def get_submitter(
    request: Request,
    response: Response,
    session: SessionDep,
    services: ServicesDep,
    submissions: SubmissionsDep,
    registry: RegistryDep,
    principal: PrincipalDep,
) -> RunSubmitter:
    return RunSubmitter(request, response, session, services, submissions, registry, principal)


SubmitterDep = Annotated[RunSubmitter, Depends(get_submitter)]

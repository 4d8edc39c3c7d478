"""Liveness, readiness and the full dependency report."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from switchyard.auth.dependencies import ConsoleSuperuserDep
from switchyard.platform.dependencies import HealthDep, SettingsDep
from switchyard.platform.metrics import bearer_matches
from switchyard.services.health import HealthReport
from switchyard.settings import Environment, Settings

router = APIRouter(tags=["health"])


class HealthStatus(BaseModel):
    """What production tells a caller without the operator's token (METRICS_TOKEN)."""

    status: Literal["ok", "degraded", "error"]


_REPORT_RESPONSES: dict[int | str, dict[str, object]] = {
    503: {"model": HealthReport | HealthStatus, "description": "A critical dependency is down"}
}
Authorization = Annotated[str | None, Header(include_in_schema=False)]


def _answer(
    report: HealthReport, settings: Settings, authorization: str | None, operator: bool = False
) -> JSONResponse:
    """The whole report, or in production without the operator's token (or a superuser's
    console session, `operator`) only its status: dependency names, latencies and errors are a
    map of the deployment."""
    if (
        settings.environment is Environment.PRODUCTION
        and not operator
        and (
            settings.metrics_token is None
            or not bearer_matches(settings.metrics_token, authorization)
        )
    ):
        body = {"status": report.status}
    else:
        body = report.model_dump(mode="json", exclude_none=True)
    return JSONResponse(body, status_code=200 if report.healthy else 503)


@router.get("/health/live")
async def live() -> dict[str, str]:
    """The process answers; no dependency is called."""
    return {"status": "ok"}


@router.get(
    "/health/ready", response_model=HealthReport | HealthStatus, responses=_REPORT_RESPONSES
)
async def ready(
    health: HealthDep, settings: SettingsDep, authorization: Authorization = None
) -> JSONResponse:
    """Critical dependencies only: 200 when all are up, 503 otherwise."""
    return _answer(await health.report(critical_only=True), settings, authorization)


@router.get("/health", response_model=HealthReport | HealthStatus, responses=_REPORT_RESPONSES)
async def full_report(
    health: HealthDep,
    settings: SettingsDep,
    superuser: ConsoleSuperuserDep,
    authorization: Authorization = None,
) -> JSONResponse:
    """Every dependency; `degraded` when only a non-critical one is down."""
    return _answer(await health.report(), settings, authorization, operator=superuser)

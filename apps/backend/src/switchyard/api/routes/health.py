"""Liveness, readiness and the full dependency report."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from switchyard.dependencies import HealthDep
from switchyard.services.health import HealthReport

router = APIRouter(tags=["health"])

_REPORT_RESPONSES: dict[int | str, dict[str, object]] = {
    503: {"model": HealthReport, "description": "A critical dependency is down"}
}


def _answer(report: HealthReport) -> JSONResponse:
    body = report.model_dump(mode="json", exclude_none=True)
    return JSONResponse(body, status_code=200 if report.healthy else 503)


@router.get("/health/live")
async def live() -> dict[str, str]:
    """The process answers; no dependency is called."""
    return {"status": "ok"}


@router.get("/health/ready", response_model=HealthReport, responses=_REPORT_RESPONSES)
async def ready(health: HealthDep) -> JSONResponse:
    """Critical dependencies only: 200 when all are up, 503 otherwise."""
    return _answer(await health.report(critical_only=True))


@router.get("/health", response_model=HealthReport, responses=_REPORT_RESPONSES)
async def full_report(health: HealthDep) -> JSONResponse:
    """Every dependency; `degraded` when only a non-critical one is down."""
    return _answer(await health.report())

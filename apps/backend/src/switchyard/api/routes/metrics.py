"""`/metrics` for Prometheus, optionally only for `Authorization: Bearer <METRICS_TOKEN>`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from switchyard.api.metrics import scrape_registry
from switchyard.errors import UnauthorizedError
from switchyard.platform.dependencies import SettingsDep
from switchyard.platform.metrics import bearer_matches

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
def metrics(
    settings: SettingsDep, authorization: Annotated[str | None, Header()] = None
) -> Response:
    if not bearer_matches(settings.metrics_token, authorization):
        raise UnauthorizedError("Metrics need `Authorization: Bearer <METRICS_TOKEN>`.")
    return Response(generate_latest(scrape_registry()), media_type=CONTENT_TYPE_LATEST)

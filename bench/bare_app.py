"""The baseline of the gateway benchmark: a bare Starlette app with one route, nothing else.

Served by `python -m uvicorn bench.bare_app:app` with the gateway's uvicorn settings."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def live(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


app = Starlette(routes=[Route("/health/live", live)])


def _fastapi_app() -> object:
    from fastapi import FastAPI

    api = FastAPI()

    @api.get("/health/live")
    async def live_fastapi() -> dict[str, str]:
        return {"status": "ok"}

    return api


# The same route on bare FastAPI: what the framework itself costs, for reference.
fastapi_app = _fastapi_app()

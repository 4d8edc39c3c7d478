"""The console's pages: one HTML shell for every /console path (its script renders the page
from the path and the /api/v1 answers) and the assets beside it, under a strict CSP."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from switchyard import __version__

ASSETS = Path(__file__).parent / "assets"
# Scripts, styles, images and API calls from this origin only; never framed.
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

router = APIRouter(include_in_schema=False)
assets = StaticFiles(directory=ASSETS, check_dir=True)


@cache
def _shell() -> str:
    # The version in the asset URLs: a new release is never served an old script from cache.
    return (ASSETS / "index.html").read_text(encoding="utf-8").replace("{version}", __version__)


@router.get("/console")
@router.get("/console/{page:path}")
async def shell() -> HTMLResponse:
    return HTMLResponse(_shell(), headers=HEADERS)

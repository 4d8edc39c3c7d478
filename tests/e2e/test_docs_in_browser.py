"""/docs in a real browser (headless Chromium), with no internet: Swagger UI comes from the
gateway itself and lists the operations."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
from sqlalchemy.engine import URL

from tests.fixtures.accounts import PASSWORD
from tests.fixtures.browser import CHROMIUM, CHROMIUM_FLAGS, require_chromium
from tests.fixtures.processes import RunningRole
from tests.fixtures.servers import free_port

pytestmark = pytest.mark.e2e


def test_swagger_ui_lists_the_operations_without_any_outside_request(
    start_role: Callable[..., RunningRole], database_url: URL
) -> None:
    require_chromium()
    from playwright.sync_api import sync_playwright

    gateway = start_role(
        "api-gateway", free_port(), DATABASE_URL=database_url.render_as_string(hide_password=False)
    )
    gateway.wait_healthy()
    local = urlsplit(gateway.base_url).netloc
    requested: list[str] = []
    failed: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.goto(f"{gateway.base_url}/docs", wait_until="networkidle")
            page.wait_for_selector(".opblock", timeout=20_000)
            operations = page.locator(".opblock-summary-path").all_inner_texts()
            title = page.locator(".info .title").inner_text()
        finally:
            browser.close()
    paths = {text.replace("\u200b", "").strip() for text in operations}
    assert "/api/v1/tasks/run" in paths
    assert "/api/v1/auth/login" in paths
    assert len(paths) >= 30
    assert title.startswith("Switchyard")
    outside = [url for url in requested if urlsplit(url).netloc not in (local, "")]
    assert outside == []
    assert failed == []


def test_the_authorize_dialog_gets_a_client_credentials_token(
    start_role: Callable[..., RunningRole], database_url: URL
) -> None:
    """/docs → Authorize → the clientCredentials flow with an OAuth client's id and secret: the
    browser asks /api/v1/oauth/token itself, and the dialog says authorized."""
    require_chromium()
    import httpx
    from playwright.sync_api import sync_playwright

    gateway = start_role(
        "api-gateway", free_port(), DATABASE_URL=database_url.render_as_string(hide_password=False)
    )
    gateway.wait_healthy()
    with httpx.Client(base_url=gateway.base_url) as api:
        email = f"docs-{uuid.uuid4().hex[:8]}@example.com"
        registered = api.post(
            "/api/v1/auth/register",
            json={"email": email, "password": PASSWORD, "tenant_name": "Docs"},
        )
        assert registered.status_code == 201, registered.text
        tokens = api.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        headers = {"Authorization": f"Bearer {tokens.json()['access_token']}"}
        client = api.post(
            "/api/v1/oauth-clients",
            json={"name": "docs", "scopes": ["tasks:read"]},
            headers=headers,
        ).json()
    answers: list[tuple[str, int]] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.on("response", lambda response: answers.append((response.url, response.status)))
            page.goto(f"{gateway.base_url}/docs", wait_until="networkidle")
            page.click("button.btn.authorize")
            # The flow's block (once authorized, its inputs give way to "******").
            flow = page.locator(".auth-container", has_text="clientCredentials")
            flow.locator("#client_id_clientCredentials").fill(client["client_id"])
            flow.locator("#client_secret_clientCredentials").fill(client["client_secret"])
            flow.locator("button.authorize").click()
            flow.locator("button", has_text="Logout").wait_for(timeout=20_000)
            authorized = flow.inner_text()
        finally:
            browser.close()
    assert "Authorized" in authorized
    assert (f"{gateway.base_url}/api/v1/oauth/token", 200) in answers

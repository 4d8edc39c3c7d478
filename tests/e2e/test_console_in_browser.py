"""The operator console in a real browser (headless Chromium driven by Playwright) against the
real processes: a gateway and a worker as `switchyard run`, on the session's PostgreSQL, Redis
and RabbitMQ, with MinIO (moto), a Chroma server and the Zhipu fake for documents.

One operator's day: sign in, watch a run go from scheduled to succeeded without reloading,
cancel a delayed run, replay a dead letter, pause a schedule, upload a document and find it,
see workers and health; another tenant's browser sees none of it; a forged form from another
origin on the same site changes nothing. Screenshots of each page go to CONSOLE_SCREENSHOTS
(default var/screenshots/console; `make console-screenshots` writes the README's)."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from switchyard.db.migrate import migrate
from tests.fakes.zhipu import FakeZhipu
from tests.fixtures.accounts import PASSWORD
from tests.fixtures.browser import CHROMIUM, CHROMIUM_FLAGS, require_chromium
from tests.fixtures.messaging import own_vhost
from tests.fixtures.postgres import DatabaseFactory
from tests.fixtures.processes import RunningRole, reap, spawn_role
from tests.fixtures.servers import free_port
from tests.fixtures.stack import product_env

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
HANDBOOK = b"""# Porto office handbook

The Porto office kitchen serves lunch from noon until two.

Bicycles are parked in the courtyard behind the building.
"""


@dataclass(frozen=True)
class Operator:
    email: str
    tenant_id: str
    api: httpx.Client  # the REST API with this operator's bearer token, to set up and check


@dataclass(frozen=True)
class Stack:
    base_url: str
    worker: RunningRole

    def operator(self, tenant_name: str) -> Operator:
        email = f"console-{uuid.uuid4().hex[:10]}@example.com"
        api = httpx.Client(base_url=f"{self.base_url}/api/v1", timeout=30)
        registered = api.post(
            "/auth/register",
            json={"email": email, "password": PASSWORD, "tenant_name": tenant_name},
        )
        assert registered.status_code == 201, registered.text
        tokens = api.post("/auth/login", json={"email": email, "password": PASSWORD}).json()
        api.headers["Authorization"] = f"Bearer {tokens['access_token']}"
        return Operator(email, registered.json()["tenant"]["id"], api)


@pytest.fixture(scope="module")
async def console_database(create_database: DatabaseFactory) -> URL:
    """The console's own ledger: the superuser's page lists the busiest tenants, which on the
    session's database would be whatever other tests left in flight."""
    url = await create_database()
    await migrate(url)
    return url


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    console_database: URL,
    redis_url: str,
    s3_endpoint: str,
    chroma_server: tuple[str, int],
    zhipu_server: FakeZhipu,
) -> Iterator[Stack]:
    require_chromium()
    workdir = tmp_path_factory.mktemp("console")
    with own_vhost() as broker:
        env = product_env(
            database_url=console_database,
            redis_url=redis_url,
            broker=broker,
            s3_endpoint=s3_endpoint,
            chroma_server=chroma_server,
            zhipu=zhipu_server,
            name="console",
            WORKER_CONCURRENCY="10",
            TASK_DELIVERY_LIMIT="2",
        )
        port = free_port()
        gateway = spawn_role("api-gateway", workdir, env, port)
        worker = spawn_role("worker", workdir, {**env, "VAR_DIR": str(workdir / "worker")})
        try:
            gateway.wait_healthy()
            worker.wait_heartbeat(workdir / "worker" / "worker.heartbeat")
            yield Stack(gateway.base_url, worker)
        finally:
            reap(worker)
            reap(gateway)


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def screenshots() -> Path:
    folder = Path(os.environ.get("CONSOLE_SCREENSHOTS", REPO / "var" / "screenshots" / "console"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def signed_in(
    browser: Any, stack: Stack, operator: Operator, errors: list[str], *, keyboard: bool = False
) -> Any:
    """A browser context of its own (its own cookies, in Kathmandu's time zone, UTC+5:45)
    with the console signed in: with the mouse, or with the keyboard alone."""
    context = browser.new_context(
        viewport={"width": 1280, "height": 800}, timezone_id="Asia/Kathmandu"
    )
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{stack.base_url}/console/runs")
    page.wait_for_url("**/console/sign-in**")
    if keyboard:
        page.keyboard.press("Tab")  # the skip link
        page.keyboard.press("Tab")
        page.keyboard.type(operator.email)
        page.keyboard.press("Tab")
        page.keyboard.type(PASSWORD)
        page.keyboard.press("Enter")
    else:
        page.get_by_label("Email").fill(operator.email)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/console/runs")
    return page


def shown_in_the_viewers_zone(time_element: Any) -> bool:
    """The time reads in the viewer's zone (minutes 45 past UTC's), the UTC value on hover."""
    machine = time_element.get_attribute("datetime")
    utc = datetime.fromisoformat(machine.replace("Z", "+00:00"))
    shown = re.search(r"(\d{1,2}):(\d{2}):(\d{2})", time_element.inner_text())
    assert shown is not None
    hover = time_element.get_attribute("title")
    return (
        machine.endswith("Z")
        and int(shown[2]) == (utc.minute + 45) % 60
        and hover == f"{machine} (UTC)"
    )


def submit(operator: Operator, task: str, payload: dict[str, Any], **extra: Any) -> str:
    accepted = operator.api.post("/tasks/run", json={"task": task, "payload": payload, **extra})
    assert accepted.status_code == 202, accepted.text
    return str(accepted.json()["task_id"])


def eventually(check: Any, within: float = 30.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.2)


def test_an_operator_works_the_console_in_a_real_browser(
    stack: Stack, browser: Any, screenshots: Path
) -> None:
    alice = stack.operator("Acme")
    errors: list[str] = []
    page = signed_in(browser, stack, alice, errors)
    loads: list[str] = []
    page.on("load", lambda: loads.append(page.url))
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))

    # A run watched from scheduled to succeeded: the page follows it without reloading.
    watched = submit(alice, "system.sleep", {"seconds": 1}, countdown=2)
    page.goto(f"{stack.base_url}/console/runs/{watched}")
    page.locator("#run-state").wait_for()
    first_state = page.locator("#run-state").inner_text()
    assert first_state in ("scheduled", "queued", "started")
    loaded = len(loads)
    page.locator("#run-state", has_text="succeeded").wait_for(timeout=30_000)
    assert len(loads) == loaded  # no reload
    timeline = page.get_by_label("Timeline").inner_text()
    assert "started" in timeline
    assert "seen live" in timeline
    assert shown_in_the_viewers_zone(page.get_by_label("Timeline").locator("time").first)
    page.screenshot(path=str(screenshots / "run.png"), full_page=True)

    # The runs list shows it, and follows a new run's state without reloading.
    echo = submit(alice, "system.echo", {"message": "listed"}, countdown=2)
    page.goto(f"{stack.base_url}/console/runs")
    row = page.locator("tr", has=page.locator(f'a[href="/console/runs/{echo}"]'))
    row.wait_for()
    loaded = len(loads)
    row.locator(".badge", has_text="succeeded").wait_for(timeout=30_000)
    assert len(loads) == loaded
    page.screenshot(path=str(screenshots / "runs.png"))
    filtered = page.goto(f"{stack.base_url}/console/runs?state=succeeded&task=system.sleep")
    assert filtered is not None
    page.locator(f'a[href="/console/runs/{watched}"]').wait_for()
    assert page.locator(f'a[href="/console/runs/{echo}"]').count() == 0

    # Cancel a delayed run, with confirmation.
    delayed = submit(alice, "system.echo", {"message": "later"}, countdown=600)
    page.goto(f"{stack.base_url}/console/runs/{delayed}")
    page.get_by_role("button", name="Cancel run").click()
    page.get_by_role("button", name="Confirm").click()
    page.locator("#run-state", has_text="cancelled").wait_for()
    assert alice.api.get(f"/tasks/{delayed}").json()["state"] == "cancelled"

    # Replay a dead letter from the archive.
    broken = submit(alice, "system.fail", {"retryable": False})
    letter = eventually(
        lambda: next(
            iter(alice.api.get("/tasks/dead-letters", params={"task_id": broken}).json()), None
        )
    )
    page.goto(f"{stack.base_url}/console/dead-letters")
    letter_row = page.locator(f"#letter-{letter['id']}")
    letter_row.get_by_text("Inspect").click()
    assert "system.fail was asked to fail" in letter_row.inner_text()
    page.screenshot(path=str(screenshots / "dead-letters.png"))
    letter_row.get_by_role("button", name="Replay").click()
    page.get_by_role("button", name="Confirm").click()
    page.wait_for_url("**/console/runs/*")
    replay_id = page.url.rsplit("/", 1)[1]
    assert replay_id != broken
    replayed = alice.api.get("/tasks/dead-letters", params={"task_id": broken}).json()
    assert replayed[0]["replayed_task_id"] == replay_id
    assert alice.api.get(f"/tasks/{replay_id}").json()["replay_of"] == broken
    # ... and delete it from the archive (the dialog's Cancel first: nothing happens).
    page.goto(f"{stack.base_url}/console/dead-letters")
    letter_row.get_by_role("button", name="Delete").click()
    page.get_by_role("button", name="Cancel").click()
    assert alice.api.get("/tasks/dead-letters", params={"task_id": broken}).json() != []
    letter_row.get_by_role("button", name="Delete").click()
    page.get_by_role("button", name="Confirm").click()
    letter_row.wait_for(state="detached")
    assert alice.api.get("/tasks/dead-letters", params={"task_id": broken}).json() == []

    # Pause a schedule, and run a definition now.
    registered = alice.api.post(
        "/tasks/register",
        json={
            "name": "hourly-digest",
            "task": "system.echo",
            "payload": {"message": "digest"},
            "schedule": {"every_seconds": 3600},
        },
    )
    assert registered.status_code == 201, registered.text
    page.goto(f"{stack.base_url}/console/definitions")
    toggle = page.get_by_label("enabled")
    assert toggle.is_checked()
    row = page.locator("tr", has_text="hourly-digest")
    assert row.locator("time").count() == 1  # its next fire time
    page.screenshot(path=str(screenshots / "definitions.png"))
    toggle.uncheck()
    row.get_by_text("paused").wait_for()
    assert alice.api.get("/tasks/definitions/hourly-digest").json()["enabled"] is False
    page.get_by_role("button", name="Run hourly-digest now").click()
    page.wait_for_url("**/console/runs/*")
    now_run = alice.api.get(f"/tasks/{page.url.rsplit('/', 1)[1]}").json()
    assert now_run["definition_id"] == registered.json()["id"]

    # Upload a document and find it by search, with its citation.
    page.goto(f"{stack.base_url}/console/documents")
    page.get_by_label("File (text, Markdown, HTML or PDF)").set_input_files(
        files=[{"name": "porto.md", "mimeType": "text/markdown", "buffer": HANDBOOK}]
    )
    page.get_by_label("Title").fill("Porto handbook")
    page.get_by_role("button", name="Upload").click()
    page.locator("tr", has_text="Porto handbook").locator(".badge", has_text="ready").wait_for(
        timeout=60_000
    )
    page.get_by_label("Search your documents").fill("where is lunch served?")
    page.get_by_role("button", name="Search").click()
    hit = page.locator("ol.hits li").first
    hit.wait_for()
    assert "Porto handbook" in hit.locator("cite").inner_text()
    assert "lunch" in page.locator("ol.hits").inner_text()
    page.screenshot(path=str(screenshots / "documents.png"), full_page=True)

    # Workers and health: what a tenant may see; every check named.
    page.goto(f"{stack.base_url}/console/workers")
    page.get_by_role("rowheader", name="Runs in flight", exact=True).wait_for()
    assert "superusers" in page.locator("main").inner_text()
    page.goto(f"{stack.base_url}/console/health")
    checks = page.get_by_label("Health checks")
    checks.wait_for()
    for name in ("postgres", "redis", "rabbitmq", "minio", "chroma"):
        assert checks.locator("td", has_text=name).count() >= 1
    page.screenshot(path=str(screenshots / "health.png"))

    # A phone's width: the page still reads (no horizontal scroll of the whole page).
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{stack.base_url}/console/runs")
    page.locator("tbody tr").first.wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(screenshots / "runs-phone.png"), full_page=True)

    # Another tenant's browser sees none of Alice's runs, even by their address.
    bob = stack.operator("Bobco")
    other = signed_in(browser, stack, bob, errors, keyboard=True)
    other.get_by_text("No runs match").wait_for()
    for run_id in (watched, echo, delayed, broken, replay_id):
        assert other.locator(f'a[href="/console/runs/{run_id}"]').count() == 0
    other.goto(f"{stack.base_url}/console/runs/{watched}")
    other.get_by_text("No such run in this tenant.").wait_for()
    other.goto(f"{stack.base_url}/console/dead-letters")
    other.get_by_text("No dead letters").wait_for()

    # Nothing was asked of any other host: no CDN, no font, no analytics.
    assert {urlsplit(url).netloc for url in requested} == {urlsplit(stack.base_url).netloc}

    # Sign-out ends it: the next page asks to sign in again.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/console/sign-in")
    page.goto(f"{stack.base_url}/console/runs")
    page.wait_for_url("**/console/sign-in**")
    assert errors == []


def test_a_workflow_runs_graph_follows_its_steps_live_and_a_failed_one_replays(
    stack: Stack, browser: Any, screenshots: Path
) -> None:
    carol = stack.operator("Pipelines")
    steps = [
        {"name": "split", "task": "system.echo", "payload": {"message": "go"}},
        {
            "name": "each",
            "task": "system.echo",
            "needs": ["split"],
            "map": {"$input": "/items"},
            "payload": {"message": {"$item": ""}},
        },
        {"name": "wait", "task": "system.sleep", "needs": ["each"], "payload": {"seconds": 3}},
        {"name": "done", "task": "system.echo", "needs": ["wait"], "payload": {"message": "ok"}},
    ]
    registered = carol.api.post("/workflows", json={"name": "nightly", "steps": steps})
    assert registered.status_code == 201, registered.text
    started = carol.api.post("/workflows/nightly/runs", json={"input": {"items": ["a", "b", "c"]}})
    assert started.status_code == 202, started.text
    run_id = started.json()["id"]
    errors: list[str] = []
    page = signed_in(browser, stack, carol, errors)
    loads: list[str] = []
    page.on("load", lambda: loads.append(page.url))

    page.goto(f"{stack.base_url}/console/workflows")
    page.locator(f'a[href="/console/workflows/{run_id}"]').click()
    graph = page.get_by_role("img", name=f"The graph of workflow run {run_id}")
    graph.wait_for()
    assert graph.locator("g.node").count() == 4
    assert graph.locator("path.edge").count() == 3
    assert page.locator("#step-done").get_attribute("data-state") == "waiting"
    loaded = len(loads)
    # The graph follows the run (its events) to the end without a reload.
    page.locator('#step-done[data-state="succeeded"]').wait_for(timeout=60_000)
    assert len(loads) == loaded
    assert "3/3" in (page.locator("#step-each").text_content() or "")  # a mapped step's progress
    page.locator("#workflow-state", has_text="succeeded").wait_for()
    page.screenshot(path=str(screenshots / "workflow.png"), full_page=True)

    # A failed run offers a replay from its failed step.
    flaky = [{"name": "boom", "task": "system.fail", "payload": {"retryable": False}}]
    assert carol.api.post("/workflows", json={"name": "flaky", "steps": flaky}).status_code == 201
    failed_id = carol.api.post("/workflows/flaky/runs", json={}).json()["id"]
    eventually(lambda: carol.api.get(f"/workflows/runs/{failed_id}").json()["state"] == "failed")
    page.goto(f"{stack.base_url}/console/workflows/{failed_id}")
    page.locator('#step-boom[data-state="failed"]').wait_for()
    page.get_by_role("button", name="Replay from here").click()
    page.get_by_role("button", name="Confirm").click()
    eventually(
        lambda: carol.api.get("/audit-events", params={"action": "workflow.replayed"}).json()[
            "items"
        ]
    )
    assert errors == []


def test_a_superuser_sees_the_workers_and_suspends_a_tenant(
    stack: Stack, browser: Any, console_database: URL, screenshots: Path
) -> None:
    root = stack.operator("Platform")
    run_sql(
        console_database,
        "UPDATE users SET is_superuser = true WHERE email = :email",
        email=root.email,
    )
    tenant = stack.operator("Noisy")
    slug = tenant.api.get("/tenants/current").json()["slug"]
    busy = submit(tenant, "system.sleep", {"seconds": 60})
    eventually(lambda: tenant.api.get(f"/tasks/{busy}").json()["state"] == "started")
    errors: list[str] = []
    page = signed_in(browser, stack, root, errors)

    page.goto(f"{stack.base_url}/console/workers")
    workers = page.get_by_label("Workers", exact=True)
    workers.wait_for()
    [child] = psutil.Process(stack.worker.process.pid).children()
    assert workers.locator("td", has_text=f"(pid {child.pid})").count() == 1
    assert page.get_by_label("Queue depths").locator("td", has_text="default").count() == 1
    noisy = page.get_by_label("Runs per tenant").locator("tr", has_text=slug)
    assert noisy.locator("td").nth(1).inner_text() == "1"  # its sleeping run, in flight
    page.screenshot(path=str(screenshots / "workers.png"), full_page=True)

    # The tenant on a plan: its owner's usage page charts the month against the quota; the
    # superuser's lists the top spenders across tenants.
    plan = f"console-{uuid.uuid4().hex[:6]}"
    assert root.api.post("/plans", json={"name": plan, "runs_per_month": 100}).status_code == 201
    placed = root.api.patch(f"/tenants/{tenant.tenant_id}", json={"plan": plan})
    assert placed.status_code == 200, placed.text
    owner = signed_in(browser, stack, tenant, errors)
    owner.goto(f"{stack.base_url}/console/usage?meter=runs")
    quotas = owner.get_by_label("Quotas")
    quotas.wait_for()
    assert owner.locator("#usage-plan").inner_text() == plan
    used = quotas.locator("tr", has_text="runs_per_month").locator("td")
    assert (used.nth(1).inner_text(), used.nth(2).inner_text()) == ("1 runs", "100")
    chart = owner.get_by_role("img", name="Runs accepted by day")
    assert chart.locator("rect.bar").count() == 1  # today's run
    assert chart.locator("line.quota").count() == 1
    owner.screenshot(path=str(screenshots / "usage.png"), full_page=True)
    owner.context.close()
    page.goto(f"{stack.base_url}/console/usage")
    spender = page.get_by_label("Top spenders").locator("tr", has_text=slug)
    spender.wait_for()
    assert spender.locator("td").nth(3).inner_text() == "1"  # its runs

    page.goto(f"{stack.base_url}/console/tenants")
    # The page's list first: a fill made while it still renders can be lost (a CI run
    # submitted an empty search and saw every tenant).
    page.locator("tbody tr").first.wait_for()
    page.get_by_label("Find a tenant (name or slug)").fill(slug)
    page.get_by_role("button", name="Find").click()
    page.wait_for_url(re.compile(rf"search={re.escape(slug)}"))
    row = page.locator("tr", has_text=slug)
    row.wait_for()
    assert page.locator("tbody tr").count() == 1
    row.get_by_role("button", name="Suspend").click()
    page.get_by_role("button", name="Confirm").click()
    row.locator(".badge", has_text="suspended").wait_for()
    assert tenant.api.get("/tasks/").status_code == 403
    row.get_by_role("button", name="Activate").click()
    page.get_by_role("button", name="Confirm").click()
    row.locator(".badge", has_text="active").wait_for()
    assert tenant.api.get("/tasks/").status_code == 200

    # A member of two tenants switches between them; each shows its own runs.
    run_sql(
        console_database,
        "INSERT INTO memberships (id, user_id, tenant_id, role) SELECT gen_random_uuid(), id, "
        ":tenant, 'member' FROM users WHERE email = :email",
        tenant=tenant.tenant_id,
        email=root.email,
    )
    page.goto(f"{stack.base_url}/console/runs")
    switcher = page.get_by_label("Tenant", exact=True)
    switcher.select_option(slug)
    page.wait_for_url("**/console/runs")
    page.locator(f'a[href="/console/runs/{busy}"]').wait_for()
    assert switcher.input_value() == slug
    assert "(member)" in page.locator("header").inner_text()
    assert tenant.api.post(f"/tasks/{busy}/cancel").status_code == 200
    assert errors == []


def run_sql(database_url: URL, statement: str, **values: object) -> None:
    async def execute() -> None:
        engine = create_async_engine(database_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(text(statement), values)
        finally:
            await engine.dispose()

    # Playwright's synchronous API keeps an event loop of its own in this thread.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, execute()).result()


class _Attacker(BaseHTTPRequestHandler):
    """A page on another origin of the same site (127.0.0.1, another port) whose form posts to
    the console's API by itself when a signed-in victim opens it."""

    target = ""

    def do_GET(self) -> None:
        body = (
            "<!doctype html><title>Win a prize</title>"
            f'<form id="f" method="post" action="{self.target}"></form>'
            "<script>document.getElementById('f').submit()</script>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def test_a_forged_form_from_another_origin_changes_nothing(stack: Stack, browser: Any) -> None:
    victim = stack.operator("Victim")
    errors: list[str] = []
    page = signed_in(browser, stack, victim, errors)
    delayed = submit(victim, "system.echo", {"message": "keep me"}, countdown=600)
    handler = type(
        "Attacker", (_Attacker,), {"target": f"{stack.base_url}/api/v1/tasks/{delayed}/cancel"}
    )
    attacker = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    serving = threading.Thread(target=attacker.serve_forever, daemon=True)
    serving.start()
    answers: list[tuple[str, int]] = []
    page.on("response", lambda response: answers.append((response.url, response.status)))
    try:
        page.goto(f"http://127.0.0.1:{attacker.server_address[1]}/")
        eventually(lambda: any(url.endswith("/cancel") for url, _ in answers))
    finally:
        attacker.shutdown()
    # The session cookie went along (same site), and the gateway refused the request.
    assert [status for url, status in answers if url.endswith("/cancel")] == [403]
    assert victim.api.get(f"/tasks/{delayed}").json()["state"] == "scheduled"

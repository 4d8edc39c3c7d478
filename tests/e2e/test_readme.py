"""The README as a new user meets it, against `make run`'s standalone (`switchyard run
standalone` in a directory of its own, development, no SMTP_HOST):

- Every shell block runs as written, in the README's order, in one bash, as a reader pastes
  them into one terminal; the blocks that do not run here say why (`ELSEWHERE`), and a new
  block fails this test until it runs or says why. The shell stops at the first failed
  command: `-e -u -o pipefail`, and curl answers an HTTP error with a failure
  (`--fail-with-body`, bounded in time). Then the API shows what the blocks did.
- The links of account emails lead to the console's pages, which complete each flow in
  Chromium, reached from the development mailbox the console shows.

What differs from a reader's `make run` comes through settings the README names: `API_PORT`
(a free port), `RATE_LIMIT_AUTH` (the blocks sign in and follow links faster than the five a
minute a person does), `ZHIPUAI_API_KEY`/`ZHIPUAI_BASE_URL` (the Zhipu fake: `/answer` and
`/llm/chat` say they need a key) and the worker's and beat's metrics ports (free ones)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.zhipu import API_KEY, FakeZhipu
from tests.fixtures.browser import CHROMIUM, CHROMIUM_FLAGS, require_chromium
from tests.fixtures.processes import RunningRole, outside_pytest_temp, reap, spawn_role
from tests.fixtures.servers import free_port, unavailable

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.M | re.S)
# Blocks that do not run against a standalone here, by their first line, and where they run.
ELSEWHERE = {
    "make run": "starts the standalone this module runs the other blocks against (the "
    "Makefile's `run` is `uv run switchyard run standalone`, as started here)",
    "make test": "is the suite itself; .ci/run runs it",
    "make test-fast                              # unit tests and the task core in process "
    "(~1.5 min)": "development commands: the suite and `make lint` run in .ci/run; "
    "`make format` rewrites files",
    "make console-screenshots": "runs tests/e2e/test_console_in_browser.py, part of the suite",
    "cp .env.example .env                   # the infrastructure's credentials: change each "
    "one": "needs the images of a registry; the compose file is checked by "
    "tests/deploy/test_container_files.py with real Compose v2, the image's roles run in "
    "tests/deploy/test_image.py",
    "# As a platform superuser (ROOT: its bearer token):": "needs a platform superuser, "
    "which `make run` does not create (FIRST_SUPERUSER_*); these requests run in "
    "tests/integration/usage/test_quotas.py",
    "# As a platform superuser (ROOT): a tenant's deletion at beat's next look, no grace "
    "period": "needs a platform superuser (see above); deletion runs in "
    "tests/integration/tenants/test_export_and_deletion.py",
    "pnpm check:services": "runs in tests/deploy/test_check_services.py, with pnpm 9, 10 and "
    "the current release, against `make run`'s standalone and the test servers",
}
PRELUDE = """set -euo pipefail
curl() { command curl --fail-with-body --max-time 60 "$@"; }
"""
SCRIPT_SECONDS = 240
PASSWORD = "a long passphrase for the console"


def wait_for(read: Callable[[], Any], within: float = 30) -> Any:
    deadline = time.monotonic() + within
    while not (value := read()):
        assert time.monotonic() < deadline, "nothing within the time"
        time.sleep(0.2)
    return value


def blocks() -> list[str]:
    return SH_BLOCK.findall(README.read_text(encoding="utf-8"))


def first_line(block: str) -> str:
    return block.splitlines()[0]


@dataclass(frozen=True)
class Standalone:
    role: RunningRole
    directory: Path

    @property
    def api(self) -> str:
        return f"{self.role.base_url}/api/v1"

    def sign_in(self, email: str, password: str) -> dict[str, str]:
        answer = httpx.post(f"{self.api}/auth/login", json={"email": email, "password": password})
        assert answer.status_code == 200, answer.text
        return {"Authorization": f"Bearer {answer.json()['access_token']}"}


@pytest.fixture(scope="module")
def standalone(zhipu_server: FakeZhipu) -> Iterator[Standalone]:
    if shutil.which("jq") is None:
        unavailable("jq", "the README's blocks use jq (.ci/run installs it)")
    with outside_pytest_temp("readme") as directory:
        env = {
            "RATE_LIMIT_AUTH": "1000/minute",
            "ZHIPUAI_API_KEY": API_KEY,
            "ZHIPUAI_BASE_URL": zhipu_server.base_url,
            "WORKER_METRICS_PORT": str(free_port()),
            "BEAT_METRICS_PORT": str(free_port()),
        }
        role = spawn_role("standalone", directory, env, free_port())
        try:
            role.wait_healthy(timeout=180)
            yield Standalone(role, directory)
        finally:
            reap(role, grace=60)


def test_every_shell_block_runs_or_says_where_it_does() -> None:
    found = {first_line(block) for block in blocks()}
    assert set(ELSEWHERE) <= found, "a block ELSEWHERE names is gone from the README"
    assert len([b for b in blocks() if first_line(b) not in ELSEWHERE]) >= 6


def test_the_readme_blocks_run_as_written_against_standalone(standalone: Standalone) -> None:
    runnable = [block for block in blocks() if first_line(block) not in ELSEWHERE]
    script = PRELUDE + "\n".join(
        f"echo '--- block {n}: {first_line(block)[:60]}' >&2\nset -x\n{block}set +x\n"
        for n, block in enumerate(runnable, 1)
    )
    port = standalone.role.base_url.rsplit(":", 1)[1]
    ran = subprocess.run(
        ["bash", "-c", script],
        check=False,
        cwd=standalone.directory,
        env={
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(standalone.directory),
            "API_PORT": port,
        },
        capture_output=True,
        text=True,
        timeout=SCRIPT_SECONDS,
    )
    assert ran.returncode == 0, f"{ran.stderr[-4000:]}\n--- stdout\n{ran.stdout[-2000:]}"
    assert f"--- block {len(runnable)}" in ran.stderr

    # What the blocks did, as the API shows it.
    api = standalone.api
    ada = standalone.sign_in("ada@example.com", "a new long passphrase")  # the reset's password
    refused = httpx.post(
        f"{api}/auth/login", json={"email": "ada@example.com", "password": "a long passphrase"}
    )
    assert refused.status_code == 401
    members = httpx.get(f"{api}/members", headers=ada).json()["items"]
    assert [(m["email"], m["role"]) for m in members] == [("ada@example.com", "owner")]
    invitations = {
        i["email"]: i["status"]
        for i in httpx.get(f"{api}/invitations", headers=ada).json()["items"]
    }
    assert invitations == {"bob@example.com": "accepted", "dave@example.com": "revoked"}
    assert "cafeteria" in ran.stdout  # the search's snippet
    assert httpx.get(f"{api}/documents", headers=ada).json()["items"] == []  # deleted last

    runs = httpx.get(f"{api}/tasks/", headers=ada, params={"limit": 200}).json()["items"]
    echoes = [r for r in runs if r["payload"] == {"message": "hello"}]
    assert len(echoes) == 1  # one run for the key order-42
    assert echoes[0]["state"] == "succeeded"
    assert echoes[0]["result"] == {"message": "hello"}
    cancelled = [r for r in runs if r["state"] == "cancelled"]
    assert [r["task"] for r in cancelled] == ["system.echo"]  # the heartbeat's delayed run
    replays = [r for r in runs if r.get("replay_of")]
    assert [r["task"] for r in replays] == ["system.fail"]
    # The first dead letter was deleted; the replay failed as its task does, and is one now.
    letters = wait_for(lambda: httpx.get(f"{api}/tasks/dead-letters", headers=ada).json())
    assert [letter["task_id"] for letter in letters] == [replays[0]["task_id"]]
    assert httpx.get(f"{api}/api-keys", headers=ada).json() == []  # the one key, revoked

    def used_so_far() -> tuple[dict[str, Any], dict[tuple[str, str], int]] | None:
        # Counted uses (searches, an LLM call's tokens) are written within a second of the
        # use (services.usage.FLUSH_SECONDS), not with the request: wait for them.
        usage = httpx.get(f"{api}/usage", headers=ada).json()
        used = {(t["meter"], t["subject"]): t["quantity"] for t in usage["totals"]}
        if used.get(("search.queries", "search"), 0) < 2:
            return None
        return usage, used

    usage, used = wait_for(used_so_far)
    # The echo and the bulk's (the delayed ones have not run), and the workflow's five (its
    # first step, one per item of its map, its last); the failure and its replay.
    assert used[("run.attempts", "system.echo")] == 2 + 5
    assert used[("run.attempts", "system.fail")] == 2
    assert used[("search.queries", "search")] >= 2  # the search, and the answer's retrieval
    assert used[("llm.completion_tokens", "answer/glm-4-flash")] > 0  # the fake's tokens
    assert usage["stocks"] == {"documents": 0, "stored.bytes": 0}  # uploaded, then deleted
    audit = httpx.get(f"{api}/audit-events", headers=ada, params={"limit": 200}).json()["items"]
    actions = {event["action"] for event in audit}
    assert {"member.role_changed", "invitation.accepted", "oauth_client.revoked"} <= actions


# ---- the pages account emails link to, in Chromium


@pytest.fixture(scope="module")
def page(standalone: Standalone) -> Iterator[Any]:
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        context = chromium.new_context(base_url=standalone.role.base_url)
        yield context.new_page()
        chromium.close()


def open_link_from_the_mailbox(page: Any, to: str, subject: str) -> None:
    """The console's mailbox, refreshed until the message is there; then its link."""
    from playwright.sync_api import expect

    page.goto("/console/mailbox")
    deadline = time.monotonic() + 30
    message = page.locator("ol.mailbox > li").filter(has_text=f"To {to}").filter(has_text=subject)
    while message.count() == 0:
        assert time.monotonic() < deadline, f"no email to {to} in the mailbox"
        page.get_by_role("button", name="Refresh").click()
        page.wait_for_timeout(200)
    link = message.first.locator("pre a")
    expect(link).to_have_count(1)
    link.click()


def test_an_invitation_is_accepted_from_the_mailbox_in_the_browser(
    standalone: Standalone, page: Any
) -> None:
    from playwright.sync_api import expect

    owner = f"carol-{uuid.uuid4().hex[:6]}@example.com"
    invitee = f"erin-{uuid.uuid4().hex[:6]}@example.com"
    api = standalone.api
    registered = httpx.post(
        f"{api}/auth/register",
        json={"email": owner, "password": PASSWORD, "tenant_name": "Carol's"},
    )
    assert registered.status_code == 201
    invited = httpx.post(
        f"{api}/invitations", json={"email": invitee}, headers=standalone.sign_in(owner, PASSWORD)
    )
    assert invited.status_code == 201

    # Signed out, the sign-in page leads to the development mailbox (no SMTP_HOST here).
    page.goto("/console/sign-in")
    page.locator("#mailbox-hint a").click()
    expect(page).to_have_url(re.compile(r"/console/mailbox$"))
    open_link_from_the_mailbox(page, invitee, "invited")
    expect(page).to_have_url(re.compile(r"/console/accept-invitation$"))  # the token is taken out
    page.get_by_label("Password (new accounts only)").fill(PASSWORD)
    page.get_by_role("button", name="Join").click()
    expect(page.locator("#done")).to_contain_text("You joined Carol's as member")

    page.get_by_role("link", name="Sign in").click()
    page.get_by_label("Email").fill(invitee)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/console/runs$"))
    expect(page.locator("#top")).to_contain_text("Carol's")
    page.locator("#sign-out").click()
    expect(page).to_have_url(re.compile(r"/console/sign-in$"))


def test_a_forgotten_password_is_reset_from_the_mailbox_in_the_browser(
    standalone: Standalone, page: Any
) -> None:
    from playwright.sync_api import expect

    email = f"frank-{uuid.uuid4().hex[:6]}@example.com"
    created = httpx.post(
        f"{standalone.api}/auth/register",
        json={"email": email, "password": PASSWORD, "tenant_name": "Frank's"},
    )
    assert created.status_code == 201

    page.goto("/console/sign-in")
    page.get_by_role("link", name="Forgot your password?").click()
    page.get_by_label("Email").fill(email)
    page.get_by_role("button", name="Email me a link").click()
    expect(page.locator("#done")).to_contain_text("an email is on its way")
    page.locator("#done #mailbox-hint a").click()
    open_link_from_the_mailbox(page, email, "Reset your")
    expect(page).to_have_url(re.compile(r"/console/reset-password$"))
    page.get_by_label("Password", exact=True).fill("a new password of frank")
    page.get_by_label("The same password again").fill("not the same password")
    page.get_by_role("button", name="Change the password").click()
    expect(page.get_by_role("alert")).to_contain_text("The two passwords differ")
    page.get_by_label("The same password again").fill("a new password of frank")
    page.get_by_role("button", name="Change the password").click()
    expect(page.locator("#done")).to_contain_text("Your password is changed")
    standalone.sign_in(email, "a new password of frank")

    # The address confirmed from the link emailed at sign-up; the link works once.
    open_link_from_the_mailbox(page, email, "Confirm your email")
    expect(page).to_have_url(re.compile(r"/console/verify-email$"))
    page.get_by_role("button", name="Confirm my address").click()
    expect(page.locator("#done")).to_contain_text("Your address is confirmed")
    open_link_from_the_mailbox(page, email, "Confirm your email")
    page.get_by_role("button", name="Confirm my address").click()
    expect(page.get_by_role("alert")).to_contain_text("invalid or expired")

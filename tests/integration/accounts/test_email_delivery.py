"""Account email is a task like any other: an SMTP server that is down is retried, and the
message goes out exactly once when it is back; the run shows what happened."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.controller import Controller

from switchyard.api.app import create_app
from tests.fixtures.accounts import sign_up
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.mail import JWT_SECRET, Mailbox, SmtpCollector
from tests.fixtures.servers import free_port
from tests.fixtures.tasks import DELIVERY_LIMIT, RoleStarter, start_worker_on


async def email_run(
    client: httpx.AsyncClient, headers: dict[str, str], *states: str
) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        page = await client.get(
            "/api/v1/tasks/", params={"task": "accounts.send_email"}, headers=headers
        )
        runs = page.json()["items"]
        if runs and runs[0]["state"] in states:
            return runs[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no email run in {states}: {runs}")


async def test_an_smtp_server_that_is_down_is_retried_and_the_message_goes_out_once(
    make_settings: SettingsFactory,
    own_broker: str,
    start_role: RoleStarter,
    task_env: dict[str, str],
    tmp_path: Path,
) -> None:
    mailbox = Mailbox("127.0.0.1", free_port())  # nothing listens there yet
    start_worker_on(
        start_role, task_env, own_broker, tmp_path / "worker", JWT_SECRET=JWT_SECRET, **mailbox.env
    )
    settings = make_settings(
        celery_broker_url=own_broker, task_delivery_limit=DELIVERY_LIMIT, **mailbox.settings
    )
    async with running(create_app(settings)) as client:
        owner = await sign_up(client, "Retries")
        invitee = f"late-{uuid.uuid4().hex[:8]}@example.com"
        invited = await client.post(
            "/api/v1/invitations", json={"email": invitee}, headers=owner.headers
        )
        assert invited.status_code == 201
        retrying = await email_run(client, owner.headers, "retrying")
        assert retrying["payload"] == {"kind": "invitation", "token_id": invited.json()["id"]}
        assert "token=" not in str(retrying)
        controller = Controller(SmtpCollector(mailbox), hostname=mailbox.host, port=mailbox.port)
        controller.start()
        try:
            (message,) = await mailbox.wait_for(invitee, within=60)
            done = await email_run(client, owner.headers, "succeeded")
            assert done["attempts"] >= 2
            assert done["result"] == {"sent": True, "kind": "invitation"}
            assert len(mailbox.to(invitee)) == 1
            assert "invited" in message["Subject"]
        finally:
            controller.stop()

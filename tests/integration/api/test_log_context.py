"""Gateway log lines carry the request id, the role and, once the caller is known, the tenant."""

from __future__ import annotations

import json
import logging
import logging.config

import pytest

from switchyard.api.app import create_app
from switchyard.logging import RequestContextFilter, logging_config
from tests.fixtures.accounts import sign_up
from tests.fixtures.gateway import SettingsFactory, running


async def test_request_lines_carry_request_id_tenant_and_route(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(RequestContextFilter("api-gateway"))
    with caplog.at_level(logging.INFO, logger="switchyard.access"):
        async with running(create_app(make_settings())) as client:
            account = await sign_up(client)
            await client.get(
                "/api/v1/tasks/registered",
                headers={**account.headers, "X-Request-ID": "trace-me-1"},
            )
            await client.get("/health/live", headers={"X-Request-ID": "anonymous-2"})
    lines = {
        record.__dict__["request_id"]: record.__dict__
        for record in caplog.records
        if record.msg == "request"
    }
    known = lines["trace-me-1"]
    assert known["tenant_id"] == str(account.tenant_id)
    assert known["route"] == "/api/v1/tasks/registered"
    assert known["service_type"] == "api-gateway"
    anonymous = lines["anonymous-2"]
    assert "tenant_id" not in anonymous  # no caller, no tenant (nor a stale one)


def test_every_line_is_one_json_object_with_the_context(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logging.config.dictConfig(logging_config("INFO", "worker"))
    try:
        logging.getLogger("celery.app.trace").info(
            "Task %(name)s[%(id)s] succeeded", {"name": "system.echo", "id": "abc"}
        )
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["message"] == "Task system.echo[abc] succeeded"
    assert record["task_id"] == "abc"
    assert record["service_type"] == "worker"
    assert record["logger"] == "celery.app.trace"

"""Error reporting to Sentry: sent when SENTRY_DSN is set, with secrets scrubbed first."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sentry_sdk

from switchyard.api.app import create_app
from switchyard.reporting import FILTERED, init_reporting, scrub_text
from tests.fixtures.gateway import SettingsFactory, running

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
API_KEY = "sy_" + "k" * 40
DB_PASSWORD = "hunter2-db-password"
REFRESH = "0b8f1f0e-5a55-4d1e-9d7a-2c1e6f1d2a3b." + "r" * 43


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"Authorization: Bearer {JWT}", JWT),
        (f"token {JWT} was rejected", JWT),
        (f"key {API_KEY} unknown", API_KEY),
        (f"connect to postgresql://app:{DB_PASSWORD}@db:5432/app failed", DB_PASSWORD),
        (f"password={DB_PASSWORD}&user=x", DB_PASSWORD),
        (f'{{"refresh_token": "{REFRESH}"}}', REFRESH),
    ],
)
def test_secrets_are_masked_in_free_text(text: str, secret: str) -> None:
    masked = scrub_text(text)
    assert secret not in masked
    assert FILTERED in masked


def test_text_without_secrets_is_left_alone() -> None:
    text = "run 5c1a failed: ValueError: payload does not match system.echo"
    assert scrub_text(text) == text


def test_reporting_is_off_without_a_dsn(make_settings: SettingsFactory) -> None:
    assert init_reporting(make_settings(), "api-gateway") is False


class _Ingest(BaseHTTPRequestHandler):
    received: list[bytes]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        elif encoding == "br":
            import brotli  # type: ignore[import-not-found]

            body = brotli.decompress(body)
        self.received.append(body)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def sentry_ingest() -> Iterator[tuple[str, list[bytes]]]:
    """A stand-in for Sentry's ingest endpoint that keeps every envelope it receives."""
    received: list[bytes] = []
    handler = type("Ingest", (_Ingest,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://publickey@127.0.0.1:{server.server_address[1]}/42", received
    server.shutdown()
    server.server_close()
    sentry_sdk.get_client().close()
    # No client from here on: `init()` without a DSN would still enable Sentry's Celery
    # integration, which adds its headers to every message later tests publish.
    sentry_sdk.get_global_scope().set_client(None)


def events(received: list[bytes]) -> list[dict[str, Any]]:
    found = []
    for envelope in received:
        for line in envelope.splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict) and "exception" in item:
                found.append(item)
    return found


async def test_an_unhandled_error_is_reported_without_secrets(
    make_settings: SettingsFactory, sentry_ingest: tuple[str, list[bytes]]
) -> None:
    dsn, received = sentry_ingest
    settings = make_settings(sentry_dsn=dsn)
    assert init_reporting(settings, "api-gateway") is True
    app = create_app(settings)

    async def explode() -> None:
        raise RuntimeError(
            f"could not reach postgresql://app:{DB_PASSWORD}@db/app with Bearer {JWT}"
        )

    app.add_api_route("/explode", explode)
    async with running(app) as client:
        answer = await client.get(
            "/explode",
            headers={"Authorization": f"Bearer {JWT}", "X-API-Key": API_KEY, "Cookie": f"s={JWT}"},
        )
    assert answer.status_code == 500
    assert DB_PASSWORD not in answer.text
    sentry_sdk.flush(timeout=5)
    for _ in range(100):  # the SDK sends from a thread of its own; 10 s at most
        if events(received):
            break
        await asyncio.sleep(0.1)

    reported = events(received)
    assert reported, "no event reached the ingest endpoint"
    kinds = {value["type"] for event in reported for value in event["exception"]["values"]}
    assert "RuntimeError" in kinds
    assert {event["tags"]["service_type"] for event in reported} == {"api-gateway"}
    raw = b"\n".join(received).decode()
    for secret in (JWT, API_KEY, DB_PASSWORD):
        assert secret not in raw
    assert FILTERED in raw

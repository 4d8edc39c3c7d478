"""Data sources: URL checks and redaction, encryption with key rotation, the SSRF guard."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from switchyard.datasources import connect, guard
from switchyard.datasources.crypto import KEY_FILE, DataSourceCipher, UndecryptableError
from switchyard.settings import Settings


@pytest.mark.parametrize(
    ("raw", "kind", "shown"),
    [
        (
            "postgresql://app:pw@db.internal:5433/sales",
            "postgresql",
            "postgresql://app:***@db.internal:5433/sales",
        ),
        ("postgres://app:pw@db/sales", "postgresql", "postgres://app:***@db/sales"),
        ("mysql+asyncmy://root:pw@mysql/x", "mysql", "mysql+asyncmy://root:***@mysql/x"),
        ("mariadb://u@maria/x", "mysql", "mariadb://u@maria/x"),
    ],
)
def test_urls_parse_and_redact(raw: str, kind: str, shown: str) -> None:
    parsed = connect.parse(raw)
    assert parsed.kind == kind
    assert parsed.redacted == shown


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("sqlite:///tmp/x.db", "postgresql:// or mysql://"),
        ("postgresql:///db", "must name a host"),
        ("postgresql://db.internal/x", "must name a user"),
        ("not a url at all", "is not a database URL"),
        ("postgresql://u:p@h/" + "x" * 3000, "at most 2048"),
    ],
)
def test_bad_urls_are_refused_without_echoing_them(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as refused:
        connect.parse(raw)
    assert raw not in str(refused.value)


def test_cipher_rotation_newest_encrypts_all_decrypt(tmp_path: Path) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    before = DataSourceCipher.from_settings(Settings(data_source_keys=old, var_dir=tmp_path))
    token = before.encrypt("postgresql://u:secret@h/db")
    assert b"secret" not in token

    after = DataSourceCipher.from_settings(
        Settings(data_source_keys=f"{new},{old}", var_dir=tmp_path)
    )
    assert after.decrypt(token) == "postgresql://u:secret@h/db"
    fresh = after.encrypt("x")
    assert Fernet(new.encode()).decrypt(fresh) == b"x"  # the first key encrypts
    rotated = after.rotate(token)
    only_new = DataSourceCipher.from_settings(Settings(data_source_keys=new, var_dir=tmp_path))
    assert only_new.decrypt(rotated) == "postgresql://u:secret@h/db"
    with pytest.raises(UndecryptableError):
        only_new.decrypt(token)
    assert not (tmp_path / KEY_FILE).exists()


def test_without_keys_development_uses_one_generated_key_file(tmp_path: Path) -> None:
    first = DataSourceCipher.from_settings(Settings(var_dir=tmp_path))
    second = DataSourceCipher.from_settings(Settings(var_dir=tmp_path))
    assert second.decrypt(first.encrypt("same")) == "same"
    assert os.stat(tmp_path / KEY_FILE).st_mode & 0o777 == 0o600


def test_keys_are_checked_and_required_in_production() -> None:
    with pytest.raises(ValueError, match="key 2 is not a Fernet key"):
        Settings(data_source_keys=f"{Fernet.generate_key().decode()},short")
    problems = Settings(environment="production").production_problems()
    assert any(p.startswith("DATA_SOURCE_KEYS:") for p in problems)
    key = Fernet.generate_key().decode()
    assert key in Settings(data_source_keys=key).secret_values()


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.169.254", "metadata"),
        ("169.254.10.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
    ],
)
def test_guard_refuses_local_and_metadata_addresses(address: str, reason: str) -> None:
    found = guard.refusal(ipaddress.ip_address(address))
    assert found is not None
    assert reason in found


@pytest.mark.parametrize(
    "address", ["10.0.0.5", "192.168.1.20", "172.16.3.4", "8.8.8.8", "2001:db8::1"]
)
def test_guard_allows_private_and_public_addresses(address: str) -> None:
    assert guard.refusal(ipaddress.ip_address(address)) is None


async def test_resolution_is_checked_before_any_connection() -> None:
    with pytest.raises(guard.RefusedHostError, match="loopback"):
        await guard.resolve("localhost", 5432, allow_local=False)
    assert await guard.resolve("127.0.0.1", 5432, allow_local=True) == "127.0.0.1"
    with pytest.raises(guard.UnresolvableHostError):
        await guard.resolve("no-such-host.invalid", 5432, allow_local=False)


async def test_probe_reports_refusals_and_failures_as_outcomes() -> None:
    refused = await connect.probe(
        "postgresql://u:pw@169.254.169.254/db", allow_local=False, seconds=2
    )
    assert refused["ok"] is False
    assert refused["refused"] is True
    assert "metadata" in refused["error"]
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    closed = await connect.probe(
        f"postgresql://u:topsecret@127.0.0.1:{port}/db", allow_local=True, seconds=2
    )
    assert closed["ok"] is False
    assert "refused" not in closed
    assert "topsecret" not in str(closed)

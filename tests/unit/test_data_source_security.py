"""Data sources: URL checks and redaction, encryption with key rotation, the SSRF guard."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from switchyard.datasources import connect, guard
from switchyard.datasources.crypto import KEY_FILE, DataSourceCipher, UndecryptableError
from switchyard.settings import Environment, Settings


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
        (
            "postgresql://u@db/x?password=qs-secret&sslmode=require",
            "postgresql",
            "postgresql://u@db/x?password=***&sslmode=require",
        ),
        (
            "postgresql://u:pw@db/x?sslpassword=key-pass&sslkey=/k.pem&application_name=a",
            "postgresql",
            "postgresql://u:***@db/x?application_name=a&sslkey=***&sslpassword=***",
        ),
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
        ("postgresql://u:p@h:0/db", "port from 1 to 65535"),
        ("postgresql://u:p@h:99999/db", "port from 1 to 65535"),
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
        ("0.1.2.3", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "broadcast"),
        # IPv6 addresses that carry a refused IPv4 address
        ("64:ff9b::7f00:1", "loopback"),
        ("64:ff9b::a9fe:a9fe", "metadata"),
        ("64:ff9b:1::a9fe:a9fe", "metadata"),
        ("2002:7f00:1::", "loopback"),
        ("2002:a9fe:a9fe::1", "metadata"),
        ("::127.0.0.1", "loopback"),
        ("::169.254.169.254", "metadata"),
        ("::ffff:0.0.0.0", "unspecified"),
    ],
)
def test_guard_refuses_local_and_metadata_addresses(address: str, reason: str) -> None:
    found = guard.refusal(ipaddress.ip_address(address))
    assert found is not None
    assert reason in found


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.5",
        "192.168.1.20",
        "172.16.3.4",
        "8.8.8.8",
        "2001:db8::1",
        "64:ff9b::808:808",  # NAT64 of a public address
        "2002:808:808::1",  # 6to4 of a public address
    ],
)
def test_guard_allows_private_and_public_addresses(address: str) -> None:
    assert guard.refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "192.168.0.1",
        "172.16.0.1",
        "100.64.0.1",  # carrier-grade NAT
        "198.18.0.1",  # benchmarking
        "240.0.0.1",  # reserved
        "fd12:3456::1",  # unique local
        "2001:db8::1",  # documentation
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "::ffff:192.168.0.1",
    ],
)
def test_without_private_networks_non_public_addresses_are_refused(address: str) -> None:
    found = guard.refusal(ipaddress.ip_address(address), guard.Reach(private=False))
    assert found is not None
    assert "non-public" in found


def test_named_networks_are_reachable_and_nothing_else_non_public() -> None:
    reach = guard.Reach(
        private=False,
        networks=(ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("169.254.0.0/16")),
    )
    assert guard.refusal(ipaddress.ip_address("10.1.2.3"), reach) is None
    assert guard.refusal(ipaddress.ip_address("10.2.0.1"), reach) is not None
    assert guard.refusal(ipaddress.ip_address("8.8.8.8"), reach) is None
    assert guard.refusal(ipaddress.ip_address("2606:4700::1111"), reach) is None
    # A named network never opens a cloud metadata address.
    assert "metadata" in str(guard.refusal(ipaddress.ip_address("169.254.169.254"), reach))


def test_private_networks_are_refused_by_default_in_production_only() -> None:
    production = Settings.model_construct(
        environment=Environment.PRODUCTION,
        data_source_allow_local_hosts=False,
        data_source_allow_private_networks=None,
        data_source_allowed_networks=["10.20.0.0/16"],
    )
    reach = guard.Reach.of(production)
    assert reach.private is False
    assert reach.networks == (ipaddress.ip_network("10.20.0.0/16"),)
    development = production.model_copy(update={"environment": Environment.DEVELOPMENT})
    assert guard.Reach.of(development).private is True
    opened = production.model_copy(update={"data_source_allow_private_networks": True})
    assert guard.Reach.of(opened).private is True
    with pytest.raises(ValueError, match="not an IP address or network"):
        Settings(_env_file=None, data_source_allowed_networks="10.0.0.0/8,intranet")


async def test_resolution_is_checked_before_any_connection() -> None:
    with pytest.raises(guard.RefusedHostError, match="loopback") as refused:
        await guard.resolve("localhost", 5432, reach=guard.Reach())
    # What a name resolved to is not disclosed.
    assert "127.0.0.1" not in str(refused.value)
    assert "::1" not in str(refused.value)
    assert await guard.resolve("127.0.0.1", 5432, reach=guard.Reach(local=True)) == "127.0.0.1"
    with pytest.raises(guard.UnresolvableHostError):
        await guard.resolve("no-such-host.invalid", 5432, reach=guard.Reach())


async def test_probe_reports_refusals_and_failures_as_outcomes() -> None:
    refused = await connect.probe(
        "postgresql://u:pw@169.254.169.254/db", reach=guard.Reach(), seconds=2
    )
    assert refused["ok"] is False
    assert refused["refused"] is True
    assert "metadata" in refused["error"]
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    closed = await connect.probe(
        f"postgresql://u:topsecret@127.0.0.1:{port}/db", reach=guard.Reach(local=True), seconds=2
    )
    assert closed["ok"] is False
    assert "refused" not in closed
    assert "topsecret" not in str(closed)


async def test_a_closed_a_silent_and_a_foreign_port_are_reported_alike() -> None:
    """A connectivity test must not tell an open port from a closed one."""

    async def foreign(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")  # another service answers, then hangs up
        await writer.drain()
        writer.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, never answers

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    servers = [await asyncio.start_server(h, "127.0.0.1", 0) for h in (foreign, silent)]
    ports = [closed_port, *(server.sockets[0].getsockname()[1] for server in servers)]
    try:
        for kind in ("postgresql", "mysql"):
            errors = set()
            for port in ports:
                outcome = await connect.probe(
                    f"{kind}://u:pw@127.0.0.1:{port}/db", reach=guard.Reach(local=True), seconds=1
                )
                assert outcome["ok"] is False
                errors.add(outcome["error"].replace(str(port), "PORT"))
            assert len(errors) == 1, errors
            assert "answered" in errors.pop()
    finally:
        for server in servers:
            server.close()


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        # A short password's letters elsewhere in the message stay as they are.
        ('database "alpha" does not exist', 'database "alpha" does not exist'),
        (
            "could not connect to postgresql://u:a@db/x",
            "could not connect to postgresql://u:***@db/x",
        ),
        ("bad password=a given", "bad password=*** given"),
        ("auth failed (password: 'x y z')", "auth failed (password: ***)"),
        ("token=abc, user=u", "token=*** user=u"),
    ],
)
def test_driver_messages_are_redacted_by_form_not_by_the_passwords_letters(
    message: str, shown: str
) -> None:
    assert connect._scrub(message) == shown


class PasswordRecorder:
    """A PostgreSQL server that asks for a cleartext password and records what it is sent."""

    def __init__(self) -> None:
        self.passwords: list[bytes] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length = int.from_bytes(await reader.readexactly(4), "big")
                body = await reader.readexactly(length - 4)
                if body[:4] == (80877103).to_bytes(4, "big"):  # SSLRequest: no TLS here
                    writer.write(b"N")
                    continue
                break
            writer.write(b"R" + (8).to_bytes(4, "big") + (3).to_bytes(4, "big"))
            await writer.drain()
            kind = await reader.readexactly(1)
            length = int.from_bytes(await reader.readexactly(4), "big")
            payload = await reader.readexactly(length - 4)
            if kind == b"p":
                self.passwords.append(payload.rstrip(b"\0"))
            fields = b"SFATAL\0C28P01\0Mpassword authentication failed\0\0"
            writer.write(b"E" + (len(fields) + 4).to_bytes(4, "big") + fields)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_a_connection_test_sends_only_the_stored_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No PGPASSWORD, .pgpass or PGPASSFILE of the worker reaches the tenant's host."""
    passfile = tmp_path / ".pgpass"
    passfile.write_text("*:*:*:*:from-the-pgpass-file\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSWORD", "the-workers-own-password")
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    monkeypatch.setenv("HOME", str(tmp_path))
    recorder = PasswordRecorder()
    server = await asyncio.start_server(recorder.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        without = await connect.probe(
            f"postgresql://tenant@127.0.0.1:{port}/db", reach=guard.Reach(local=True), seconds=5
        )
        stored = await connect.probe(
            f"postgresql://tenant:stored-pw@127.0.0.1:{port}/db",
            reach=guard.Reach(local=True),
            seconds=5,
        )
    finally:
        server.close()
        await server.wait_closed()
    assert b"the-workers-own-password" not in recorder.passwords
    assert b"from-the-pgpass-file" not in recorder.passwords
    assert b"stored-pw" in recorder.passwords
    assert without["ok"] is False
    assert stored["ok"] is False
    for outcome in (without, stored):
        shown = str(outcome)
        assert "the-workers-own-password" not in shown
        assert "from-the-pgpass-file" not in shown
        assert "stored-pw" not in shown

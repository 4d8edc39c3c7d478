from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import asyncpg
from sqlalchemy.engine import URL

from tests.fixtures.postgres import DatabaseFactory
from tests.fixtures.processes import SWITCHYARD, said, switchyard_env
from tests.fixtures.servers import free_port

VALID = "valid roles: api-gateway, worker, beat, migrate, standalone, backup"


def switchyard(
    *args: str, cwd: Path, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SWITCHYARD, *args],
        cwd=cwd,
        env=switchyard_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def dsn(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = switchyard("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "run" in result.stdout
    assert "healthcheck" in result.stdout


def test_missing_role_exits_2_with_one_line_naming_the_roles(tmp_path: Path) -> None:
    result = switchyard("run", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert VALID in result.stderr


def test_unknown_role_exits_2_with_one_line_naming_the_roles(tmp_path: Path) -> None:
    for result in (
        switchyard("run", "scheduler", cwd=tmp_path),
        switchyard("run", cwd=tmp_path, SERVICE_TYPE="scheduler"),
    ):
        assert result.returncode == 2
        assert said(result.stderr) == [f"switchyard: unknown role 'scheduler'; {VALID}"]


def test_production_with_default_secrets_refuses_to_start(tmp_path: Path) -> None:
    result = switchyard(
        "run", "api-gateway", cwd=tmp_path, ENVIRONMENT="production", JWT_SECRET="changethis"
    )
    assert result.returncode == 78
    assert said(result.stderr) == [
        "switchyard: configuration error: JWT_SECRET: a known default, with which anyone can "
        "sign tokens; set a random secret (or leave it unset outside production)",
        "switchyard: configuration error: DATABASE_URL: missing; set the PostgreSQL URL",
        "switchyard: configuration error: METRICS_TOKEN: missing; in production every role's "
        "/metrics (and the full /health report) needs it",
        "switchyard: configuration error: DATA_SOURCE_KEYS: missing; set one or more Fernet keys "
        "(newest first) to encrypt data source URLs",
    ]


def test_invalid_setting_is_one_line_without_traceback(tmp_path: Path) -> None:
    result = switchyard("run", "api-gateway", cwd=tmp_path, API_PORT="eighty")
    assert result.returncode == 78
    assert len(result.stderr.splitlines()) == 1
    assert said(result.stderr)[0].startswith("switchyard: configuration error: API_PORT: ")
    assert "Traceback" not in result.stderr
    # Not a terminal: a JSON line like every other log line.
    record = json.loads(result.stderr)
    assert (record["level"], record["logger"], record["service_type"]) == (
        "ERROR",
        "switchyard.cli",
        "api-gateway",
    )


def test_a_production_gateway_requires_redis_and_a_broker(tmp_path: Path) -> None:
    result = switchyard(
        "run",
        "api-gateway",
        cwd=tmp_path,
        ENVIRONMENT="production",
        DATABASE_URL="postgresql://app:a-real-password@127.0.0.1:1/app",
        JWT_SECRET="s" * 64,
        METRICS_TOKEN="a metrics token",
        DATA_SOURCE_KEYS="x5ZJpQWcZpEtIbTbpTAK7pUZZpzGg5DXCi0ZdJmp3Jk=",
        FIRST_SUPERUSER_EMAIL="",
    )
    assert result.returncode == 78, result.stderr
    assert said(result.stderr) == [
        "switchyard: configuration error: REDIS_URL: required by the api-gateway role in "
        "production",
        "switchyard: configuration error: CELERY_BROKER_URL: required by the api-gateway role "
        "in production",
    ]


def test_every_missing_setting_of_a_role_is_named_at_once(tmp_path: Path) -> None:
    result = switchyard("run", "api-gateway", cwd=tmp_path, CHROMA_HOST="")
    assert result.returncode == 78
    assert [line.split(":")[2].strip() for line in said(result.stderr)] == [
        "DATABASE_URL",
        "CHROMA_HOST",
    ]


def test_a_superuser_address_sign_in_refuses_stops_migrate_before_it_is_created(
    tmp_path: Path,
) -> None:
    """admin@switchyard.local would be created and then never sign in (the API refuses
    special-use domains): refused as configuration, exit 78, naming the setting."""
    result = switchyard(
        "run",
        "migrate",
        cwd=tmp_path,
        FIRST_SUPERUSER_EMAIL="admin@switchyard.local",
        FIRST_SUPERUSER_PASSWORD="a long enough password",
    )
    assert result.returncode == 78, result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert said(result.stderr)[0].startswith(
        "switchyard: configuration error: FIRST_SUPERUSER_EMAIL: is not an address sign-in accepts"
    )


def test_gateway_without_database_url_refuses_to_start(tmp_path: Path) -> None:
    result = switchyard("run", "api-gateway", cwd=tmp_path)
    assert result.returncode == 78
    assert said(result.stderr)[-1] == (
        "switchyard: configuration error: DATABASE_URL: required by the api-gateway role"
    )


def test_env_files_in_the_working_directory_are_read(tmp_path: Path) -> None:
    (tmp_path / ".env.infrastructure").write_text("SERVICE_TYPE=ignored\nAPI_PORT=1\n")
    (tmp_path / ".env.backend").write_text("API_PORT=not-a-port\n")
    result = switchyard("run", "migrate", cwd=tmp_path)
    assert result.returncode == 78
    assert "API_PORT" in result.stderr


def test_healthcheck_fails_when_nothing_listens(tmp_path: Path) -> None:
    result = switchyard(
        "healthcheck", cwd=tmp_path, SERVICE_TYPE="api-gateway", API_PORT=str(free_port())
    )
    assert result.returncode == 1
    assert "/health/live" in result.stderr


def test_healthcheck_of_migrate_is_its_exit_code(tmp_path: Path) -> None:
    result = switchyard("healthcheck", "migrate", cwd=tmp_path)
    assert result.returncode == 0


async def test_migrate_role_upgrades_and_is_safe_to_repeat_concurrently(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    url = dsn(await create_database())

    async def migrate_process() -> tuple[int, bytes]:
        process = await asyncio.create_subprocess_exec(
            SWITCHYARD,
            "run",
            "migrate",
            cwd=tmp_path,
            env=switchyard_env(
                DATABASE_URL=url,
                FIRST_SUPERUSER_EMAIL="root@example.com",
                FIRST_SUPERUSER_PASSWORD="a-long-superuser-password",
            ),
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
        return process.returncode or 0, stderr

    outcomes = await asyncio.gather(migrate_process(), migrate_process())
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    code, stderr = await migrate_process()
    assert code == 0
    assert b'"message": "database migrated"' in stderr
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        superusers = await connection.fetch(
            "SELECT u.email, m.role FROM users u JOIN memberships m ON m.user_id = u.id "
            "WHERE u.is_superuser"
        )
    finally:
        await connection.close()
    assert [(row["email"], row["role"]) for row in superusers] == [("root@example.com", "owner")]


async def test_rotate_data_source_keys_re_encrypts_every_url(
    tmp_path: Path, create_database: DatabaseFactory
) -> None:
    from cryptography.fernet import Fernet
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from switchyard.datasources.crypto import DataSourceCipher
    from switchyard.db.migrate import migrate
    from switchyard.db.models import DEFAULT_TENANT_ID, DataSourceConnection

    database = await create_database()
    await migrate(database)
    old, new = Fernet.generate_key(), Fernet.generate_key()
    engine = create_async_engine(database)
    async with async_sessionmaker(engine).begin() as session:
        for name in ("a", "b"):
            session.add(
                DataSourceConnection(
                    tenant_id=DEFAULT_TENANT_ID,
                    name=name,
                    kind="postgresql",
                    encrypted_connection_url=DataSourceCipher([old]).encrypt(
                        f"postgresql://u@{name}/d"
                    ),
                )
            )

    keys = f"{new.decode()},{old.decode()}"
    result = switchyard(
        "rotate-data-source-keys", cwd=tmp_path, DATABASE_URL=dsn(database), DATA_SOURCE_KEYS=keys
    )
    assert result.returncode == 0, result.stderr
    assert "re-encrypted 2 data source URL(s)" in result.stdout

    only_new = DataSourceCipher([new])
    async with async_sessionmaker(engine)() as session:
        rows = (await session.scalars(select(DataSourceConnection).order_by("name"))).all()
        assert [only_new.decrypt(r.encrypted_connection_url) for r in rows] == [
            "postgresql://u@a/d",
            "postgresql://u@b/d",
        ]

    # Without the key the rows were written with, nothing decrypts and nothing changes.
    stranger = Fernet.generate_key().decode()
    refused = switchyard(
        "rotate-data-source-keys",
        cwd=tmp_path,
        DATABASE_URL=dsn(database),
        DATA_SOURCE_KEYS=stranger,
    )
    assert refused.returncode == 1
    assert "nothing was changed: A stored connection URL cannot be decrypted" in refused.stderr
    assert "Traceback" not in refused.stderr
    async with async_sessionmaker(engine)() as session:
        after = (await session.scalars(select(DataSourceConnection).order_by("name"))).all()
        assert [only_new.decrypt(r.encrypted_connection_url) for r in after] == [
            "postgresql://u@a/d",
            "postgresql://u@b/d",
        ]
    await engine.dispose()


def test_gateway_and_worker_without_a_chroma_server_refuse_to_start(
    tmp_path: Path, database_url: URL
) -> None:
    """Separate processes with embedded vector stores would each search only their own."""
    extras: tuple[tuple[str, dict[str, str]], ...] = (
        ("api-gateway", {}),
        (
            "worker",
            {"REDIS_URL": "redis://127.0.0.1:1/0", "CELERY_BROKER_URL": "amqp://g:g@127.0.0.1:1//"},
        ),
    )
    for role, extra in extras:
        result = switchyard(
            "run",
            role,
            cwd=tmp_path,
            timeout=60,
            DATABASE_URL=dsn(database_url),
            CHROMA_HOST="",
            **extra,
        )
        assert result.returncode == 78, result.stderr
        assert said(result.stderr)[-1].startswith(
            f"switchyard: configuration error: CHROMA_HOST: required by the {role} role"
        )

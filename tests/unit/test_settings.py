from __future__ import annotations

import os
from pathlib import Path

import pytest

from switchyard.settings import Environment, Settings, SettingsError, load_settings

STRONG_SECRET = "x" * 48
PROD_DB = "postgresql://app:a-real-password-9f2@db.internal:5432/app"


def test_defaults_serve_on_localhost_8000_in_development(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path("/"))
    settings = Settings(_env_file=None)
    assert (settings.api_host, settings.api_port) == ("127.0.0.1", 8000)
    assert settings.environment is Environment.DEVELOPMENT
    assert settings.database is None
    assert settings.health_probe_timeout_seconds == 2.0


def test_environment_beats_backend_file_beats_infrastructure_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env.infrastructure").write_text(
        "APP_NAME=from-infra\nLOG_LEVEL=DEBUG\nAPI_PORT=1\n"
    )
    (tmp_path / ".env.backend").write_text("APP_NAME=from-backend\nAPI_PORT=2\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("API_PORT", "3")
    settings = Settings()
    assert settings.api_port == 3
    assert settings.app_name == "from-backend"
    assert settings.log_level == "DEBUG"


def test_comma_separated_lists_are_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURES", "signup, graph ,,")
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example,https://b.example")
    settings = Settings(_env_file=None)
    assert settings.features == ["signup", "graph"]
    assert settings.cors_origins == ["https://a.example", "https://b.example"]


def test_database_url_is_normalised_to_asyncpg() -> None:
    settings = Settings(_env_file=None, database_url="postgres://u:p@h:5433/d")
    assert settings.database is not None
    assert settings.database.drivername == "postgresql+asyncpg"
    assert (settings.database.host, settings.database.port) == ("h", 5433)


@pytest.mark.parametrize("url", ["mysql://u:p@h/d", "not a url"])
def test_non_postgres_database_url_is_a_settings_error(
    url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert len(raised.value.lines) == 1
    assert raised.value.lines[0].startswith("DATABASE_URL: ")


def test_production_refuses_every_default_secret_one_line_each(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:changethis@db:5432/app")
    monkeypatch.setenv("MINIO_ENDPOINT", "minio:9000")
    monkeypatch.setenv("NEO4J_URI", "bolt://neo4j:7687")
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://guest:guest@rabbitmq:5672//")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    fields = [line.split(":", 1)[0] for line in raised.value.lines]
    assert fields == [
        "JWT_SECRET",
        "DATABASE_URL",
        "CELERY_BROKER_URL",
        "MINIO_ACCESS_KEY",
        "MINIO_SECRET_KEY",
        "NEO4J_PASSWORD",
        "METRICS_TOKEN",
        "DATA_SOURCE_KEYS",
    ]
    assert not any("changethis" in line or "minioadmin" in line for line in raised.value.lines)


def test_production_refuses_a_short_jwt_secret_and_a_missing_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("JWT_SECRET", "short-but-not-default")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert raised.value.lines == [
        "JWT_SECRET: too short (21 characters); use at least 32",
        "DATABASE_URL: missing; set the PostgreSQL URL",
        "METRICS_TOKEN: missing; in production every role's /metrics (and the full /health "
        "report) needs it",
        "DATA_SOURCE_KEYS: missing; set one or more Fernet keys (newest first) to encrypt "
        "data source URLs",
    ]


def test_production_accepts_strong_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("JWT_SECRET", STRONG_SECRET)
    monkeypatch.setenv("DATABASE_URL", PROD_DB)
    monkeypatch.setenv("DATA_SOURCE_KEYS", "x" * 43 + "=")
    monkeypatch.setenv("METRICS_TOKEN", STRONG_SECRET)
    settings = load_settings()
    assert settings.environment is Environment.PRODUCTION


def test_development_tolerates_default_secrets_but_not_a_known_signing_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINIO_SECRET_KEY", "minioadmin")
    assert load_settings().minio_secret_key.get_secret_value() == "minioadmin"
    for environment in ("development", "test"):
        monkeypatch.setenv("ENVIRONMENT", environment)
        monkeypatch.setenv("JWT_SECRET", "changethis")
        with pytest.raises(SettingsError) as raised:
            load_settings()
        assert [line.split(":")[0] for line in raised.value.lines] == ["JWT_SECRET"]


def test_without_jwt_secret_development_signs_with_a_generated_secret_in_var_dir(
    tmp_path: Path,
) -> None:
    first = Settings(_env_file=None, var_dir=tmp_path / "a")
    secret = first.signing_secret()
    assert len(secret) >= 32
    assert secret not in {"changethis", ""}
    path = tmp_path / "a" / "jwt.secret"
    assert path.read_text() == secret
    assert path.stat().st_mode & 0o777 == 0o600
    # Every process on that VAR_DIR signs with the same secret; another VAR_DIR has its own.
    assert Settings(_env_file=None, var_dir=tmp_path / "a").signing_secret() == secret
    assert Settings(_env_file=None, var_dir=tmp_path / "b").signing_secret() != secret
    assert Settings(_env_file=None, jwt_secret=STRONG_SECRET).signing_secret() == STRONG_SECRET


def test_secret_values_include_the_database_password() -> None:
    settings = Settings(_env_file=None, database_url=PROD_DB, jwt_secret=STRONG_SECRET)
    secrets = settings.secret_values()
    assert "a-real-password-9f2" in secrets
    assert STRONG_SECRET in secrets


def test_env_example_lists_every_setting(repo_root: Path) -> None:
    example = (repo_root / ".env.backend.example").read_text()
    listed = {
        line.split("=", 1)[0].lstrip("# ").strip()
        for line in example.splitlines()
        if "=" in line and not line.startswith("# ")
    }
    assert {name.upper() for name in Settings.model_fields} <= listed


def test_empty_values_fall_back_to_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "")
    monkeypatch.setenv("API_PORT", "")
    settings = Settings(_env_file=None)
    assert settings.redis_url is None
    assert settings.api_port == 8000


def test_production_refuses_a_weak_superuser_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("JWT_SECRET", STRONG_SECRET)
    monkeypatch.setenv("DATABASE_URL", PROD_DB)
    monkeypatch.setenv("FIRST_SUPERUSER_EMAIL", "root@example.com")
    monkeypatch.setenv("FIRST_SUPERUSER_PASSWORD", "changethis")
    monkeypatch.setenv("DATA_SOURCE_KEYS", "x" * 43 + "=")
    monkeypatch.setenv("METRICS_TOKEN", STRONG_SECRET)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert [line.split(":")[0] for line in raised.value.lines] == ["FIRST_SUPERUSER_PASSWORD"]


def test_rate_limits_must_parse(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RATE_LIMIT_API", "lots")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert raised.value.lines[0].startswith("RATE_LIMIT_API: ")


def _make_local_secret(path: str) -> bytes:
    from switchyard.settings import local_secret

    return local_secret(Path(path), lambda: os.urandom(16).hex().encode())


def test_concurrent_first_uses_of_a_local_secret_agree_on_one(tmp_path: Path) -> None:
    """Processes (or containers on one volume) starting together: one secret, never a half
    written one; nothing else is left in the directory."""
    import concurrent.futures

    path = tmp_path / "shared" / "data-source.key"
    with concurrent.futures.ProcessPoolExecutor(8) as pool:
        seen = list(pool.map(_make_local_secret, [str(path)] * 32))
    assert len(set(seen)) == 1
    assert len(seen[0]) == 32
    assert path.read_bytes() == seen[0]
    assert [p.name for p in path.parent.iterdir()] == ["data-source.key"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_generated_secrets_go_to_local_secrets_dir(tmp_path: Path) -> None:
    from switchyard.datasources.crypto import DataSourceCipher

    settings = Settings(_env_file=None, var_dir=tmp_path / "var", local_secrets_dir=tmp_path / "s")
    token = DataSourceCipher.from_settings(settings).encrypt("postgresql://u:p@h/d")
    assert settings.signing_secret() == (tmp_path / "s" / "jwt.secret").read_text()
    other = Settings(_env_file=None, var_dir=tmp_path / "other", local_secrets_dir=tmp_path / "s")
    assert DataSourceCipher.from_settings(other).decrypt(token) == "postgresql://u:p@h/d"
    assert not (tmp_path / "var").exists()

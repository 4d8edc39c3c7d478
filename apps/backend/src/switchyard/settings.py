"""One settings object for every role, read from the environment and the env files."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from enum import StrEnum
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

KNOWN_DEFAULT_SECRETS: Final = frozenset(
    {"", "changethis", "changeme", "secret", "password", "minioadmin", "neo4j", "postgres"}
)
MIN_JWT_SECRET_LENGTH: Final = 32
JWT_SECRET_FILE: Final = "jwt.secret"  # noqa: S105 - a file name
JWT_DEFAULT_REFUSED: Final = (
    "JWT_SECRET: a known default, with which anyone can sign tokens; set a random secret "
    "(or leave it unset outside production)"
)


def local_secret(path: Path, make: Callable[[], bytes]) -> bytes:
    """A secret kept in a file of its own (mode 0600), made on first use. Concurrent first
    uses (processes, or containers sharing the directory) agree on one: the secret is written
    whole to a file of this process, then linked into place, which fails if another won."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return path.read_bytes().strip()
    secret = make()
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(secret)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(draft, path)
        except FileExistsError:
            return path.read_bytes().strip()
    finally:
        draft.unlink(missing_ok=True)
    return secret


@cache
def _generated_jwt_secret(path: Path) -> str:
    return local_secret(path, lambda: secrets.token_urlsafe(48).encode()).decode()


class Role(StrEnum):
    """Values of SERVICE_TYPE."""

    API_GATEWAY = "api-gateway"
    WORKER = "worker"
    BEAT = "beat"
    MIGRATE = "migrate"
    STANDALONE = "standalone"
    BACKUP = "backup"


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Environment variables win over `.env.backend`, which wins over `.env.infrastructure`."""

    model_config = SettingsConfigDict(
        env_file=(".env.infrastructure", ".env.backend"),
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        env_ignore_empty=True,
    )

    environment: Environment = Environment.DEVELOPMENT
    service_type: str | None = None
    app_name: str = "Switchyard"

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    public_base_url: str | None = None
    cors_origins: CommaList = Field(default_factory=list)
    features: CommaList = Field(default_factory=list)
    # Modules declaring a product's own tasks, imported after the built-in ones by every role.
    task_modules: CommaList = Field(default_factory=list)
    # Packages of a product's own domains (each with DOMAIN = Domain(...)), after the built-in.
    domain_packages: CommaList = Field(default_factory=list)
    max_request_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # The request line and all headers together; larger ones are answered 431.
    max_request_header_bytes: int = Field(default=32 * 1024, ge=4096, le=1024 * 1024)
    # A request line and headers must arrive within this (slow clients get 408).
    request_header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # /docs and /openapi.json; unset: on, except in production.
    api_docs: bool | None = None

    database_url: SecretStr | None = None
    database_pool_size: int = Field(default=10, ge=1, le=200)
    database_max_overflow: int = Field(default=10, ge=0, le=200)
    database_pool_timeout_seconds: float = Field(default=10.0, gt=0)
    database_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    database_statement_timeout_ms: int = Field(default=30_000, ge=0)
    database_ping_after_idle_seconds: float = Field(default=2.0, ge=0, le=3600)

    health_probe_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    health_cache_seconds: float = Field(default=1.0, ge=0, le=60)
    # The `disk` check is down when the file system holding VAR_DIR (the data, the uploads,
    # the embedded servers') has less free than this share; `memory` when the role's memory
    # (its cgroup's use against the cgroup's limit in a container, else the process's RSS
    # against the machine's RAM) is above this share. HEALTH_CRITICAL may name either.
    # Backups (the backup role; docs/operations.md, "Backups"): the main database and every
    # PostgreSQL bind, every tenant's objects and the vector collections, in one archive that
    # is verified by restoring it into a scratch database. BACKUP_SCHEDULE is a cron line (UTC);
    # empty, the role makes one backup and exits. Archives go to BACKUP_BUCKET on the object
    # store's endpoint when set, else to BACKUP_DIR (default VAR_DIR/backups); the newest
    # BACKUP_KEEP are kept, and none older than BACKUP_KEEP_DAYS but the newest.
    backup_schedule: str = ""
    backup_dir: Path | None = None
    backup_bucket: str | None = None
    backup_keep: int = Field(default=7, ge=1, le=1000)
    backup_keep_days: int = Field(default=30, ge=1, le=3650)
    backup_verify: bool = True
    # Traces (OpenTelemetry; docs/operations.md, "Traces"): off by default, and then nothing is
    # installed or recorded. On, every role sends spans over OTLP/HTTP to the collector the
    # SDK's own variables name (OTEL_EXPORTER_OTLP_ENDPOINT, _HEADERS, ...), keeping this share
    # of the traces (a run's spans follow its request's decision).
    tracing: bool = False
    tracing_sample_ratio: float = Field(default=1.0, ge=0, le=1)
    health_disk_min_free_percent: float = Field(default=5.0, ge=0, le=100)
    health_memory_max_percent: float = Field(default=90.0, gt=0, le=100)

    var_dir: Path = Path("var")
    # Where the generated development secrets live (jwt.secret, data-source.key) when
    # JWT_SECRET / DATA_SOURCE_KEYS are unset: VAR_DIR by default. Containers that must agree
    # on them (compose's gateway and workers) point it at one shared volume.
    local_secrets_dir: Path | None = None
    embedded_postgres_port: int = Field(default=0, ge=0, le=65535)

    # Unset outside production: generated once into LOCAL_SECRETS_DIR (see signing_secret).
    jwt_secret: SecretStr | None = None
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    jwt_issuer: str = "switchyard"
    jwt_audience: str = "switchyard-api"
    access_token_minutes: int = Field(default=15, ge=1, le=24 * 60)
    refresh_token_days: int = Field(default=30, ge=1, le=365)
    # A spent refresh token presented again this soon (a double submit, a retry after a lost
    # answer) gets the same successor, unless that was used already; later, a replay.
    refresh_reuse_seconds: int = Field(default=10, ge=0, le=120)
    password_min_length: int = Field(default=12, ge=8, le=128)
    password_max_length: int = Field(default=128, ge=16, le=1024)
    first_superuser_email: str | None = None
    first_superuser_password: SecretStr | None = None
    # Whether a user whose email address is not confirmed yet may sign in.
    require_email_verification: bool = False
    invitation_ttl_hours: int = Field(default=72, ge=1, le=30 * 24)
    password_reset_ttl_minutes: int = Field(default=30, ge=5, le=24 * 60)
    email_verification_ttl_hours: int = Field(default=48, ge=1, le=30 * 24)
    # Where the links in account emails point (a product's own pages, which post the token to
    # the API); unset: the gateway's public URL.
    account_link_base_url: str | None = None
    # Access tokens of the OAuth2 client-credentials grant.
    oauth_token_minutes: int = Field(default=10, ge=1, le=24 * 60)
    # Audit events older than this are purged by beat.
    audit_retention_days: int = Field(default=365, ge=1, le=10 * 365)
    # The operator console under /console (a cookie session beside the bearer tokens).
    console_enabled: bool = True
    console_session_hours: int = Field(default=8, ge=1, le=7 * 24)

    # Email: through this SMTP server; unset (outside production), written to the log instead.
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    # starttls: upgrade a plain connection (port 587); tls: TLS from the start (465); none.
    smtp_tls: Literal["starttls", "tls", "none"] = "starttls"
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "Switchyard <no-reply@localhost>"
    smtp_timeout_seconds: float = Field(default=10.0, gt=0, le=120)

    rate_limits_enabled: bool = True
    # Per client address, on what takes a password or a one-time link: register, login,
    # console sign-in, password reset, email verification, invitation acceptance.
    rate_limit_auth: str = "5/minute"
    # Per client address, on what exchanges a high-entropy credential for a token (nothing to
    # guess): /auth/refresh and /oauth/token.
    rate_limit_tokens: str = "60/minute"
    rate_limit_api: str = "600/minute"
    rate_limit_task_runs: str = "120/minute"
    rate_limit_uploads: str = "30/minute"
    # Failed sign-ins per account (email), from any address; then 429 until the window ends.
    rate_limit_login_failures: str = "10/15 minutes"
    # Password-reset and verification emails asked for one address, from any client.
    rate_limit_account_email: str = "3/hour"
    # Failed client authentications at the OAuth2 token endpoint, per client id and address:
    # failures from elsewhere never block the right secret.
    rate_limit_client_failures: str = "10/15 minutes"
    # Addresses or networks of reverse proxies whose X-Forwarded-For / -Proto are believed;
    # none by default, so a client can never choose the address its limits count against.
    trusted_proxies: CommaList = Field(default_factory=list)

    redis_url: SecretStr | None = None
    redis_socket_timeout_seconds: float = Field(default=2.0, gt=0)
    redis_max_connections: int = Field(default=50, ge=1)
    cache_namespace: str = "switchyard"

    celery_broker_url: SecretStr | None = None
    broker_publish_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    task_delivery_limit: int = Field(default=5, ge=1, le=100)
    task_max_countdown_seconds: int = Field(default=7 * 24 * 3600, ge=1)
    # Runs one POST /api/v1/tasks/runs may submit at once.
    task_bulk_max_runs: int = Field(default=1000, ge=1, le=10_000)
    # Most steps one workflow definition may have (switchyard.workflows).
    workflow_max_steps: int = Field(default=100, ge=1, le=1000)
    # Most items one mapped step may run over (one run each).
    workflow_max_map_items: int = Field(default=10_000, ge=1, le=100_000)
    # Workflow runs one POST /api/v1/workflows/{name}/runs/bulk may start at once.
    workflow_bulk_max_runs: int = Field(default=100, ge=1, le=1000)
    # Group commit: single runs a gateway process is asked for within this many milliseconds
    # (or this many of them) share one transaction and one burst of publishes.
    task_group_commit_ms: float = Field(default=2.0, ge=0, le=100)
    task_group_commit_runs: int = Field(default=200, ge=1, le=10_000)
    task_republish_after_seconds: float = Field(default=15.0, gt=0)
    # Fair share (platform.runs.admission): a run is published once its tenant's share of the
    # platform's slots has room, and waits in the ledger until then. Work-conserving: a tenant
    # alone uses every slot; tenants with runs waiting divide equally the slots that the
    # others do not hold. False: first in, first out, every run published as it is accepted.
    fair_share: bool = True
    # The slots shares divide: 0 = the sum of WORKER_CONCURRENCY of the worker processes online
    # (each reports itself every few seconds; WORKER_CONCURRENCY when none has yet).
    fair_share_slots: int = Field(default=0, ge=0, le=1_000_000)
    # A hard cap on one tenant's runs in flight (queued in the broker, started or retrying), on
    # top of its share; 0: none. The platform superuser sets a tenant's own cap with
    # PATCH /api/v1/tenants/{id}.
    tenant_max_runs_in_flight: int = Field(default=0, ge=0, le=100_000)
    # Retention (beat deletes what has expired, in batches): final runs this many days after
    # they finished, dead letters this many days after they were archived (a run is kept while
    # its dead letter is), idempotency keys this many hours after their run was submitted (a
    # run not yet final keeps its key). 0 keeps them for ever. The platform superuser sets a
    # tenant's own run and dead-letter retention with PATCH /api/v1/tenants/{id}.
    run_retention_days: int = Field(default=30, ge=0, le=3650)
    dead_letter_retention_days: int = Field(default=90, ge=0, le=3650)
    idempotency_key_hours: int = Field(default=24, ge=0, le=3650 * 24)
    # Rows one retention statement deletes: the job never holds more than this many rows' locks.
    retention_batch_rows: int = Field(default=500, ge=1, le=100_000)
    # ...and rests this many times as long as each batch took: at 9 the job takes at most a
    # tenth of one connection's time (more: gentler on the API, slower on a backlog).
    retention_rest_ratio: float = Field(default=9.0, ge=0, le=100)
    retention_every_seconds: float = Field(default=300.0, gt=0, le=24 * 3600)
    # A tenant's deletion: how long after it is asked for it happens (cancellable until then;
    # the superuser may name a shorter grace, 0 included), how often beat looks for deletions
    # due, and the batches it erases rows in (resting this many times as long as each took).
    tenant_deletion_grace_days: int = Field(default=7, ge=0, le=90)
    tenant_deletion_every_seconds: float = Field(default=60.0, gt=0, le=24 * 3600)
    tenant_deletion_batch_rows: int = Field(default=1000, ge=1, le=100_000)
    tenant_deletion_rest_ratio: float = Field(default=3.0, ge=0, le=100)
    # How long the download link of a tenant's export works (each read of the export gives a
    # new one; the archive stays until the tenant's next export replaces it).
    export_link_minutes: int = Field(default=60, ge=1, le=7 * 24 * 60)
    # Usage metering (services.usage): runs accepted, attempts and their seconds, LLM and
    # embedding tokens, searches, each counted per tenant. Off: none of these is counted (nor
    # reserved against an LLM budget), so the quotas on them never bind; documents and stored
    # bytes are kept counted (a stock, which could not be counted again later).
    usage_metering: bool = True
    # How often beat copies the usage counters changed lately to the `analytics` bind (if any).
    usage_ship_seconds: float = Field(default=60.0, gt=0, le=24 * 3600)
    # Tenants named in the switchyard_tenant_spend metric (the rest are summed as "other").
    tenant_spend_top: int = Field(default=20, ge=1, le=1000)
    # system.sleep and system.fail (test and demo tasks): registered outside production, and
    # in production only when this is true. system.fail's `crash` never runs in production.
    system_tasks_enabled: bool | None = None
    # Runs in flight per worker process, each a coroutine on the process's one event loop.
    worker_concurrency: int = Field(default=100, ge=1, le=2000)
    # Worker processes per container (each with its own loop, clients and pools).
    worker_processes: int = Field(default=1, ge=1, le=64)
    worker_queues: CommaList = Field(default_factory=lambda: ["default", "llm"])
    # The loop is stalled (a handler blocks it) when it has not turned for this long.
    worker_stall_seconds: float = Field(default=0.5, gt=0, le=60)
    # `switchyard healthcheck worker` fails while a process's loop is stalled this long.
    worker_stall_unhealthy_seconds: float = Field(default=10.0, gt=0, le=3600)
    # How often a worker asks the ledger whether a run it holds was cancelled.
    worker_cancel_poll_seconds: float = Field(default=0.5, gt=0, le=10)
    # CPU-heavy steps (PDF/HTML text, local embeddings) run in this many processes...
    worker_cpu_processes: int = Field(default=2, ge=1, le=64)
    # ...each limited to this much address space (MiB).
    worker_cpu_memory_mb: int = Field(default=2048, ge=256, le=65536)
    # ...and each of their jobs (one local embedding batch, say) to this many seconds.
    worker_cpu_job_seconds: float = Field(default=300.0, gt=0, le=3600)
    # Text extraction of one uploaded document (PDF, HTML), in the CPU pool.
    document_extract_timeout_seconds: float = Field(default=120.0, gt=0, le=3600)
    beat_tick_seconds: float = Field(default=1.0, gt=0, le=60)
    heartbeat_max_age_seconds: float = Field(default=60.0, gt=0)
    # What /health/ready needs: without PostgreSQL nothing works. A Redis or broker outage
    # only degrades the gateway (its reads go on), so it stays in its Service by default.
    health_critical: CommaList = Field(default_factory=lambda: ["postgres"])
    # SIGTERM: the worker finishes in-flight tasks for this long, then hands the rest back.
    worker_shutdown_grace_seconds: float = Field(default=30.0, ge=0, le=3600)
    # SIGTERM: the gateway lets in-flight requests finish for this long, then closes them.
    api_shutdown_grace_seconds: int = Field(default=10, ge=0, le=3600)

    # Operations: Prometheus metrics and error reporting.
    metrics_token: SecretStr | None = None
    metrics_host: str = "0.0.0.0"
    worker_metrics_port: int = Field(default=9101, ge=0, le=65535)
    beat_metrics_port: int = Field(default=9102, ge=0, le=65535)
    backup_metrics_port: int = Field(default=9103, ge=0, le=65535)
    metrics_sample_seconds: float = Field(default=5.0, gt=0, le=300)
    sentry_dsn: SecretStr | None = None
    sentry_traces_sample_rate: float = Field(default=0.0, ge=0, le=1)

    # Object storage: MinIO or any S3; a directory under VAR_DIR without MINIO_ENDPOINT.
    minio_endpoint: str | None = None
    minio_access_key: SecretStr = SecretStr("minioadmin")
    minio_secret_key: SecretStr = SecretStr("minioadmin")
    minio_secure: bool = False
    minio_region: str | None = None
    minio_bucket: str = "switchyard"
    object_store_dir: Path | None = None
    object_url_expiry_seconds: int = Field(default=3600, ge=1, le=7 * 24 * 3600)

    # Vectors: a Chroma server with CHROMA_HOST, an embedded persistent store otherwise.
    chroma_host: str | None = None
    chroma_port: int = Field(default=8000, ge=1, le=65535)
    chroma_ssl: bool = False
    chroma_dir: Path | None = None

    # Graph: Neo4j; disabled without NEO4J_URI.
    neo4j_uri: str | None = None
    neo4j_user: str = "neo4j"
    neo4j_password: SecretStr = SecretStr("changethis")
    neo4j_database: str | None = None
    neo4j_max_pool_size: int = Field(default=50, ge=1, le=1000)
    neo4j_connection_timeout_seconds: float = Field(default=5.0, gt=0)
    neo4j_acquisition_timeout_seconds: float = Field(default=30.0, gt=0)

    # LLM: Zhipu GLM over its HTTP API; disabled without ZHIPUAI_API_KEY.
    zhipuai_api_key: SecretStr | None = None
    zhipuai_base_url: str = "https://open.bigmodel.cn/api/paas/v4/"
    zhipuai_chat_model: str = "glm-4-flash"
    zhipuai_embedding_model: str = "embedding-3"
    zhipuai_embedding_dimensions: int | None = Field(default=None, ge=1, le=8192)
    zhipuai_timeout_seconds: float = Field(default=60.0, gt=0, le=600)
    zhipuai_max_retries: int = Field(default=3, ge=0, le=10)
    zhipuai_retry_backoff_seconds: float = Field(default=0.5, ge=0, le=60)
    zhipuai_tenant_concurrency: int = Field(default=4, ge=1, le=256)
    # The completion tokens a chat that sets no max_tokens is assumed to spend at most, when
    # its tenant's plan has a token budget (services.quotas reserves that much for it).
    zhipuai_max_completion_tokens: int = Field(default=4096, ge=1, le=1_000_000)

    # Knowledge documents: upload limit, chunking, embeddings, retrieval.
    document_max_bytes: int = Field(default=25 * 1024 * 1024, ge=1024, le=1024**3)
    chunk_size_chars: int = Field(default=1000, ge=100, le=20_000)
    chunk_overlap_chars: int = Field(default=150, ge=0, le=5_000)
    document_max_chunks: int = Field(default=5_000, ge=1, le=1_000_000)
    # Documents of one tenant being ingested at once (pending or processing); an upload past
    # it is answered 429 and nothing of it is stored.
    document_max_ingesting_per_tenant: int = Field(default=20, ge=1, le=100_000)
    embedding_provider: Literal["auto", "zhipu", "local"] = "auto"
    # Load the vector client and the local embedding model right after the gateway starts (a
    # fast first search, ~150 MB more resident memory); off: on first use. Standalone: on.
    warm_up: bool = False
    search_max_top_k: int = Field(default=50, ge=1, le=100)
    answer_top_k: int = Field(default=5, ge=1, le=50)

    # Extra databases by name, as JSON: {"analytics": "mysql+asyncmy://user:pw@host/db"}.
    database_binds: dict[str, SecretStr] = Field(default_factory=dict)

    # Data sources: Fernet keys, newest first (all decrypt, the first encrypts).
    data_source_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    data_source_allow_local_hosts: bool = False
    # Private and other non-public addresses (RFC 1918, CGNAT, ULA, ...): reachable by
    # connectivity tests outside production; in production only inside the named networks.
    data_source_allow_private_networks: bool | None = None
    data_source_allowed_networks: CommaList = Field(default_factory=list)
    data_source_test_timeout_seconds: float = Field(default=10.0, gt=0, le=60)

    @field_validator(
        "cors_origins",
        "features",
        "task_modules",
        "domain_packages",
        "worker_queues",
        "health_critical",
        "data_source_keys",
        "trusted_proxies",
        "data_source_allowed_networks",
        mode="before",
    )
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("trusted_proxies", "data_source_allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network") from None
        return value

    @field_validator(
        "rate_limit_auth",
        "rate_limit_tokens",
        "rate_limit_api",
        "rate_limit_task_runs",
        "rate_limit_uploads",
        "rate_limit_login_failures",
        "rate_limit_account_email",
        "rate_limit_client_failures",
    )
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError:
            raise ValueError("is not a rate limit like '5/minute'") from None
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url_is_postgres(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        # SQLAlchemy is imported here, not at the top: `switchyard healthcheck` never needs it.
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value.get_secret_value())
        except ArgumentError:
            raise ValueError("is not a valid database URL") from None
        if url.drivername.split("+")[0] not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL")
        return SecretStr(url.set(drivername="postgresql+asyncpg").render_as_string(False))

    @model_validator(mode="after")
    def _overlap_below_size(self) -> Settings:
        if self.chunk_overlap_chars >= self.chunk_size_chars:
            raise ValueError("CHUNK_OVERLAP_CHARS must be smaller than CHUNK_SIZE_CHARS")
        return self

    @field_validator("first_superuser_email")
    @classmethod
    def _sign_in_address(cls, value: str | None) -> str | None:
        """An address sign-in accepts (the API's EmailStr: special-use domains such as .local
        or .test are not), or the superuser migrate creates could never sign in."""
        if not value:
            return value
        from pydantic import EmailStr, TypeAdapter
        from pydantic import ValidationError as Invalid

        try:
            TypeAdapter(EmailStr).validate_python(value)
        except Invalid as exc:
            reason = exc.errors()[0]["msg"].removeprefix("value is not a valid email address: ")
            raise ValueError(f"is not an address sign-in accepts: {reason}") from None
        return value

    @field_validator("data_source_keys")
    @classmethod
    def _fernet_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        from cryptography.fernet import Fernet

        for position, key in enumerate(value, start=1):
            try:
                Fernet(key.get_secret_value())
            except ValueError:
                raise ValueError(
                    f"key {position} is not a Fernet key (32 url-safe base64-encoded bytes)"
                ) from None
        return value

    @field_validator("database_binds")
    @classmethod
    def _binds(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        for name, url in value.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,30}", name):
                raise ValueError(f"bind name {name!r} must be lower-case letters, digits and _")
            try:
                make_url(url.get_secret_value())
            except ArgumentError:
                raise ValueError(f"bind {name!r} is not a valid database URL") from None
        return value

    @property
    def public_url(self) -> str:
        """Where clients reach the gateway (links the gateway hands out start with it)."""
        return (self.public_base_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    @property
    def account_link_base(self) -> str:
        """Where account emails link to: ACCOUNT_LINK_BASE_URL (a product's own pages), else
        the console's pages, else the gateway (where a product must serve them)."""
        if self.account_link_base_url:
            return self.account_link_base_url.rstrip("/")
        return f"{self.public_url}/console" if self.console_enabled else self.public_url

    @property
    def email_logged(self) -> bool:
        """Email written to the log instead of sent: no SMTP_HOST, in development (and so in
        standalone). In test and production, email goes to an SMTP server or nowhere."""
        return self.smtp_host is None and self.environment is Environment.DEVELOPMENT

    @property
    def object_dir(self) -> Path:
        return self.object_store_dir or self.var_dir / "objects"

    @property
    def secrets_dir(self) -> Path:
        return self.local_secrets_dir or self.var_dir

    @property
    def backup_path(self) -> Path:
        return self.backup_dir or self.var_dir / "backups"

    @property
    def vector_dir(self) -> Path:
        return self.chroma_dir or self.var_dir / "chroma"

    @property
    def system_tasks_on(self) -> bool:
        """Whether system.sleep and system.fail are registered (SYSTEM_TASKS_ENABLED)."""
        if self.system_tasks_enabled is not None:
            return self.system_tasks_enabled
        return self.environment is not Environment.PRODUCTION

    @property
    def secure_cookies(self) -> bool:
        """The console's cookies are `Secure` (HTTPS only) outside development."""
        return self.environment is not Environment.DEVELOPMENT

    @property
    def docs_enabled(self) -> bool:
        if self.api_docs is not None:
            return self.api_docs
        return self.environment is not Environment.PRODUCTION

    @property
    def data_source_private_networks_allowed(self) -> bool:
        if self.data_source_allow_private_networks is not None:
            return self.data_source_allow_private_networks
        return self.environment is not Environment.PRODUCTION

    def signing_secret(self) -> str:
        """What signs access tokens and object links: JWT_SECRET, or (outside production) a
        random secret made once into LOCAL_SECRETS_DIR (VAR_DIR)/jwt.secret and shared by the
        processes there."""
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value()
        if self.environment is Environment.PRODUCTION:
            raise RuntimeError("JWT_SECRET is required in production")  # refused at start
        return _generated_jwt_secret((self.secrets_dir / JWT_SECRET_FILE).absolute())

    def heartbeat_file(self, role: str) -> Path:
        """Where a worker or beat process proves it is alive (read by `switchyard healthcheck`)."""
        return self.var_dir / f"{role}.heartbeat"

    @property
    def database(self) -> URL | None:
        """The asyncpg URL of the database, or None when none is configured."""
        if self.database_url is None:
            return None
        from sqlalchemy.engine import make_url

        return make_url(self.database_url.get_secret_value())

    def secret_values(self) -> list[str]:
        """Every secret this configuration holds, for redaction checks."""
        secrets = [
            value.get_secret_value()
            for value in (
                self.jwt_secret,
                self.first_superuser_password,
                self.smtp_password,
                self.neo4j_password,
                self.minio_access_key,
                self.minio_secret_key,
                self.zhipuai_api_key,
                self.redis_url,
                self.celery_broker_url,
                self.database_url,
                *self.database_binds.values(),
                *self.data_source_keys,
            )
            if value is not None
        ]
        database = self.database
        if database is not None and database.password:
            secrets.append(str(database.password))
        return [secret for secret in secrets if secret]

    def problems_in_every_environment(self) -> list[str]:
        """What is refused even in development: a signing secret that anyone can read."""
        jwt = self.jwt_secret.get_secret_value() if self.jwt_secret is not None else ""
        return [JWT_DEFAULT_REFUSED] if jwt.lower() in KNOWN_DEFAULT_SECRETS - {""} else []

    def production_problems(self) -> list[str]:
        """One line per setting that is unsafe to run in production."""
        problems = [self._production_jwt_problem()]
        database = self.database
        if database is None:
            problems.append("DATABASE_URL: missing; set the PostgreSQL URL")
        elif (database.password or "").lower() in KNOWN_DEFAULT_SECRETS:
            problems.append("DATABASE_URL: the password is empty or a known default")
        if self.first_superuser_email and (
            self.first_superuser_password is None
            or self.first_superuser_password.get_secret_value().lower() in KNOWN_DEFAULT_SECRETS
            or len(self.first_superuser_password.get_secret_value()) < self.password_min_length
        ):
            problems.append(
                "FIRST_SUPERUSER_PASSWORD: missing, a known default or shorter than "
                f"{self.password_min_length} characters"
            )
        if self.celery_broker_url is not None:
            broker = urlsplit(self.celery_broker_url.get_secret_value())
            if broker.password is not None and broker.password.lower() in {
                *KNOWN_DEFAULT_SECRETS,
                "guest",
            }:
                problems.append("CELERY_BROKER_URL: the password is a known default")
        if self.minio_endpoint:
            for name, secret in (
                ("MINIO_ACCESS_KEY", self.minio_access_key),
                ("MINIO_SECRET_KEY", self.minio_secret_key),
            ):
                if secret.get_secret_value().lower() in KNOWN_DEFAULT_SECRETS:
                    problems.append(f"{name}: missing or left at a known default")
        if self.neo4j_uri and self.neo4j_password.get_secret_value() in KNOWN_DEFAULT_SECRETS:
            problems.append("NEO4J_PASSWORD: missing or left at a known default")
        if self.metrics_token is None or not self.metrics_token.get_secret_value():
            problems.append(
                "METRICS_TOKEN: missing; in production every role's /metrics (and the full "
                "/health report) needs it"
            )
        if self.require_email_verification and self.smtp_host is None:
            problems.append(
                "REQUIRE_EMAIL_VERIFICATION: needs SMTP_HOST (nobody could confirm an address)"
            )
        if not self.data_source_keys:
            problems.append(
                "DATA_SOURCE_KEYS: missing; set one or more Fernet keys (newest first) "
                "to encrypt data source URLs"
            )
        return [problem for problem in problems if problem]

    def _production_jwt_problem(self) -> str:
        jwt = self.jwt_secret.get_secret_value() if self.jwt_secret is not None else ""
        if not jwt:
            return "JWT_SECRET: missing; set a random secret"
        if jwt.lower() in KNOWN_DEFAULT_SECRETS:
            return JWT_DEFAULT_REFUSED
        if len(jwt) < MIN_JWT_SECRET_LENGTH:
            length, least = len(jwt), MIN_JWT_SECRET_LENGTH
            return f"JWT_SECRET: too short ({length} characters); use at least {least}"
        return ""


class SettingsError(Exception):
    """The configuration cannot be used; `lines` say why, one per setting."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def load_settings() -> Settings:
    """Read and check the settings; raise SettingsError with one line per problem."""
    try:
        settings = Settings()
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False, include_input=False):
            field = ".".join(str(part) for part in error["loc"]).upper() or "SETTINGS"
            # A validator's own sentence, without pydantic's "Value error, " in front.
            lines.append(f"{field}: {error['msg'].removeprefix('Value error, ')}")
        raise SettingsError(lines) from None
    if settings.environment is Environment.PRODUCTION:
        problems = settings.production_problems()
    else:
        problems = settings.problems_in_every_environment()
    if problems:
        raise SettingsError(problems)
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return load_settings()


__all__ = ["Environment", "Role", "Settings", "SettingsError", "get_settings", "load_settings"]

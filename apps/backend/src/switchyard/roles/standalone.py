"""The `standalone` role: the whole product from one command on embedded backends.

PostgreSQL, Redis and Chroma run as children of this process (Redis is also the broker);
a worker and a beat run as `switchyard run worker|beat` children; the gateway runs here.
All of them die with this process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import asyncpg
from pydantic import SecretStr

from switchyard.embedded.chroma import EmbeddedChroma, EmbeddedChromaError
from switchyard.embedded.postgres import EmbeddedPostgres, EmbeddedPostgresError
from switchyard.embedded.process import die_with_parent
from switchyard.embedded.redis import EmbeddedRedis, EmbeddedRedisError
from switchyard.errors import RoleStartupError
from switchyard.roles.api_gateway import serve
from switchyard.roles.migrate import prepare_database
from switchyard.roles.worker import EXIT_AFTER_GRACE_SECONDS
from switchyard.settings import Settings

logger = logging.getLogger(__name__)

DATABASE = "switchyard"


async def _create_database(postgres: EmbeddedPostgres) -> None:
    connection = await asyncpg.connect(
        host="127.0.0.1", port=postgres.port, user="postgres", database="postgres"
    )
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
        if not exists:
            await connection.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await connection.close()


async def _prepare(settings: Settings, postgres: EmbeddedPostgres) -> None:
    await _create_database(postgres)
    await prepare_database(settings, postgres.url(DATABASE))


def _banner(
    settings: Settings, postgres: EmbeddedPostgres, redis: EmbeddedRedis, chroma: EmbeddedChroma
) -> str:
    base = f"http://{settings.api_host}:{settings.api_port}"
    return "\n".join(
        [
            "Switchyard standalone",
            f"  API    {base}/api/v1/  (docs {base}/docs, health {base}/health)",
            f"  data   {postgres.root}  (PostgreSQL on 127.0.0.1:{postgres.port}, "
            f"Redis on 127.0.0.1:{redis.port}, Chroma on 127.0.0.1:{chroma.port})",
            f"  psql   postgresql://postgres@127.0.0.1:{postgres.port}/{DATABASE}  "
            "(for psql and alembic, while this runs)",
            "  tasks  a worker and a beat run alongside; try POST /api/v1/tasks/run",
            "  stop   Ctrl-C or SIGTERM",
        ]
    )


def _describe(
    settings: Settings, postgres: EmbeddedPostgres, redis: EmbeddedRedis, chroma: EmbeddedChroma
) -> Path:
    """VAR_DIR/standalone.env: where the embedded servers listen, for `pnpm check:services`
    (and `psql`, alembic) while this runs; removed when it stops."""
    database = postgres.url(DATABASE).set(drivername="postgresql")
    path = settings.var_dir / "standalone.env"
    path.write_text(
        "# Written by `switchyard run standalone` while it runs; removed when it stops.\n"
        f"DATABASE_URL={database.render_as_string(hide_password=False)}\n"
        f"REDIS_URL={redis.url(0)}\n"
        f"CELERY_BROKER_URL={redis.url(1)}\n"
        "CHROMA_HOST=127.0.0.1\n"
        f"CHROMA_PORT={chroma.port}\n"
        f"SWITCHYARD_API_URL=http://{settings.api_host}:{settings.api_port}\n"
    )
    return path


class Children:
    """`switchyard run ROLE` child processes that die with this one."""

    def __init__(self, env: dict[str, str], stop_seconds: float) -> None:
        self.env = env
        self.stop_seconds = stop_seconds
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, role: str) -> None:
        executable = Path(sys.executable).with_name("switchyard")
        self.processes.append(
            subprocess.Popen(
                [str(executable), "run", role],
                env=self.env,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - at start-up, before any thread
            )
        )

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(self.stop_seconds)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run(settings: Settings) -> int:
    """Server URLs in the settings are ignored: standalone always runs on embedded backends."""
    if settings.database_url is not None or settings.redis_url is not None:
        logger.warning("standalone ignores server URLs and uses its embedded backends")
    postgres = EmbeddedPostgres(settings.var_dir, port=settings.embedded_postgres_port)
    redis = EmbeddedRedis(settings.var_dir)
    chroma = EmbeddedChroma(settings.var_dir)
    with ExitStack() as stack:
        try:
            postgres.start()
            stack.callback(postgres.stop)
            redis.start()
            stack.callback(redis.stop)
            chroma.start()
            stack.callback(chroma.stop)
        except (EmbeddedPostgresError, EmbeddedRedisError, EmbeddedChromaError) as exc:
            raise RoleStartupError(str(exc)) from None
        asyncio.run(_prepare(settings, postgres))
        database_url = postgres.url(DATABASE).render_as_string(hide_password=False)
        embedded = settings.model_copy(
            update={
                "database_url": SecretStr(database_url),
                "redis_url": SecretStr(redis.url(0)),
                "celery_broker_url": SecretStr(redis.url(1)),
                "chroma_host": "127.0.0.1",
                "chroma_port": chroma.port,
                "warm_up": True,
            }
        )
        children = Children(
            {
                **os.environ,
                "DATABASE_URL": database_url,
                "REDIS_URL": redis.url(0),
                "CELERY_BROKER_URL": redis.url(1),
                "CHROMA_HOST": "127.0.0.1",
                "CHROMA_PORT": str(chroma.port),
                "VAR_DIR": str(settings.var_dir.absolute()),
                # The worker's and beat's metrics listen where the API does, unless set.
                "METRICS_HOST": (
                    settings.metrics_host
                    if "metrics_host" in settings.model_fields_set
                    else settings.api_host
                ),
            },
            # The worker's runs get its grace period, as in the worker role.
            stop_seconds=settings.worker_shutdown_grace_seconds + EXIT_AFTER_GRACE_SECONDS,
        )
        stack.callback(children.stop)
        children.start("worker")
        children.start("beat")
        described = _describe(settings, postgres, redis, chroma)
        stack.callback(described.unlink, missing_ok=True)
        print(_banner(settings, postgres, redis, chroma), flush=True)
        serve(embedded, "standalone")
    return 0

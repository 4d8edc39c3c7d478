"""The `switchyard` command: `run [ROLE]` starts a role, `healthcheck` checks it."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

import click

from switchyard import __version__, tracing
from switchyard.errors import RoleConfigurationError, RoleStartupError
from switchyard.logging import configure_logging, signal_safe_line
from switchyard.reporting import init_reporting
from switchyard.settings import Role, Settings, SettingsError, load_settings

logger = logging.getLogger(__name__)

# Imported on dispatch, so `--help` and `healthcheck` stay quick.
ROLES: dict[Role, str] = {
    Role.API_GATEWAY: "switchyard.roles.api_gateway",
    Role.WORKER: "switchyard.roles.worker",
    Role.BEAT: "switchyard.roles.beat",
    Role.MIGRATE: "switchyard.roles.migrate",
    Role.STANDALONE: "switchyard.roles.standalone",
    Role.BACKUP: "switchyard.roles.backup",
}
VALID_ROLES = ", ".join(role.value for role in Role)
CLI_LOGGER = "switchyard.cli"
EXIT_USAGE = 2
EXIT_CONFIG = 78


def _say(message: str, role: str | None = None) -> None:
    """One line for the operator: plain on a terminal; elsewhere (a container's log, CI) a
    JSON line in the shape of every other log line, at level ERROR."""
    if sys.stderr.isatty():
        click.echo(f"switchyard: {message}", err=True)
        return
    service_type = role or os.environ.get("SERVICE_TYPE") or "switchyard"
    sys.stderr.write(signal_safe_line(CLI_LOGGER, message, service_type, "ERROR").decode())
    sys.stderr.flush()


def _fail(message: str, code: int, role: str | None = None) -> NoReturn:
    _say(message, role)
    sys.exit(code)


def _fail_lines(prefix: str, lines: list[str], code: int, role: str | None = None) -> NoReturn:
    """Every problem found, one line each, then exit."""
    for line in lines:
        _say(f"{prefix}: {line}", role)
    sys.exit(code)


def _role(value: str | None) -> Role:
    if not value:
        _fail(
            f"no role given (pass ROLE or set SERVICE_TYPE); valid roles: {VALID_ROLES}", EXIT_USAGE
        )
    try:
        return Role(value)
    except ValueError:
        _fail(f"unknown role {value!r}; valid roles: {VALID_ROLES}", EXIT_USAGE)


def _settings(role: str | None = None) -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        _fail_lines("configuration error", exc.lines, EXIT_CONFIG, role)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Outside uvicorn's own handlers: unwind (running every `finally`), then exit cleanly.
    raise SystemExit(0)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="switchyard")
def main() -> None:
    """Switchyard: one backend image, several roles picked by SERVICE_TYPE."""


def _temporary_files_under_var_dir(settings: Settings) -> None:
    """On a read-only root filesystem VAR_DIR is the one writable place: temporary files (the
    worker's metric files, the embedded servers' scratch) go to VAR_DIR/tmp when no usual
    temporary directory takes them. Child processes inherit the choice through TMPDIR."""
    try:
        tempfile.gettempdir()
    except FileNotFoundError:
        directory = (settings.var_dir / "tmp").absolute()
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _fail(
                f"configuration error: VAR_DIR: {settings.var_dir.absolute()} is not writable "
                f"({exc.strerror}) and no temporary directory is; on a read-only root, mount a "
                "writable volume or tmpfs at VAR_DIR",
                EXIT_CONFIG,
            )
        os.environ["TMPDIR"] = str(directory)
        tempfile.tempdir = None
        logger.info("no writable temporary directory: using %s", directory)


@main.command()
@click.argument("role", required=False, envvar="SERVICE_TYPE")
def run(role: str | None) -> None:
    """Start ROLE (default: $SERVICE_TYPE): api-gateway, worker, beat, migrate, standalone or
    backup."""
    chosen = _role(role)
    settings = _settings(chosen.value)
    configure_logging(settings.log_level, chosen.value)
    _temporary_files_under_var_dir(settings)
    init_reporting(settings, chosen.value)
    tracing.configure(settings, chosen.value)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    metrics_dir = None
    if chosen is Role.WORKER and "SWITCHYARD_WORKER_PROCESS" not in os.environ:
        from switchyard.platform import multiprocess

        # Before any metric exists: the worker processes write their values to files in it
        # (they inherit the directory through the environment) and the supervisor merges them.
        metrics_dir = multiprocess.enable()
    try:
        start: Callable[[Settings], int] = importlib.import_module(ROLES[chosen]).run
        code = start(settings)
    except RoleConfigurationError as exc:
        _fail_lines("configuration error", exc.lines, EXIT_CONFIG, chosen.value)
    except RoleStartupError as exc:
        _fail(f"{chosen.value} could not start: {exc}", 1, chosen.value)
    except KeyboardInterrupt:
        code = 0
    finally:
        if metrics_dir is not None:
            multiprocess.disable(metrics_dir)
    sys.exit(code)


@main.command()
@click.argument("role", required=False, envvar="SERVICE_TYPE")
def healthcheck(role: str | None) -> None:
    """Exit 0 when ROLE (default: $SERVICE_TYPE) answers as healthy, 1 otherwise."""
    chosen = _role(role)
    from switchyard.roles.healthcheck import check_within

    healthy, reason = check_within(chosen, _settings())
    click.echo(reason, err=not healthy)
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: a check thread stuck on a dead socket must not hold the process open.
    os._exit(0 if healthy else 1)


@main.command("wait-for-schema")
@click.option(
    "--timeout",
    type=click.FloatRange(0, 86400),
    default=600.0,
    show_default=True,
    help="Seconds to wait before giving up (exit 1).",
)
def wait_for_schema(timeout: float) -> None:
    """Wait until the database is at this image's migrations (or past them), then exit 0: the
    init container that holds a role back until the migrate role has run. Migrates nothing."""
    settings = _settings()
    configure_logging(settings.log_level, "wait-for-schema")
    if settings.database is None:
        _fail("configuration error: DATABASE_URL is required", EXIT_CONFIG)
    from switchyard.db import migrate
    from switchyard.domains import load_domains, version_locations

    locations = version_locations(load_domains(settings.domain_packages))
    try:
        state = asyncio.run(migrate.wait_for_schema(settings.database, timeout, locations))
    except Exception as exc:  # still unreachable at the deadline
        _fail(f"the database could not be reached within {timeout:g} s: {exc}", 1)
    if not state.ready:
        _fail(
            f"{state.describe()}; not migrated within {timeout:g} s: run the migrate role "
            "(switchyard run migrate) with this image",
            1,
        )
    click.echo(f"schema ready: {state.describe()}")


@main.command()
@click.argument("name")
@click.option("--yes", is_flag=True, help="Replace the current data without asking.")
def restore(name: str, yes: bool) -> None:
    """Restore the backup NAME (from BACKUP_BUCKET or BACKUP_DIR): its databases replace the
    current ones, its objects and vector collections are written back. The archive is verified
    first: a corrupt one changes nothing."""
    settings = _settings()
    configure_logging(settings.log_level, "restore")
    if settings.database is None:
        _fail("configuration error: DATABASE_URL is required", EXIT_CONFIG)
    if not yes:
        _fail("restore replaces the current databases: add --yes to go on", EXIT_USAGE)
    from switchyard.platform.backup import BackupError, Backups
    from switchyard.services.objects import create_object_store
    from switchyard.services.vectors import VectorStore

    async def restore_it() -> dict[str, object]:
        objects, vectors = create_object_store(settings), VectorStore.from_settings(settings)
        try:
            return await Backups(settings, objects, vectors).restore(name)
        finally:
            await objects.close()
            await vectors.close()

    try:
        manifest = asyncio.run(restore_it())
    except BackupError as exc:
        _fail(f"nothing was restored: {exc}", 1)
    click.echo(f"restored {name} (made {manifest['created_at']})")


@main.command()
def backups() -> None:
    """List the backups kept (BACKUP_BUCKET or BACKUP_DIR), oldest first."""
    settings = _settings()
    from switchyard.platform.backup import Target

    for name in Target(settings).names():
        click.echo(name)


@main.command("rotate-data-source-keys")
def rotate_data_source_keys() -> None:
    """Re-encrypt every stored data source URL with the first key of DATA_SOURCE_KEYS."""
    settings = _settings()
    if settings.database is None:
        _fail("configuration error: DATABASE_URL is required", EXIT_CONFIG)
    from switchyard.datasources.service import rotate_all
    from switchyard.errors import SwitchyardError

    try:
        count = asyncio.run(rotate_all(settings))
    except SwitchyardError as exc:
        _fail(f"nothing was changed: {exc.detail}", 1)
    click.echo(f"re-encrypted {count} data source URL(s) with the newest key")

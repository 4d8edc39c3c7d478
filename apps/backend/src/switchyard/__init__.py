"""Switchyard: a backend foundation for multi-tenant AI SaaS products."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("switchyard")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

API_VERSION = "v1"

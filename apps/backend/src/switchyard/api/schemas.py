"""Response bodies of the gateway's own routes."""

from __future__ import annotations

from pydantic import BaseModel


class ApiInfo(BaseModel):
    name: str
    version: str
    api_version: str
    service_type: str
    environment: str


class Limits(BaseModel):
    max_request_body_bytes: int
    health_probe_timeout_seconds: float
    health_cache_seconds: float
    database_pool_size: int
    database_max_overflow: int
    database_statement_timeout_ms: int


class RuntimeConfig(BaseModel):
    """What a client may know of this deployment: never a secret."""

    name: str
    version: str
    environment: str
    service_type: str
    features: list[str]
    cors_origins: list[str]
    limits: Limits
    services: dict[str, bool]

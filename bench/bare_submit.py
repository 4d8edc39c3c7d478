"""References for the task submission benchmark: the least a FastAPI route accepting runs does.

`POST /run`: a bearer header and a JSON body validated by a pydantic model, then the
baseline's confirmed `apply_async` in a worker thread (as the gateway publishes), then 202.
No authentication lookup, ledger, limits or middleware: what FastAPI plus a confirmed publish
cost on this machine, before any Switchyard code runs.

`POST /run-ledger`: the same plus the least the submission contract needs, written straight
on the drivers (asyncpg, redis-py, PyJWT) with no Switchyard code, SQLAlchemy or middleware:
the access token verified and its holder read (user active, tenant not suspended) in one
statement, both rate limits counted in one Redis script, the ledger row inserted before the
publish and `published_at` set after it (the outbox order). What any implementation of the
contract costs here, at the least; the gap between it and the gateway is Switchyard's own.

Served by `python -m uvicorn bench.bare_submit:app` with the gateway's uvicorn settings;
`/run-ledger` reads BENCH_LEDGER_DATABASE_URL (a migrated Switchyard database), BENCH_REDIS_URL and
JWT_SECRET."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from typing import Annotated, Any

import asyncpg
import jwt
import redis.asyncio as redis
from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, Field

from bench.celery_baseline import noop

app = FastAPI()


class RunIn(BaseModel):
    task: str = Field(max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)


class RunAccepted(BaseModel):
    task_id: uuid.UUID


@app.post("/run", status_code=202)
async def run(body: RunIn, authorization: Annotated[str, Header()]) -> RunAccepted:
    if not authorization.startswith("Bearer "):
        raise HTTPException(401)
    task_id = uuid.uuid4()
    await asyncio.to_thread(noop.apply_async, task_id=str(task_id))
    return RunAccepted(task_id=task_id)


_HOLDER = "SELECT u.is_active, t.status FROM users u JOIN tenants t ON t.id = $2 WHERE u.id = $1"
_INSERT = (
    "INSERT INTO task_runs (id, tenant_id, task, queue, payload, state, attempts, request_hash)"
    " VALUES ($1, $2, $3, 'default', $4, 'queued', 0, NULL)"
)
_PUBLISHED = "UPDATE task_runs SET published_at = now() WHERE id = $1"
# Fixed windows of 60 s for the caller and for the tenant's runs, counted in one round trip.
_LIMITS = """
local counts = {}
for i, key in ipairs(KEYS) do
  counts[i] = redis.call('INCR', key)
  if counts[i] == 1 then redis.call('EXPIRE', key, 60) end
end
return counts
"""
_drivers: dict[str, Any] = {}


async def _connect() -> tuple[asyncpg.Pool, Any]:
    if not _drivers:
        database = os.environ["BENCH_LEDGER_DATABASE_URL"].replace(
            "postgresql+asyncpg", "postgresql"
        )
        client = redis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1"))
        _drivers["pool"] = await asyncpg.create_pool(database, min_size=2, max_size=10)
        _drivers["limits"] = client.register_script(_LIMITS)
    return _drivers["pool"], _drivers["limits"]


@app.post("/run-ledger", status_code=202)
async def run_ledger(body: RunIn, authorization: Annotated[str, Header()]) -> RunAccepted:
    scheme, _, token = authorization.partition(" ")
    try:
        claims = jwt.decode(
            token,
            os.environ["JWT_SECRET"],
            algorithms=["HS256"],
            issuer="switchyard",
            audience="switchyard-api",
            options={"require": ["exp", "iat", "sub", "iss", "aud"]},
        )
        user_id, tenant_id = uuid.UUID(claims["sub"]), uuid.UUID(claims["tid"])
    except (jwt.PyJWTError, KeyError, ValueError):
        raise HTTPException(401) from None
    pool, limits = await _connect()
    holder = await pool.fetchrow(_HOLDER, user_id, tenant_id)
    if scheme.lower() != "bearer" or holder is None or not holder["is_active"]:
        raise HTTPException(401)
    if holder["status"] == "suspended":
        raise HTTPException(403)
    counts = await limits(keys=[f"api:{user_id}", f"runs:{tenant_id}"])
    if max(counts) > 100_000_000:
        raise HTTPException(429)
    task_id = uuid.uuid4()
    await pool.execute(_INSERT, task_id, tenant_id, body.task, json.dumps(body.payload))
    await asyncio.to_thread(noop.apply_async, task_id=str(task_id))
    await pool.execute(_PUBLISHED, task_id)
    return RunAccepted(task_id=task_id)

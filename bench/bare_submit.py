"""A reference for the task submission benchmark: the least a FastAPI route accepting runs does.

`POST /run` with a bearer header and a JSON body validated by a pydantic model, then the
baseline's confirmed `apply_async` in a worker thread (as the gateway publishes), then 202.
No authentication lookup, ledger, limits or middleware: what FastAPI plus a confirmed publish
cost on this machine, before any Switchyard code runs.
Served by `python -m uvicorn bench.bare_submit:app` with the gateway's uvicorn settings."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

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

"""Presigned downloads of the local object store (MinIO serves its own links)."""

from __future__ import annotations

import os

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from switchyard.errors import NotFoundError
from switchyard.platform.dependencies import ServicesDep
from switchyard.services.objects import LocalObjectStore

router = APIRouter(tags=["objects"], include_in_schema=False)


@router.get("/objects/{key:path}")
async def presigned_download(
    key: str,
    services: ServicesDep,
    expires: int = Query(ge=0),
    signature: str = Query(max_length=100),
) -> FileResponse:
    store = services.objects
    if not isinstance(store, LocalObjectStore):
        raise NotFoundError("no such object")
    path = store.verify(key, expires, signature)
    if not os.path.isfile(path):  # noqa: ASYNC240 - one stat
        raise NotFoundError("no such object")
    info = store.info_of(key, key)
    return FileResponse(path, media_type=info.content_type, filename=path.name)

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from switchyard.datasources.connect import MAX_URL_LENGTH, Kind, parse


def _url(value: str) -> str:
    parse(value)
    return value


ConnectionURL = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="postgresql://user:password@host:5432/db or mysql://user:password@host/db",
    ),
    AfterValidator(_url),
]
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]


class DataSourceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    url: ConnectionURL


class DataSourceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    url: ConnectionURL | None = None


class DataSourceRead(BaseModel):
    id: uuid.UUID
    name: str
    kind: Kind
    url: str = Field(description="The connection URL with its password shown as ***")
    created_at: datetime
    updated_at: datetime


class DataSourcePage(BaseModel):
    items: list[DataSourceRead]

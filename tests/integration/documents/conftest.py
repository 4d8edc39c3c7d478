"""Fixtures of the documents tests: each module's `app` fixture sets the settings it needs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from tests.fixtures.accounts import Account, sign_up
from tests.fixtures.gateway import running


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with running(app) as client:
        yield client


@pytest.fixture
async def owner(client: httpx.AsyncClient) -> Account:
    """A fresh tenant's owner; `client` is signed in as them."""
    account = await sign_up(client)
    client.headers.update(account.headers)
    return account

"""No caller sees another tenant's data: another tenant's id answers like an unknown id; and
for every route with an id, no credentials answer 401 and an API key without the route's scope
403.

`test_every_route_with_an_id_has_a_cross_tenant_case` reads the OpenAPI document and fails
when a route that takes an id is added without a case here; the scope a route requires is
read from the app itself."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from switchyard.api.app import create_app
from switchyard.auth.dependencies import (
    get_principal,
    require_owner,
    require_superuser,
    require_tenant_admin,
    require_user,
)
from switchyard.auth.scopes import SCOPES
from switchyard.db.base import Base
from switchyard.db.models import (
    DeadLetter,
    Invitation,
    KnowledgeDocument,
    Membership,
    Role,
    RunState,
    TaskRun,
    User,
)
from switchyard.db.tenancy import tenant_owned
from tests.fixtures.accounts import Account, sign_up
from tests.fixtures.gateway import SettingsFactory, running
from tests.fixtures.tasks import DELIVERY_LIMIT


@dataclass
class Owned:
    """Resources of tenant A."""

    definition: str
    run_id: uuid.UUID
    letter_id: uuid.UUID
    key_id: str
    source_id: str
    document_id: uuid.UUID
    member_id: uuid.UUID
    invitation_id: str
    client_id: str
    export_id: uuid.UUID
    workflow: str
    workflow_run_id: uuid.UUID


# route -> (the id of A's resource it is called with, the status another tenant gets)
CASES: dict[tuple[str, str], tuple[str, int]] = {
    ("get", "/api/v1/tasks/definitions/{name}"): ("definition", 404),
    ("patch", "/api/v1/tasks/definitions/{name}"): ("definition", 404),
    ("delete", "/api/v1/tasks/definitions/{name}"): ("definition", 404),
    ("get", "/api/v1/tasks/{task_id}"): ("run_id", 404),
    ("post", "/api/v1/tasks/{task_id}/cancel"): ("run_id", 404),
    ("get", "/api/v1/tasks/{task_id}/events"): ("run_id", 404),
    ("post", "/api/v1/tasks/dead-letters/{letter_id}/replay"): ("letter_id", 404),
    ("delete", "/api/v1/tasks/dead-letters/{letter_id}"): ("letter_id", 404),
    ("delete", "/api/v1/api-keys/{key_id}"): ("key_id", 404),
    ("get", "/api/v1/data-sources/{source_id}"): ("source_id", 404),
    ("patch", "/api/v1/data-sources/{source_id}"): ("source_id", 404),
    ("delete", "/api/v1/data-sources/{source_id}"): ("source_id", 404),
    ("post", "/api/v1/data-sources/{source_id}/test"): ("source_id", 404),
    ("get", "/api/v1/documents/{document_id}"): ("document_id", 404),
    ("get", "/api/v1/documents/{document_id}/content"): ("document_id", 404),
    ("post", "/api/v1/documents/{document_id}/ingest"): ("document_id", 404),
    ("post", "/api/v1/documents/{document_id}/entities"): ("document_id", 404),
    # An unknown id and another tenant's both answer 404, deleting nothing.
    ("delete", "/api/v1/documents/{document_id}"): ("document_id", 404),
    # The id is looked at first: 404, whether or not this deployment has a graph.
    ("get", "/api/v1/documents/{document_id}/graph"): ("document_id", 404),
    # Superuser routes: a tenant's owner is refused whatever the id, so nothing is revealed.
    ("post", "/api/v1/tenants/{tenant_id}/suspend"): ("tenant_id", 403),
    ("post", "/api/v1/tenants/{tenant_id}/activate"): ("tenant_id", 403),
    ("patch", "/api/v1/tenants/{tenant_id}"): ("tenant_id", 403),
    ("post", "/api/v1/tenants/{tenant_id}/deletion"): ("tenant_id", 403),
    ("delete", "/api/v1/tenants/{tenant_id}/deletion"): ("tenant_id", 403),
    ("get", "/api/v1/tenants/current/exports/{export_id}"): ("export_id", 404),
    # Plans are the platform's: any name is refused to a tenant's owner.
    ("get", "/api/v1/plans/{name}"): ("tenant_id", 403),
    ("patch", "/api/v1/plans/{name}"): ("tenant_id", 403),
    ("delete", "/api/v1/plans/{name}"): ("tenant_id", 403),
    ("patch", "/api/v1/members/{user_id}"): ("member_id", 404),
    ("delete", "/api/v1/members/{user_id}"): ("member_id", 404),
    ("post", "/api/v1/invitations/{invitation_id}/resend"): ("invitation_id", 404),
    ("delete", "/api/v1/invitations/{invitation_id}"): ("invitation_id", 404),
    ("delete", "/api/v1/oauth-clients/{client_id}"): ("client_id", 404),
    ("get", "/api/v1/workflows/{name}"): ("workflow", 404),
    ("put", "/api/v1/workflows/{name}"): ("workflow", 404),
    ("delete", "/api/v1/workflows/{name}"): ("workflow", 404),
    ("get", "/api/v1/workflows/{name}/versions/{version}"): ("workflow", 404),
    ("post", "/api/v1/workflows/{name}/runs"): ("workflow", 404),
    ("post", "/api/v1/workflows/{name}/runs/bulk"): ("workflow", 404),
    ("get", "/api/v1/workflows/runs/{run_id}"): ("workflow_run_id", 404),
    ("get", "/api/v1/workflows/runs/{run_id}/events"): ("workflow_run_id", 404),
    ("post", "/api/v1/workflows/runs/{run_id}/cancel"): ("workflow_run_id", 404),
    ("post", "/api/v1/workflows/runs/{run_id}/steps/{step}/replay"): ("workflow_run_id", 404),
}
WORKFLOW_STEPS = [{"name": "say", "task": "system.echo", "payload": {"message": "a"}}]
BODIES = {
    ("patch", "/api/v1/tasks/definitions/{name}"): {"enabled": False},
    ("patch", "/api/v1/data-sources/{source_id}"): {"name": "taken over"},
    ("patch", "/api/v1/tenants/{tenant_id}"): {"max_runs_in_flight": 5},
    ("patch", "/api/v1/plans/{name}"): {"description": "taken over"},
    ("post", "/api/v1/tenants/{tenant_id}/deletion"): {"grace_days": 0},
    ("patch", "/api/v1/members/{user_id}"): {"role": "admin"},
    ("put", "/api/v1/workflows/{name}"): {"steps": WORKFLOW_STEPS, "description": "taken"},
    ("post", "/api/v1/workflows/{name}/runs"): {"input": None},
    ("post", "/api/v1/workflows/{name}/runs/bulk"): {"runs": [{"input": None}]},
}


@pytest.fixture(scope="module")
async def api_client(
    make_settings: SettingsFactory, broker_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    """One gateway for the module: its tests only read, or are refused."""
    settings = make_settings(celery_broker_url=broker_url, task_delivery_limit=DELIVERY_LIMIT)
    async with running(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
async def tenants(
    api_client: httpx.AsyncClient, engine: AsyncEngine
) -> tuple[Account, Account, Owned]:
    """Two tenants, and one of each of A's resources: made once for the module, whose tests
    change none of them (every call they make is refused, or reads)."""
    a, b = await sign_up(api_client, "Tenant A"), await sign_up(api_client, "Tenant B")
    name = f"def-{uuid.uuid4().hex[:6]}"
    created = await api_client.post(
        "/api/v1/tasks/register",
        json={"name": name, "task": "system.echo", "payload": {"message": "a"}},
        headers=a.headers,
    )
    assert created.status_code == 201
    key = await api_client.post(
        "/api/v1/api-keys", json={"name": "a", "scopes": ["tasks:read"]}, headers=a.headers
    )
    run = TaskRun(
        tenant_id=a.tenant_id,
        task="system.echo",
        queue="default",
        payload={"message": "a"},
        state=RunState.QUEUED,
        attempts=0,
    )
    export = TaskRun(
        tenant_id=a.tenant_id,
        task="tenants.export",
        queue="default",
        payload={},
        state=RunState.QUEUED,
        attempts=0,
    )
    async with async_sessionmaker(engine, expire_on_commit=False).begin() as session:
        session.add_all([run, export])
        await session.flush()
        letter = DeadLetter(
            tenant_id=a.tenant_id,
            run_id=run.id,
            task="system.echo",
            queue="default",
            payload={"message": "a"},
            reason="rejected",
            attempts=1,
            dead_lettered_at=datetime.now(UTC),
            headers={},
        )
        session.add(letter)
    source = await api_client.post(
        "/api/v1/data-sources",
        json={"name": "crm", "url": "postgresql://crm:pw@crm.example.com/crm"},
        headers=a.headers,
    )
    assert source.status_code == 201
    document = KnowledgeDocument(
        tenant_id=a.tenant_id,
        title="Handbook",
        filename="handbook.md",
        content_type="text/markdown",
        size_bytes=10,
        object_key="documents/x/original",
    )
    member = User(email=f"member-{uuid.uuid4().hex[:8]}@example.com", password_hash="x")
    async with async_sessionmaker(engine, expire_on_commit=False).begin() as session:
        session.add(document)
        session.add(member)
        await session.flush()
        session.add(Membership(user_id=member.id, tenant_id=a.tenant_id, role=Role.MEMBER))
    invitation = Invitation(
        tenant_id=a.tenant_id,
        email="invitee@example.com",
        role=Role.MEMBER,
        secret_hash="0" * 64,
        nonce="0" * 32,
        expires_at=datetime.now(UTC) + timedelta(days=1),
    )
    async with async_sessionmaker(engine, expire_on_commit=False).begin() as session:
        session.add(invitation)
    client = await api_client.post(
        "/api/v1/oauth-clients", json={"name": "etl", "scopes": ["tasks:read"]}, headers=a.headers
    )
    assert client.status_code == 201, client.text
    workflow = f"wf-{uuid.uuid4().hex[:6]}"
    registered = await api_client.post(
        "/api/v1/workflows", json={"name": workflow, "steps": WORKFLOW_STEPS}, headers=a.headers
    )
    assert registered.status_code == 201, registered.text
    started = await api_client.post(
        f"/api/v1/workflows/{workflow}/runs", json={"input": None}, headers=a.headers
    )
    assert started.status_code == 202, started.text
    owned = Owned(
        name,
        run.id,
        letter.id,
        key.json()["id"],
        source.json()["id"],
        document.id,
        member.id,
        str(invitation.id),
        client.json()["id"],
        export.id,
        workflow,
        uuid.UUID(started.json()["id"]),
    )
    return a, b, owned


def owned_id(tenants: tuple[Account, Account, Owned], method: str, template: str) -> str:
    """The id of tenant A's resource that the route is called with."""
    a, _, owned = tenants
    attribute, _ = CASES[(method, template)]
    return str(a.tenant_id) if attribute == "tenant_id" else str(getattr(owned, attribute))


def url(template: str, value: str) -> str:
    """The route with `value` for its first parameter (a second one, a version, is 1)."""
    start, end = template.index("{"), template.index("}")
    filled = template[:start] + value + template[end + 1 :]
    return re.sub(r"\{[a-z_]+\}", "1", filled)


async def test_every_route_with_an_id_has_a_cross_tenant_case(
    api_client: httpx.AsyncClient,
) -> None:
    spec = (await api_client.get("/openapi.json")).json()
    with_ids = {
        (method, path)
        for path, operations in spec["paths"].items()
        if "{" in path
        for method in operations
    }
    assert with_ids == set(CASES)


def test_every_tenant_owned_table_has_a_non_null_tenant_id() -> None:
    owned = [table for table in Base.metadata.sorted_tables if "tenant_id" in table.c]
    assert {table.name for table in owned} >= {"task_runs", "task_definitions", "dead_letters"}
    assert [table.name for table in owned if table.c.tenant_id.nullable] == []
    for mapper in Base.registry.mappers:
        assert tenant_owned(mapper.class_) == ("tenant_id" in mapper.local_table.c)


@pytest.mark.parametrize(("method", "template"), sorted(CASES))
async def test_another_tenants_id_answers_like_an_unknown_id(
    api_client: httpx.AsyncClient,
    tenants: tuple[Account, Account, Owned],
    method: str,
    template: str,
) -> None:
    a, b, _ = tenants
    attribute, expected = CASES[(method, template)]
    value = owned_id(tenants, method, template)
    unknown = "no-such-name" if attribute in ("definition", "workflow") else str(uuid.uuid4())
    body = BODIES.get((method, template))
    theirs = await api_client.request(method, url(template, value), json=body, headers=b.headers)
    missing = await api_client.request(method, url(template, unknown), json=body, headers=b.headers)
    assert theirs.status_code == missing.status_code == expected
    if expected != 204:
        assert theirs.json()["code"] == missing.json()["code"]
    # And the owner still sees it untouched.
    if attribute == "document_id" and method == "delete":
        kept = await api_client.get(f"/api/v1/documents/{value}", headers=a.headers)
        assert kept.status_code == 200
    if method == "get" and attribute != "tenant_id" and template.endswith("}"):
        mine = await api_client.get(url(template, value), headers=a.headers)
        assert mine.status_code == 200


async def test_lists_show_only_the_callers_tenant(
    api_client: httpx.AsyncClient, tenants: tuple[Account, Account, Owned]
) -> None:
    a, b, owned = tenants
    for path in ("/api/v1/tasks/", "/api/v1/tasks/dead-letters", "/api/v1/tasks/registered"):
        seen_by_b = (await api_client.get(path, headers=b.headers)).text
        seen_by_a = (await api_client.get(path, headers=a.headers)).text
        for marker in (str(owned.run_id), str(owned.letter_id), owned.definition):
            assert marker not in seen_by_b
        assert any(
            marker in seen_by_a
            for marker in (str(owned.run_id), str(owned.letter_id), owned.definition)
        )
    keys_of_b = (await api_client.get("/api/v1/api-keys", headers=b.headers)).json()
    assert owned.key_id not in {key["id"] for key in keys_of_b}


# The access matrix: for every route with an id, the guard it declares (read from the app, so
# a new route is covered by construction) and what callers without it get.
ADMIN, SUPERUSER, USER, OWNER = "tenant admin", "superuser", "signed-in user", "tenant owner"
ROLE_GUARDS = {
    require_tenant_admin: ADMIN,
    require_superuser: SUPERUSER,
    require_user: USER,
    require_owner: OWNER,
}
# Routes anyone may call: sign-up and sign-in, the account links (their token is the
# credential), the OAuth token endpoint (client credentials), health, docs and metrics.
PUBLIC = {
    ("post", "/api/v1/auth/register"),
    ("post", "/api/v1/auth/login"),
    ("post", "/api/v1/auth/refresh"),
    ("post", "/api/v1/auth/logout"),
    ("post", "/api/v1/auth/password-reset"),
    ("post", "/api/v1/auth/password-reset/confirm"),
    ("post", "/api/v1/auth/verify-email"),
    ("post", "/api/v1/auth/verify-email/resend"),
    ("post", "/api/v1/invitations/accept"),
    ("post", "/api/v1/oauth/token"),
    # An export's download: its signed, expiring link is the credential (404 without one).
    ("get", "/api/v1/exports/download"),
    # Development without SMTP_HOST, to loopback callers only (tests/integration/accounts/
    # test_dev_mailbox.py); 404 everywhere else.
    ("get", "/api/v1/dev-mailbox"),
    ("get", "/api/v1/"),
    ("get", "/api/v1/health"),
    ("get", "/api/v1/health/live"),
    ("get", "/api/v1/health/ready"),
}


def guards(app: FastAPI, method: str, template: str) -> set[str]:
    """What a route requires of its caller: scopes, a tenant admin, a superuser."""
    route = next(
        context
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute)
        and context.path == template
        and method.upper() in (context.methods or ())
    )
    found: set[str] = set()
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        scope = getattr(dependant.call, "required_scope", None)
        if scope is not None:
            found.add(scope)
        if dependant.call in ROLE_GUARDS:
            found.add(ROLE_GUARDS[dependant.call])
        pending.extend(dependant.dependencies)
    return found


@pytest.fixture(scope="module")
def app(api_client: httpx.AsyncClient) -> FastAPI:
    transport = api_client._transport
    assert isinstance(transport, httpx.ASGITransport)
    return cast(FastAPI, transport.app)


@pytest.mark.parametrize(("method", "template"), sorted(CASES))
def test_every_route_with_an_id_is_guarded(app: FastAPI, method: str, template: str) -> None:
    found = guards(app, method, template)
    assert found, f"{method.upper()} {template} declares no scope or role"
    assert found <= {*SCOPES, *ROLE_GUARDS.values()}


def test_every_api_route_is_guarded_or_listed_as_public(app: FastAPI) -> None:
    """The scope matrix of every /api/v1 route, ids or not: a new route declares a scope or a
    role, or is added to PUBLIC on purpose."""
    unguarded = set()
    for context in iter_route_contexts(app.routes):
        if not isinstance(context.original_route, APIRoute):
            continue
        template = context.path or ""
        if not template.startswith("/api/v1/"):
            continue
        for method in context.methods or ():
            key = (method.lower(), template)
            if key in PUBLIC:
                continue
            required = guards(app, method.lower(), template)
            if not required and not _needs_principal(context.dependant):
                unguarded.add(key)
    assert unguarded == set()


def _needs_principal(dependant: Any) -> bool:
    """A route open to any caller of the tenant (its own reads: /auth/me, /tenants/current,
    data a scope does not gate) still needs credentials."""
    pending = [dependant]
    while pending:
        current = pending.pop()
        if current.call is get_principal:
            return True
        pending.extend(current.dependencies)
    return False


@pytest.mark.parametrize(("method", "template"), sorted(CASES))
async def test_without_credentials_every_route_with_an_id_answers_401(
    api_client: httpx.AsyncClient,
    tenants: tuple[Account, Account, Owned],
    method: str,
    template: str,
) -> None:
    value = owned_id(tenants, method, template)
    body = BODIES.get((method, template))
    answer = await api_client.request(method, url(template, value), json=body)
    assert answer.status_code == 401, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["www-authenticate"].lower().startswith("bearer")


@pytest.mark.parametrize(("method", "template"), sorted(CASES))
async def test_an_api_key_without_the_routes_scope_gets_403_on_its_own_tenants_id(
    api_client: httpx.AsyncClient,
    app: FastAPI,
    tenants: tuple[Account, Account, Owned],
    method: str,
    template: str,
) -> None:
    a = tenants[0]
    value = owned_id(tenants, method, template)
    required = guards(app, method, template)
    # Every scope but the route's own (a key is never a tenant admin or a superuser).
    others = sorted(set(SCOPES) - required)
    key = await api_client.post(
        "/api/v1/api-keys", json={"name": "narrow", "scopes": others}, headers=a.headers
    )
    assert key.status_code == 201, key.text
    headers = {"X-API-Key": key.json()["key"]}
    body = BODIES.get((method, template))
    answer = await api_client.request(method, url(template, value), json=body, headers=headers)
    assert answer.status_code == 403, answer.text
    assert answer.json()["code"] == "forbidden"
    for scope in required & set(SCOPES):
        assert scope in answer.json()["detail"]


async def test_without_credentials_every_guarded_route_answers_401(
    api_client: httpx.AsyncClient, app: FastAPI
) -> None:
    """Every /api/v1 route but the public ones, ids or not, new or old."""
    answers = {}
    for context in iter_route_contexts(app.routes):
        if not isinstance(context.original_route, APIRoute):
            continue
        template = context.path or ""
        if not template.startswith("/api/v1/"):
            continue
        for method in sorted(context.methods or ()):
            if (method.lower(), template) in PUBLIC:
                continue
            path = template
            while "{" in path:
                path = url(path, str(uuid.uuid4()))
            answer = await api_client.request(method, path)
            answers[(method, template)] = answer.status_code
    assert answers
    assert set(answers.values()) == {401}, answers

"""/oauth/token (the client-credentials grant) and /oauth-clients (a tenant's clients)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse

from switchyard.auth.dependencies import TenantAdminDep, client_address
from switchyard.errors import TooManyRequestsError
from switchyard.oauth import service
from switchyard.oauth.repository import ClientRepository
from switchyard.oauth.schemas import AccessToken, ClientCreated, ClientIn, ClientOut, TokenError
from switchyard.platform.dependencies import RateLimiterDep, SessionDep, SettingsDep

router = APIRouter(prefix="/oauth", tags=["oauth"])
clients_router = APIRouter(prefix="/oauth-clients", tags=["oauth"])

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
FORM = "application/x-www-form-urlencoded"
MAX_FIELD = 1024


def client_out(client: object) -> ClientOut:
    return ClientOut.model_validate(client, from_attributes=True)


def _error(
    failure: service.TokenRequestError, basic: bool, retry_after: int | None = None
) -> JSONResponse:
    headers = dict(NO_STORE)
    if failure.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="switchyard"' if basic else "Basic"
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    body = TokenError(error=failure.error, error_description=failure.description)
    return JSONResponse(body.model_dump(), status_code=failure.status, headers=headers)


async def _form(request: Request) -> dict[str, str]:
    if not request.headers.get("content-type", "").startswith(FORM):
        raise service.TokenRequestError("invalid_request", f"The token request is a form ({FORM}).")
    form = await request.form(max_files=0, max_fields=20)
    fields: dict[str, str] = {}
    for name, value in form.multi_items():
        if not isinstance(value, str) or len(value) > MAX_FIELD:
            raise service.TokenRequestError("invalid_request", f"The field {name} is not valid.")
        if name in fields:
            raise service.TokenRequestError("invalid_request", f"The field {name} is repeated.")
        fields[name] = value
    return fields


@router.post(
    "/token",
    responses={
        400: {"model": TokenError, "description": "RFC 6749 §5.2 error"},
        401: {"model": TokenError, "description": "invalid_client"},
        429: {
            "model": TokenError,
            "description": "slow_down: too many requests from this address (Retry-After)",
        },
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                FORM: {
                    "schema": {
                        "type": "object",
                        "required": ["grant_type"],
                        "properties": {
                            "grant_type": {"type": "string", "enum": ["client_credentials"]},
                            "scope": {"type": "string", "description": "Space-separated"},
                            "client_id": {"type": "string"},
                            "client_secret": {"type": "string", "format": "password"},
                        },
                    }
                }
            },
        }
    },
)
async def token(
    request: Request, session: SessionDep, settings: SettingsDep, limiter: RateLimiterDep
) -> AccessToken:
    """The OAuth2 client-credentials grant (RFC 6749 §4.4): the client authenticates with
    HTTP Basic or the form's client_id/client_secret; the answer is a short-lived bearer token
    (OAUTH_TOKEN_MINUTES) accepted everywhere an API key is.

    Limits, answered as RFC 6749 errors (`slow_down`, 429, Retry-After): RATE_LIMIT_TOKENS
    requests per client address, and RATE_LIMIT_CLIENT_FAILURES failed authentications per
    client id *and* address, so that wrong secrets sent from elsewhere never lock a client out.
    """
    basic = request.headers.get("authorization", "").lower().startswith("basic ")
    address = client_address(request)
    try:
        await limiter.enforce(settings.rate_limit_tokens, "tokens", address)
        form = await _form(request)
        grant_type = form.get("grant_type")
        if not grant_type:
            raise service.TokenRequestError("invalid_request", "grant_type is required.")
        if grant_type != "client_credentials":
            raise service.TokenRequestError(
                "unsupported_grant_type", "Only grant_type=client_credentials is supported."
            )
        presented = service.credentials(request.headers.get("authorization"), form)
        failures = ("client_failures", presented.client_id[:40], address)
        await limiter.enforce(settings.rate_limit_client_failures, *failures, count=False)
        try:
            answer = await service.grant(session, settings, presented, form.get("scope"))
        except service.TokenRequestError as failure:
            if failure.error == "invalid_client":
                await limiter.hit(settings.rate_limit_client_failures, *failures)
            raise
    except service.TokenRequestError as failure:
        return _error(failure, basic)  # type: ignore[return-value]
    except TooManyRequestsError as limited:
        slow_down = service.TokenRequestError("slow_down", limited.detail, status=429)
        return _error(slow_down, basic, limited.retry_after)  # type: ignore[return-value]
    return JSONResponse(answer.model_dump(), headers=NO_STORE)  # type: ignore[return-value]


@clients_router.post("", status_code=status.HTTP_201_CREATED)
async def create_client(
    body: ClientIn, admin: TenantAdminDep, session: SessionDep
) -> ClientCreated:
    """A client with a subset of scopes; its secret is in this answer only."""
    client, secret = await service.create(session, admin, body)
    return ClientCreated(**client_out(client).model_dump(), client_secret=secret)


@clients_router.get("")
async def list_clients(admin: TenantAdminDep, session: SessionDep) -> list[ClientOut]:
    return [
        client_out(client)
        for client in await ClientRepository(session, admin.tenant_id).oldest_first()
    ]


@clients_router.delete("/{client_id}")
async def revoke_client(
    client_id: uuid.UUID, admin: TenantAdminDep, session: SessionDep
) -> ClientOut:
    """Revoke: its tokens are refused from the next request on."""
    return client_out(await service.revoke(session, admin, client_id))

"""The OpenAPI document states the error answers of every API route: each is RFC 9457 problem
details (`application/problem+json`, the `Problem` schema), including 422, which FastAPI would
otherwise document as its own `HTTPValidationError` in `application/json`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from switchyard.api.problems import PROBLEM_MEDIA_TYPE, Problem

ERROR_RESPONSES: dict[str, str] = {
    "400": "The request cannot be read (a malformed cursor, say)",
    "401": "No credentials, or invalid or expired ones",
    "403": "The caller lacks the scope or role, or its tenant is suspended",
    "404": "Nothing by that id or name in the caller's tenant",
    "409": "In conflict with the current state (a name taken, a run already final, ...)",
    "413": "The request body is larger than allowed",
    "422": "The input is invalid; `errors` names each field",
    "429": "A rate limit was reached; retry after `Retry-After` seconds",
    "503": "A service the request needs is unreachable or not configured",
}
_PROBLEM = {"$ref": "#/components/schemas/Problem"}


def document_errors(app: FastAPI) -> None:
    """Add the problem answers to every operation under /api/ when the document is built."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        built = app.openapi_schema is not None
        schema = build()
        if not built:
            _add_problems(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_problems(schema: dict[str, Any]) -> None:
    problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(problem.pop("$defs", {}))
    components["Problem"] = problem
    for path, operations in schema.get("paths", {}).items():
        if not path.startswith("/api/"):
            continue
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status, description in ERROR_RESPONSES.items():
                documented = responses.get(status, {}).get("content", {})
                # A route's own error bodies stay (the OAuth token endpoint's RFC 6749 JSON);
                # a 422 FastAPI documented itself is replaced by the problem it really is.
                kept = {
                    media: body
                    for media, body in documented.items()
                    if "HTTPValidationError" not in str(body)
                }
                responses[status] = {
                    "description": responses.get(status, {}).get("description", description),
                    "content": {**kept, PROBLEM_MEDIA_TYPE: {"schema": _PROBLEM}},
                }
    for unused in ("HTTPValidationError", "ValidationError"):
        if unused not in str(schema.get("paths")):
            components.pop(unused, None)

"""Workflow definitions over REST: registered after every check, versioned, listed, deleted,
and kept to their tenant."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fixtures.accounts import sign_up

PROBLEM = "application/problem+json"
WORKFLOWS = "/api/v1/workflows"


def pipeline(name: str = "pipeline") -> dict[str, Any]:
    """Three levels and a map: split → each item echoed → combined."""
    return {
        "name": name,
        "description": "split, echo each, combine",
        "steps": [
            {"name": "split", "task": "system.echo", "payload": {"message": {"$input": "/text"}}},
            {
                "name": "each",
                "task": "system.echo",
                "needs": ["split"],
                "map": {"$input": "/items"},
                "payload": {"message": {"$item": "/label"}},
            },
            {
                "name": "combine",
                "task": "system.echo",
                "needs": ["split", "each"],
                "payload": {"message": {"$step": "split", "pointer": "/message"}},
                "on_failure": "continue",
            },
        ],
    }


def errors(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    return {error["field"]: error["message"] for error in response.json()["errors"]}


async def test_a_workflow_is_registered_with_its_steps_as_given_and_their_defaults(
    tasks_api: httpx.AsyncClient,
) -> None:
    created = await tasks_api.post(WORKFLOWS, json=pipeline())
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["name"], body["version"]) == ("pipeline", 1)
    split, each, combine = body["steps"]
    assert split["needs"] == []
    assert split["on_failure"] == "fail_workflow"  # the default
    assert each["map"] == {"$input": "/items"}
    assert combine["on_failure"] == "continue"
    assert (await tasks_api.get(f"{WORKFLOWS}/pipeline")).json() == body


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (
            lambda steps: steps[0].update(needs=["combine"]),
            "body.steps.0.needs",
            "step 'split' is on a cycle",
        ),
        (
            lambda steps: steps[1].update(task="system.nope"),
            "body.steps.1.task",
            "step 'each': no task named 'system.nope'",
        ),
        (  # internal: started by the platform only, unknown to a tenant
            lambda steps: steps[1].update(task="documents.ingest"),
            "body.steps.1.task",
            "no task named 'documents.ingest'",
        ),
        (
            lambda steps: steps[2].update(needs=["each"]),
            "body.steps.2.payload.message",
            "step 'combine' refers to 'split', which is not one of its needs",
        ),
        (
            lambda steps: steps[2].update(needs=["split", "each", "ghost"]),
            "body.steps.2.needs.2",
            "no step is named 'ghost'",
        ),
        (
            lambda steps: steps[0].update(payload={"message": {"$item": ""}}),
            "body.steps.0.payload.message",
            "step 'split' uses $item but does not map",
        ),
        (
            lambda steps: steps[0].update(payload={"message": {"$input": "text"}}),
            "body.steps.0.payload.message",
            "not a JSON Pointer",
        ),
        (
            lambda steps: steps[1].update(map={"$step": "combine"}),
            "body.steps.1.map",
            "not one of its needs",
        ),
        (  # a literal the task's schema refuses
            lambda steps: steps.append(
                {"name": "nap", "task": "system.sleep", "payload": {"seconds": 301}}
            ),
            "body.steps.3.payload.seconds",
            "step 'nap'",
        ),
        (  # a required field neither given nor referred to
            lambda steps: steps.append({"name": "say", "task": "system.echo", "payload": {}}),
            "body.steps.3.payload.message",
            "step 'say'",
        ),
        (
            lambda steps: steps.append(dict(steps[0])),
            "body.steps.3.name",
            "step 'split' is named twice",
        ),
        (
            lambda steps: steps[2].update(on_failure="compensate"),
            "body.steps.2.compensation",
            "step 'combine' compensates",
        ),
    ],
)
async def test_a_graph_that_cannot_run_is_refused_naming_the_step_and_field(
    tasks_api: httpx.AsyncClient, change: Any, field: str, words: str
) -> None:
    body = pipeline()
    change(body["steps"])
    found = errors(await tasks_api.post(WORKFLOWS, json=body))
    assert field in found, found
    assert words in found[field]
    assert (await tasks_api.get(f"{WORKFLOWS}/pipeline")).status_code == 404  # nothing stored


async def test_every_problem_is_named_at_once(tasks_api: httpx.AsyncClient) -> None:
    body = pipeline()
    body["steps"][1]["task"] = "system.nope"
    body["steps"][2]["payload"] = {"message": {"$step": "ghost"}}
    found = errors(await tasks_api.post(WORKFLOWS, json=body))
    assert {"body.steps.1.task", "body.steps.2.payload.message"} <= set(found)


async def test_a_compensation_is_checked_like_a_step(tasks_api: httpx.AsyncClient) -> None:
    body = pipeline()
    body["steps"][2]["on_failure"] = "compensate"
    body["steps"][2]["compensation"] = {"task": "system.sleep", "payload": {"seconds": -1}}
    found = errors(await tasks_api.post(WORKFLOWS, json=body))
    assert "body.steps.2.compensation.payload.seconds" in found
    body["steps"][2]["compensation"] = {
        "task": "system.echo",
        "payload": {"message": {"$step": "split", "pointer": "/message"}},
    }
    created = await tasks_api.post(WORKFLOWS, json=body)
    assert created.status_code == 201, created.text
    assert created.json()["steps"][2]["compensation"]["task"] == "system.echo"


async def test_a_changed_definition_is_a_new_version_and_the_old_one_stays(
    tasks_api: httpx.AsyncClient,
) -> None:
    first = (await tasks_api.post(WORKFLOWS, json=pipeline("versioned"))).json()
    again = await tasks_api.post(WORKFLOWS, json=pipeline("versioned"))
    assert again.status_code == 409
    update = {key: value for key, value in pipeline("versioned").items() if key != "name"}
    same = await tasks_api.put(f"{WORKFLOWS}/versioned", json=update)
    assert same.status_code == 200
    assert same.json()["version"] == 1
    assert same.json()["id"] == first["id"]
    update["steps"][0]["payload"] = {"message": "fixed"}
    changed = await tasks_api.put(f"{WORKFLOWS}/versioned", json=update)
    assert changed.status_code == 201, changed.text
    assert changed.json()["version"] == 2
    assert (await tasks_api.get(f"{WORKFLOWS}/versioned")).json()["version"] == 2
    kept = (await tasks_api.get(f"{WORKFLOWS}/versioned/versions/1")).json()
    assert kept["steps"][0]["payload"] == {"message": {"$input": "/text"}}
    # A broken update changes nothing.
    update["steps"][0]["task"] = "system.nope"
    errors(await tasks_api.put(f"{WORKFLOWS}/versioned", json=update))
    assert (await tasks_api.get(f"{WORKFLOWS}/versioned")).json()["version"] == 2


async def test_a_deleted_workflow_keeps_its_versions_and_its_numbers(
    tasks_api: httpx.AsyncClient,
) -> None:
    await tasks_api.post(WORKFLOWS, json=pipeline("deleted"))
    assert (await tasks_api.delete(f"{WORKFLOWS}/deleted")).status_code == 204
    assert (await tasks_api.get(f"{WORKFLOWS}/deleted")).status_code == 404
    assert (await tasks_api.delete(f"{WORKFLOWS}/deleted")).status_code == 404
    assert (await tasks_api.get(f"{WORKFLOWS}/deleted/versions/1")).status_code == 200
    names = [
        w["name"] for w in (await tasks_api.get(WORKFLOWS, params={"limit": 200})).json()["items"]
    ]
    assert "deleted" not in names
    again = await tasks_api.post(WORKFLOWS, json=pipeline("deleted"))
    assert again.json()["version"] == 2  # a number never names two graphs


async def test_workflows_are_listed_newest_first_page_by_page_within_their_tenant(
    api_client: httpx.AsyncClient,
) -> None:
    owner = await sign_up(api_client, "Lister")
    other = await sign_up(api_client, "Other")
    for name in ("one", "two", "three"):
        created = await api_client.post(WORKFLOWS, json=pipeline(name), headers=owner.headers)
        assert created.status_code == 201
    update = {key: value for key, value in pipeline("one").items() if key != "name"}
    update["description"] = "changed"
    await api_client.put(f"{WORKFLOWS}/one", json=update, headers=owner.headers)
    first = (await api_client.get(WORKFLOWS, params={"limit": 2}, headers=owner.headers)).json()
    assert [(w["name"], w["version"]) for w in first["items"]] == [("one", 2), ("three", 1)]
    rest = (
        await api_client.get(
            WORKFLOWS, params={"limit": 2, "cursor": first["next_cursor"]}, headers=owner.headers
        )
    ).json()
    assert [w["name"] for w in rest["items"]] == ["two"]
    assert rest["next_cursor"] is None
    # Another tenant sees none of them, and may use the same names.
    assert (await api_client.get(WORKFLOWS, headers=other.headers)).json()["items"] == []
    assert (await api_client.get(f"{WORKFLOWS}/one", headers=other.headers)).status_code == 404
    mine = await api_client.post(WORKFLOWS, json=pipeline("one"), headers=other.headers)
    assert mine.json()["version"] == 1


async def test_more_steps_than_the_setting_allows_are_refused(
    tasks_api: httpx.AsyncClient,
) -> None:
    steps = [
        {"name": f"s{index}", "task": "system.echo", "payload": {"message": "x"}}
        for index in range(101)
    ]
    found = errors(await tasks_api.post(WORKFLOWS, json={"name": "wide", "steps": steps}))
    assert "WORKFLOW_MAX_STEPS" in found["body.steps"]

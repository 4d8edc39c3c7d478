"""Templates filled in when a step is due, and the graph's own helpers."""

from __future__ import annotations

import pytest

from switchyard.platform.workflows import graph


def test_a_template_takes_the_input_the_parents_results_and_the_item() -> None:
    template = {
        "question": {"$input": "/question"},
        "context": {"$step": "search", "pointer": "/hits/0/text"},
        "all": {"$step": "embed"},
        "item": {"$item": "/id"},
        "nested": [{"$input": ""}, 3, "plain"],
        "literal": {"$literal": {"$input": "/not-a-reference"}},
    }
    filled = graph.fill(
        template,
        {"question": "why?"},
        {"search": {"hits": [{"text": "because"}]}, "embed": [[0.1], [0.2]]},
        {"id": 7},
    )
    assert filled == {
        "question": "why?",
        "context": "because",
        "all": [[0.1], [0.2]],
        "item": 7,
        "nested": [{"question": "why?"}, 3, "plain"],
        "literal": {"$input": "/not-a-reference"},
    }


def test_a_pointer_into_nothing_is_a_missing_value_naming_it() -> None:
    with pytest.raises(graph.MissingValueError, match="step 'search' result at '/hits/3'"):
        graph.fill({"x": {"$step": "search", "pointer": "/hits/3"}}, {}, {"search": {"hits": []}})


@pytest.mark.parametrize(
    "value",
    [
        {"$input": 3},
        {"$input": "no-slash"},
        {"$step": "a", "pointer": "/~2"},
        {"$step": "a", "extra": 1},
        {"$unknown": "x"},
        {"$input": "", "$item": ""},
    ],
)
def test_malformed_references_are_refused(value: object) -> None:
    with pytest.raises(graph.BadReferenceError):
        graph.reference(value)


def test_the_digest_ignores_key_order_and_the_order_is_topological() -> None:
    steps = [
        {"name": "c", "needs": ["a", "b"]},
        {"name": "b", "needs": ["a"]},
        {"name": "a", "needs": []},
    ]
    reordered = [{"needs": step["needs"], "name": step["name"]} for step in steps]
    assert graph.digest(steps) == graph.digest(reordered)
    assert graph.digest(steps) != graph.digest(steps[::-1])
    assert graph.order(steps) == ["a", "b", "c"]

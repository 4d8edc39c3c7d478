"""The input guard's JSON checks, on bodies larger than the in-process tests send."""

from __future__ import annotations

from switchyard.api.input_guard import MAX_JSON_DEPTH, refusal_in_body


def test_a_hundred_thousand_levels_holding_a_nul_is_refused_as_too_deep() -> None:
    body = b"[" * 100_000 + b'"\\u0000"' + b"]" * 100_000
    refused = refusal_in_body(body)
    assert refused is not None
    assert (refused.field, refused.type) == ("body", "too_deep")


def test_the_deepest_allowed_document_passes_and_one_more_level_is_refused() -> None:
    allowed = b"[" * MAX_JSON_DEPTH + b"1" + b"]" * MAX_JSON_DEPTH
    assert refusal_in_body(allowed) is None
    deeper = b'{"a": ' + allowed + b"}"
    refused = refusal_in_body(deeper)
    assert refused is not None
    assert refused.type == "too_deep"
    assert refused.field.startswith("body.a")


def test_large_finite_numbers_and_text_that_looks_like_them_pass() -> None:
    assert refusal_in_body(b'{"n": 1e300, "text": "NaN Infinity 1e999"}') is None
    refused = refusal_in_body(b'{"ok": 1, "list": [2, 1E+999]}')
    assert refused is not None
    assert (refused.field, refused.type) == ("body.list.1", "finite_number")


def test_many_small_objects_are_not_too_deep() -> None:
    body = b"[" + b",".join(b'{"a": [1]}' for _ in range(1000)) + b"]"
    assert refusal_in_body(body) is None

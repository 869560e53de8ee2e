"""Issue 19: JSON bodies are parsed within bounds (`service.json_bounds`).

The scan must never refuse what `json.loads` reads within the bounds (property tests over
arbitrary JSON and arbitrary near-JSON text), and must stop the shapes that cost memory
out of proportion to their size: more items than the batch limit, deep nesting, floods of
empty objects or arrays anywhere in the body. Over HTTP the refusal is a 422 naming the
field; a full-size legitimate batch still goes through.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import InvalidInput
from service.json_bounds import MAX_ARRAYS, MAX_DEPTH, MAX_ITEMS, MAX_MEMBERS, MAX_OBJECTS, check_shape, loads_bounded
from service.limits import MAX_BATCH_RUNS, MAX_CURVE_SERIES
from tests.conftest import assert_error, make_run

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=40,
)


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON_VALUES, st.sampled_from([None, 0, 2]), st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")]))
def test_any_json_within_the_bounds_parses_as_json_loads_does(value: Any, indent: int | None, separators: Any) -> None:
    text = json.dumps(value, indent=indent, separators=separators, ensure_ascii=False)
    assert _same(loads_bounded(text.encode("utf-8")), value)
    # Other encodings json.loads reads: UTF-8 with a BOM, UTF-16.
    assert _same(loads_bounded(b"\xef\xbb\xbf" + text.encode("utf-8")), value)
    assert _same(loads_bounded(text.encode("utf-16")), value)


NEAR_JSON = st.text(alphabet='{}[],:"\\ 0123456789.eE+-tfnrulasNIy\n', max_size=40)


@settings(max_examples=1000, deadline=None)
@given(NEAR_JSON)
def test_the_scan_is_never_stricter_than_json_loads(text: str) -> None:
    """Arbitrary text: whatever json.loads reads, loads_bounded reads the same."""
    try:
        expected = json.loads(text)
    except (ValueError, RecursionError):
        with pytest.raises(ValueError):  # JSONDecodeError is a ValueError
            loads_bounded(text.encode())
        return
    got = loads_bounded(text.encode())
    if isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == expected or repr(got) == repr(expected)


def _refusal(body: bytes) -> dict[str, Any]:
    with pytest.raises(InvalidInput) as caught:
        check_shape(body)
    (detail,) = caught.value.details
    return detail


def test_more_runs_than_the_batch_limit_stop_the_scan() -> None:
    detail = _refusal(b'{"runs": [' + b",".join([b"{}"] * (MAX_BATCH_RUNS + 1)) + b"]}")
    assert detail["field"] == "runs" and str(MAX_ITEMS) in detail["message"]
    check_shape(b'{"runs": [' + b",".join([b"{}"] * MAX_BATCH_RUNS) + b"]}")  # exactly the limit passes


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (b"[" + b",".join([b"1"] * (MAX_ITEMS + 1)) + b"]", "body", "items"),  # a flat array
        (b'{"a": [' + b",".join([b'"x"'] * (MAX_ITEMS + 1)) + b"]}", "a", "items"),
        (b'{"a": [' + b",".join([b"[1,2]"] * (MAX_ITEMS + 1)) + b"]}", "a", "items"),  # pairs
        (b'{"a": [' + b",".join([b"1"] * MAX_ITEMS) + b",{}]}", "a", "items"),  # items, then a container
        (b"{" + b",".join(b'"k%d": 1' % i for i in range(MAX_MEMBERS + 1)) + b"}", "body", "members"),
        (b'{"x": {"y": [' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"]}}", "x.y.0.0.0.0.0.0", "deeper"),
    ],
)
def test_oversized_containers_are_refused_naming_where(body: bytes, field: str, words: str) -> None:
    detail = _refusal(body)
    assert detail["field"] == field and words in detail["message"], detail


def test_floods_of_small_containers_anywhere_are_refused() -> None:
    # Within every per-container limit, but more objects than any valid batch holds.
    per_run = b'{"extra": {}, "junk": [' + b",".join([b"{}"] * 5) + b"]}"
    detail = _refusal(b'{"runs": [' + b",".join([per_run] * (MAX_OBJECTS // 5)) + b"]}")
    assert detail["index"] is not None and "objects" in detail["message"]
    empties = b'{"loss_curve": [' + b",".join([b"[]"] * 100) + b"]}"
    detail = _refusal(b'{"runs": [' + b",".join([empties] * (MAX_ARRAYS // 100 + 1)) + b"]}")
    assert "arrays other than [number, number] pairs" in detail["message"]


def test_a_full_batch_with_loss_curves_passes() -> None:
    run = {**make_run(), "loss_curve": [[1e7 * (j + 1), 3.0 + j / 1000] for j in range(5)], "extra": {"a": "b"}}
    body = json.dumps({"runs": [run] * MAX_BATCH_RUNS}).encode()
    assert len(loads_bounded(body)["runs"]) == MAX_BATCH_RUNS
    # Every run with its loss curve and every further series it may carry (a W&B-style history).
    series = {f"eval_{k}": [[1e7, 3.0], [2e7, 2.9]] for k in range(MAX_CURVE_SERIES)}
    body = json.dumps({"runs": [{**run, "curves": series}] * MAX_BATCH_RUNS}).encode()
    assert len(loads_bounded(body)["runs"]) == MAX_BATCH_RUNS


def test_over_http_the_refusal_is_a_422_naming_the_field(client: TestClient) -> None:
    assert client.post("/v1/studies", json={"name": "jb"}).status_code == 201
    body = b'{"runs": [' + b",".join([b"{}"] * (MAX_BATCH_RUNS + 1)) + b"]}"
    response = client.post("/v1/studies/jb/runs", content=body, headers={"Content-Type": "application/json"})
    error = assert_error(response, 422, "validation_error")
    assert error["details"][0]["field"] == "runs" and "10000" in error["message"]
    deep = b'{"name": "x", "description": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    error = assert_error(
        client.post("/v1/studies", content=deep, headers={"Content-Type": "application/json"}), 422, "validation_error"
    )
    assert "deeper" in error["message"]
    broken = client.post("/v1/studies", content=b'{"name": "x",', headers={"Content-Type": "application/json"})
    assert "invalid JSON" in assert_error(broken, 422, "validation_error")["message"]

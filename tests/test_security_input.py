"""Hostile input: body size limits, a hypothesis property test of run submission and the
listing's query, schemathesis against the app's own OpenAPI schema, and the odd inputs
that used to end as a 500. The contract: no input may produce a 5xx; a 422 names the
field; a refused batch stores nothing.

`pytest -s` prints how many requests the fuzzers sent and how many server errors they saw.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from sqlalchemy import Engine

from app.main import create_app
from service.runs import encode_cursor
from service.settings import Settings
from store import migrate, queries
from store.db import make_engine, run_in_transaction
from tests.conftest import assert_error, bearer, count_rows, make_run

# Requests sent by the fuzzers below and the server errors among them, for the closing note.
FUZZ = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_fuzz_counts() -> Iterator[None]:
    yield
    print(
        f"\n[fuzz] hypothesis requests: {FUZZ['hypothesis']}, schemathesis requests: {FUZZ['schemathesis']}, "
        f"server errors: {FUZZ['5xx']}"
    )


# --- body size --------------------------------------------------------------------------

LIMIT = 4096


@pytest.fixture
def small_client(engine: Engine, database_url: str, tokens: dict[str, str]) -> Iterator[TestClient]:
    app = create_app(Settings(database_url=database_url, max_body_bytes=LIMIT), engine=engine)
    with TestClient(app, headers=bearer(tokens["admin"])) as client:
        assert client.post("/v1/studies", json={"name": "small"}).status_code == 201
        yield client


def _batch_bytes(n: int) -> bytes:
    return json.dumps({"runs": [make_run(i) for i in range(n)]}).encode()


def test_oversized_body_is_413_with_content_length(small_client: TestClient, engine: Engine) -> None:
    body = _batch_bytes(100)
    assert len(body) > LIMIT
    response = small_client.post("/v1/studies/small/runs", content=body, headers={"Content-Type": "application/json"})
    assert "content-length" in {k.lower() for k in response.request.headers}
    assert_error(response, 413, "payload_too_large")
    assert count_rows(engine) == 0


def test_oversized_chunked_body_is_413(small_client: TestClient, engine: Engine) -> None:
    body = _batch_bytes(100)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    response = small_client.post(
        "/v1/studies/small/runs", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert_error(response, 413, "payload_too_large")
    assert count_rows(engine) == 0
    # A lying Content-Length (smaller than what follows) is no way around the limit.
    response = small_client.post(
        "/v1/studies/small/runs", content=chunks(), headers={"Content-Type": "application/json", "Content-Length": "10"}
    )
    assert response.status_code in (400, 413, 422)
    assert count_rows(engine) == 0


def test_body_of_exactly_the_limit_is_accepted(small_client: TestClient, engine: Engine) -> None:
    body = json.dumps(make_run(1)).encode()
    body = body[:-1] + b" " * (LIMIT - len(body)) + b"}"
    assert len(body) == LIMIT
    response = small_client.post("/v1/studies/small/runs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 201, response.text
    assert count_rows(engine) == 1


# --- odd inputs, one by one ----------------------------------------------------------------

RUN = '{"n_params": 1, "tokens": 1, "learning_rate": 0.1, "batch_size": 1, "final_loss": 1%s}'


@pytest.mark.parametrize(
    "raw, field",
    [
        # Too deep: named down to where the nesting passed the bound (service.json_bounds).
        ("[" * 100_000 + "]" * 100_000, "0.0.0"),
        ('{"a":' * 50_000 + "1" + "}" * 50_000, "a.a.a"),
        (RUN % (', "extra": {"a": ' + "[" * 5000 + "]" * 5000 + "}"), "extra.a.0"),
        (RUN % (', "seed": ' + "9" * 5000), "body"),
        (RUN % (', "seed": ' + "9" * 400), "seed"),
        (RUN % (', "extra": {"a": ' + "9" * 400 + "}"), "extra.a"),
        (RUN % ', "extra": {"a": 1e400}', "extra.a"),
        ((RUN % "").replace('"n_params": 1', '"n_params": 1e400'), "n_params"),
        ((RUN % "").replace('"batch_size": 1', '"batch_size": 9223372036854775808'), "batch_size"),
        (RUN % ', "loss_curve": [[1, NaN]]', "loss_curve.0.1"),
        (RUN % ', "loss_curve": [[-Infinity, 1]]', "loss_curve.0.0"),
        (RUN % ', "run_key": "\\ud800"', "run_key"),
        (RUN % (', "run_key": "' + "k" * 129 + '"'), "run_key"),
        (RUN % ', "extra": {"\\udc00": 1}', "extra"),
        (RUN % ', "extra": {"a": "\\ud800x"}', "extra.a"),
        (RUN % ', "extra": {"a": "\\u0000"}', "extra.a"),
        (RUN % (', "extra": {"a": "' + "x" * 1025 + '"}'), "extra.a"),
        (RUN % (', "loss_curve": ' + json.dumps([[i, 1.0] for i in range(10_001)])), "loss_curve"),
        (RUN % (', "extra": ' + json.dumps({f"k{i}": i for i in range(257)})), "extra"),
        ("", "body"),
        ("null", "body"),
        ('"runs"', "body"),
        ('{"runs": {"0": {}}}', "runs"),
        ('{"runs": [null]}', "runs.0"),
    ],
    ids=lambda v: v[:40] if isinstance(v, str) else v,
)
def test_odd_run_bodies_are_422_naming_the_field(client: TestClient, engine: Engine, raw: str, field: str) -> None:
    client.post("/v1/studies", json={"name": "odd"})
    response = client.post("/v1/studies/odd/runs", content=raw.encode(), headers={"Content-Type": "application/json"})
    error = assert_error(response, 422, "validation_error")
    fields = [d["field"] for d in error["details"]]
    assert any(f.startswith(field) for f in fields) or (
        field == "runs.0" and 0 in [d["index"] for d in error["details"]]
    ), fields
    assert count_rows(engine) == 0


def test_surrogate_in_a_study_description_is_422(client: TestClient) -> None:
    response = client.post(
        "/v1/studies", content=b'{"name": "u", "description": "\\ud800"}', headers={"Content-Type": "application/json"}
    )
    assert assert_error(response, 422, "validation_error")["details"][0]["field"] == "description"
    assert client.get("/v1/studies").json()["items"] == []


@pytest.mark.parametrize(
    ("content_type", "status", "stored"),
    [
        ("text/plain", 422, 0),
        ("application/x-www-form-urlencoded", 422, 0),
        ("", 422, 0),
        # JSON is JSON whatever charset parameter it names (RFC 8259: always UTF-8).
        ("application/json; charset=latin-1", 201, 1),
    ],
)
def test_a_body_is_json_only_by_its_content_type(
    client: TestClient, engine: Engine, content_type: str, status: int, stored: int
) -> None:
    client.post("/v1/studies", json={"name": "ct"})
    response = client.post(
        "/v1/studies/ct/runs", content=json.dumps(make_run(1)).encode(), headers={"Content-Type": content_type}
    )
    assert response.status_code == status, response.text
    if status == 422:
        assert response.json()["error"]["details"][0]["field"] == "body"
    assert count_rows(engine) == stored


@pytest.mark.parametrize(
    "path",
    [
        "/v1/studies/a%00b",
        "/v1/studies/a%00b/runs",
        "/v1/studies/a%00b/runs.csv",
        "/v1/studies/%ed%a0%80",
        "/v1/studies/%ff%fe/runs",
        "/v1/studies/" + "a" * 5000,
        "/v1/studies/..%2f..%2fetc",
        "/v1/studies/x'%20OR%20'1'='1",
        "/v1/studies/X",
    ],
)
def test_impossible_study_names_are_404(client: TestClient, path: str) -> None:
    assert_error(client.get(path), 404, "not_found")


@pytest.mark.parametrize(
    "params, field",
    [
        ({"limit": "9" * 40}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "1e3"}, "limit"),
        ({"limit": "NaN"}, "limit"),
        ({"width": "9" * 40}, "width"),
        ({"depth": "-" + "9" * 40}, "depth"),
        ({"cursor": "\x00\xff"}, "cursor"),
        ({"cursor": "cnVuOjk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5"}, "cursor"),  # run:99999999999999999999999
        ({"cursor": "=" * 10}, "cursor"),
        ({"cursor": "c" * 65}, "cursor"),
        ({"created_by": "\x00"}, "created_by"),
        ({"created_by": "n" * 65}, "created_by"),
        ({"status": "completed\x00"}, "status"),
    ],
)
def test_malformed_listing_query_is_422(client: TestClient, params: dict, field: str) -> None:
    client.post("/v1/studies", json={"name": "q"})
    error = assert_error(client.get("/v1/studies/q/runs", params=params), 422, "validation_error")
    assert error["details"][0]["field"] == field


# --- property test: arbitrary run submissions --------------------------------------------


class Raw:
    """A JSON fragment written as is (NaN, Infinity, deep nesting, long integers)."""

    def __init__(self, text: str) -> None:
        self.text = text


def to_json(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    return json.dumps(value)  # floats may be nan/inf: written as NaN/Infinity


any_char = st.characters(codec=None, categories=None)  # includes NUL and lone surrogates
nasty_text = st.one_of(
    st.text(max_size=20),
    st.text(any_char, max_size=20),
    st.just("\x00"),
    st.just("\ud800"),
    st.text(min_size=120, max_size=2000),
)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=0, max_value=10**300).map(lambda i: Raw(str(i))),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-0", "1E-400", "9" * 4000]).map(Raw),
)
deep = st.integers(min_value=1, max_value=3000).map(lambda n: Raw("[" * n + "]" * n))
leaves = st.one_of(st.none(), st.booleans(), numbers, nasty_text, deep)
junk = st.recursive(
    leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10,
)

# Right type, hostile content: what passes a type check and so reaches the database.
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"])
typed_text = st.one_of(
    st.text(min_size=1, max_size=12),
    st.text(any_char, min_size=1, max_size=12),
    # A lone surrogate (JSON "\\udXXX" not part of a pair), and no NUL to be refused first.
    st.builds(lambda a, s, b: a + s + "." + b, st.text(max_size=5), surrogates, st.text(max_size=5)),
    st.text(st.one_of(st.characters(codec="ascii"), st.just("\x00")), min_size=1, max_size=12),
    st.text(min_size=100, max_size=1500),
)
typed_positive = st.one_of(
    st.floats(min_value=1e-12, max_value=1e20),
    st.floats(min_value=5e-324, max_value=1.7976931348623157e308),
    st.integers(min_value=1, max_value=2**80),
    st.integers(min_value=10**300, max_value=10**400).map(lambda i: Raw(str(i))),
)
typed_int = st.one_of(st.integers(min_value=1, max_value=8192), st.integers(min_value=-(2**65), max_value=2**65))
typed_any_number = st.one_of(typed_positive, st.floats(), typed_positive.map(lambda v: Raw("-" + to_json(v))))


def mostly(good: st.SearchStrategy, hostile: st.SearchStrategy) -> st.SearchStrategy:
    """`good` seven times in eight, so that whole runs often get as far as the database."""
    return st.integers(0, 7).flatmap(lambda i: hostile if i == 0 else good)


fields: dict[str, st.SearchStrategy] = {
    "run_key": typed_text,
    "n_params": mostly(st.floats(min_value=1, max_value=1e15), typed_positive),
    "tokens": mostly(st.floats(min_value=1, max_value=1e15), typed_positive),
    "width": mostly(st.integers(min_value=1, max_value=8192), typed_int),
    "depth": mostly(st.integers(min_value=1, max_value=128), typed_int),
    "seq_len": mostly(st.integers(min_value=1, max_value=8192), typed_int),
    "learning_rate": mostly(st.floats(min_value=1e-6, max_value=1), typed_positive),
    "batch_size": mostly(st.integers(min_value=1, max_value=4096), typed_int),
    "weight_decay": mostly(st.floats(min_value=0, max_value=1), typed_any_number),
    "status": mostly(st.sampled_from(["completed", "diverged", "failed"]), typed_text),
    "final_loss": mostly(st.floats(min_value=0.5, max_value=10), typed_any_number),
    "loss_curve": st.lists(st.tuples(typed_positive, mostly(st.floats(0, 10), typed_any_number)).map(list), max_size=5),
    "seed": st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.integers()),
    "extra": st.dictionaries(
        typed_text, mostly(st.one_of(st.floats(-1e6, 1e6), typed_text), typed_any_number), max_size=3
    ),
}
REQUIRED = {"n_params", "tokens", "learning_rate", "batch_size", "final_loss"}


@st.composite
def run_objects(draw: st.DrawFn) -> Any:
    """A run of well-typed but hostile values; sometimes with a field or two of junk
    (wrong types, NaN, deep nesting, long integers), sometimes junk altogether."""
    mode = draw(st.sampled_from(["typed"] * 4 + ["mutated"] * 2 + ["junk"]))
    if mode == "junk":
        return draw(junk)
    run = {name: draw(strategy) for name, strategy in fields.items() if name in REQUIRED or draw(st.booleans())}
    if mode == "mutated":
        for name in draw(st.lists(st.sampled_from([*fields, "surprise"]), min_size=1, max_size=2)):
            if draw(st.booleans()):
                run[name] = draw(junk)
            else:
                run.pop(name, None)
    return run


bodies = st.one_of(
    run_objects(),
    st.lists(run_objects(), min_size=0, max_size=12).map(lambda runs: {"runs": runs}),
    junk,
)


@pytest.fixture
def fuzz_target(engine: Engine, database_url: str, tokens: dict[str, str]) -> Iterator[TestClient]:
    app = create_app(Settings(database_url=database_url), engine=engine)
    with TestClient(app, headers=bearer(tokens["write"]), raise_server_exceptions=False) as client:
        run_in_transaction(
            engine,
            lambda c: queries.create_study(c, {"name": "fuzz", "parameterization": "sp", "optimizer": "adamw"}, None),
        )
        yield client


def _check_4xx_body(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    return body["error"]


FUZZ_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.slow
@FUZZ_SETTINGS
@given(body=bodies)
def test_run_submission_never_5xx_and_a_refused_batch_stores_nothing(
    fuzz_target: TestClient, engine: Engine, body: Any
) -> None:
    before = count_rows(engine)
    response = fuzz_target.post(
        "/v1/studies/fuzz/runs",
        content=to_json(body).encode("utf-8", "surrogatepass"),
        headers={"Content-Type": "application/json"},
    )
    FUZZ["hypothesis"] += 1
    FUZZ["5xx"] += response.status_code >= 500
    assert response.status_code < 500, response.text
    after = count_rows(engine)
    if response.status_code == 201:
        result = response.json()
        n = len(body["runs"]) if isinstance(body, dict) and "runs" in body else 1
        assert result["inserted"] + result["duplicates"] == n == len(result["ids"])
        assert after == before + result["inserted"]
        # What was stored can be read back (a value the database took but cannot return
        # would break every later listing of the study).
        first = min(result["ids"])
        page = fuzz_target.get("/v1/studies/fuzz/runs", params={"cursor": encode_cursor(first - 1), "limit": 1000})
        FUZZ["hypothesis"] += 1
        FUZZ["5xx"] += page.status_code >= 500
        assert page.status_code == 200, page.text
        assert set(result["ids"]) <= {r["id"] for r in page.json()["items"]}
        return
    assert response.status_code == 422, response.text
    error = _check_4xx_body(response)
    assert error["code"] == "validation_error" and error["details"]
    for detail in error["details"]:
        assert isinstance(detail["field"], str) and detail["field"], detail
        assert isinstance(detail["message"], str) and detail["message"]
    assert after == before


query_values = st.one_of(
    st.text(max_size=30),
    st.text(any_char.filter(lambda c: not 0xD800 <= ord(c) <= 0xDFFF), max_size=30),
    st.integers().map(str),
    st.floats().map(str),
)


@pytest.mark.slow
@FUZZ_SETTINGS
@given(
    params=st.dictionaries(
        st.sampled_from(["limit", "cursor", "status", "width", "depth", "created_by", "other"]),
        query_values,
        max_size=4,
    )
)
def test_listing_query_never_5xx(fuzz_target: TestClient, params: dict[str, str]) -> None:
    response = fuzz_target.get("/v1/studies/fuzz/runs", params=params)
    FUZZ["hypothesis"] += 1
    FUZZ["5xx"] += response.status_code >= 500
    assert response.status_code in (200, 422), response.text
    if response.status_code == 422:
        error = _check_4xx_body(response)
        assert {d["field"] for d in error["details"]} <= set(params), error


@pytest.mark.slow
@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(name=st.text(any_char.filter(lambda c: c not in "/?#"), min_size=1, max_size=80), body=st.binary(max_size=300))
def test_odd_study_names_and_binary_bodies_never_5xx(fuzz_target: TestClient, name: str, body: bytes) -> None:
    from urllib.parse import quote

    path = "/v1/studies/" + quote(name.encode("utf-8", "surrogatepass"), safe="")
    for response in (
        fuzz_target.get(path),
        fuzz_target.get(path + "/runs"),
        fuzz_target.post(path + "/runs", content=body, headers={"Content-Type": "application/json"}),
        fuzz_target.post("/v1/studies/fuzz/runs", content=body, headers={"Content-Type": "application/json"}),
    ):
        FUZZ["hypothesis"] += 1
        FUZZ["5xx"] += response.status_code >= 500
        assert response.status_code < 500, response.text


# --- schemathesis: the app's own OpenAPI schema ------------------------------------------


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, str]]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('schemathesis') / 'hpscale.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    token = run_in_transaction(engine, lambda c: queries.create_token(c, "fuzzer", "admin"))
    run_in_transaction(
        engine,
        lambda c: queries.create_study(c, {"name": "fuzz", "parameterization": "sp", "optimizer": "adamw"}, None),
    )
    run_in_transaction(
        engine,
        lambda c: queries.insert_runs(
            c, 1, [make_run(i) | {"weight_decay": 0.0, "status": "completed"} for i in range(30)], "fuzzer"
        ),
    )
    app = create_app(Settings(database_url=url), engine=engine)
    yield app, bearer(token)
    engine.dispose()


@pytest.fixture(scope="module")
def api_schema(fuzz_app: tuple[Any, dict[str, str]]) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app[0])


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_openapi_schema_fuzz_has_no_server_errors(case: Any, fuzz_app: tuple[Any, dict[str, str]]) -> None:
    if "name" in (case.path_parameters or {}) and len(case.path_parameters["name"]) % 2 == 0:
        case.path_parameters["name"] = "fuzz"  # half the cases reach an existing study
    FUZZ["schemathesis"] += 1
    try:
        response = case.call(headers=fuzz_app[1])
    except Exception:  # the app raised instead of answering: a server error too
        FUZZ["5xx"] += 1
        raise
    FUZZ["5xx"] += response.status_code >= 500
    case.validate_response(response, checks=[not_a_server_error])
    assert response.status_code < 500

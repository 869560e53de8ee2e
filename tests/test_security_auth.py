"""Scoped tokens: the 401/403 matrix over every `/v1` route the app really has, token
storage (only a hash), `last_used_at`, `--no-auth`, and the audit trail (`created_by`).

The matrix is generated from `create_app()`'s own routes, so an endpoint added without
an entry in `REQUIRED_SCOPE` fails here instead of shipping with the wrong scope.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, select, text

from app.main import create_app
from hpscale.cli import main as cli
from service.settings import Settings
from store import queries
from store.db import run_in_transaction
from store.models import ApiToken, Study
from tests.conftest import assert_error, bearer, make_run

# Every /v1 route and the least scope that may call it (the contract's "(read)", "(write)",
# "(admin)"). Entries for routes not (yet) in the app are allowed; a route without an
# entry is not.
REQUIRED_SCOPE: dict[tuple[str, str], str] = {
    ("POST", "/v1/studies"): "admin",
    ("GET", "/v1/studies"): "read",
    ("GET", "/v1/studies/{name}"): "read",
    ("POST", "/v1/studies/{name}/runs"): "write",
    ("GET", "/v1/studies/{name}/runs"): "read",
    ("GET", "/v1/studies/{name}/runs.csv"): "read",
    ("POST", "/v1/studies/{name}/fits"): "write",
    ("GET", "/v1/studies/{name}/fits/latest"): "read",
    ("GET", "/v1/studies/{name}/fits/{fit_id}"): "read",
    ("GET", "/v1/studies/{name}/recommendation"): "read",
    ("GET", "/v1/studies/{name}/suggestions"): "read",
    ("GET", "/v1/studies/{name}/transfer-check"): "read",
    ("GET", "/v1/studies/{name}/compute-optimal"): "read",
    ("DELETE", "/v1/studies/{name}"): "admin",
    ("GET", "/v1/studies/{name}/runs/{fit_id}"): "read",
    ("POST", "/v1/studies/{name}/runs/{fit_id}/exclude"): "write",
    ("POST", "/v1/studies/{name}/runs/{fit_id}/include"): "write",
    ("DELETE", "/v1/studies/{name}/submissions/{fit_id}"): "admin",
    ("GET", "/v1/studies/{name}/audit"): "read",
    ("GET", "/v1/studies/{name}/fits/{fit_id}/curves"): "read",
    ("GET", "/v1/studies/{name}/fits/{fit_id}/run-states"): "read",
}
SCOPES = ("read", "write", "admin")
STUDY = "matrix"


def _normalise(path: str) -> str:
    """Path parameters other than the study's name are compared by position only."""
    return re.sub(r"\{(?!name\})[^}]+\}", "{fit_id}", path)


def v1_routes() -> list[tuple[str, str]]:
    """(method, path) of every /v1 route of the app as `hpscale serve` builds it."""
    app = create_app(Settings(database_url="sqlite://"), engine=create_engine("sqlite://"))
    routes = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
        if path.startswith("/v1")
    }

    # Routes hidden from the schema count too (FastAPI may wrap included routers).
    def walk(candidates) -> None:  # type: ignore[no-untyped-def]
        for route in candidates:
            if isinstance(route, APIRoute) and route.path.startswith("/v1"):
                routes.update((m, route.path) for m in route.methods - {"HEAD", "OPTIONS"})
            walk(getattr(getattr(route, "original_router", None), "routes", ()))

    walk(app.routes)
    return sorted(routes)


ROUTES = v1_routes()


def test_every_v1_route_has_a_required_scope() -> None:
    missing = [(m, p) for m, p in ROUTES if (m, _normalise(p)) not in REQUIRED_SCOPE]
    assert not missing, f"routes without an entry in REQUIRED_SCOPE: {missing}"
    assert ("POST", "/v1/studies") in ROUTES and ("POST", "/v1/studies/{name}/runs") in ROUTES


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda m: STUDY if m.group(0) == "{name}" else "1", path)


def _body(method: str, path: str, n: int) -> dict | None:
    if method != "POST":
        return None
    if path == "/v1/studies":
        return {"name": f"made-{n}"}
    if path.endswith("/runs"):
        return make_run(n)
    return {}


@pytest.mark.parametrize("method, path", ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_auth_matrix(client: TestClient, engine: Engine, tokens: dict[str, str], method: str, path: str) -> None:
    needed = REQUIRED_SCOPE[(method, _normalise(path))]
    assert client.post("/v1/studies", json={"name": STUDY}).status_code == 201
    revoked = run_in_transaction(engine, lambda c: queries.create_token(c, "test-revoked", "admin"))
    assert run_in_transaction(engine, lambda c: queries.revoke_token(c, "test-revoked"))
    url = _concrete(path)
    calls = iter(range(1000))

    def call(headers: dict[str, str]):
        return client.request(method, url, json=_body(method, path, next(calls)), headers=headers)

    for headers in (
        {"Authorization": ""},
        bearer("hps_not-a-token"),
        bearer(tokens["admin"] + "x"),
        bearer(revoked),
        {"Authorization": f"Basic {tokens['admin']}"},
        {"Authorization": "Bearer"},
    ):
        assert_error(call(headers), 401, "unauthorized")
    for scope in SCOPES:
        response = call(bearer(tokens[scope]))
        if SCOPES.index(scope) < SCOPES.index(needed):
            assert_error(response, 403, "forbidden")
            assert needed in response.json()["error"]["message"]
        else:
            assert response.status_code not in (401, 403), (scope, response.text)
            assert response.status_code < 500, response.text


def test_refused_writes_store_nothing(client: TestClient, engine: Engine, tokens: dict[str, str]) -> None:
    client.post("/v1/studies", json={"name": STUDY})
    for headers in ({"Authorization": ""}, bearer(tokens["read"])):
        client.post(f"/v1/studies/{STUDY}/runs", json={"runs": [make_run(i) for i in range(3)]}, headers=headers)
        client.post("/v1/studies", json={"name": "sneaky"}, headers=headers)
    client.post("/v1/studies", json={"name": "sneaky"}, headers=bearer(tokens["write"]))
    assert client.get(f"/v1/studies/{STUDY}").json()["run_count"] == 0
    with engine.connect() as conn:
        assert conn.execute(select(Study.name)).scalars().all() == [STUDY]


# --- token storage ---------------------------------------------------------------------


def _all_text_in_tokens_table(engine: Engine) -> str:
    with engine.connect() as conn:
        rows = conn.execute(select(ApiToken.__table__)).all()
    return "\n".join(repr(tuple(row)) for row in rows)


def test_cli_token_is_printed_once_and_only_its_hash_is_stored(
    database_url: str, engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    created = {}
    for scope in SCOPES:
        assert (
            cli(["tokens", "create", "--scope", scope, "--name", f"cli-{scope}", "--database-url", database_url]) == 0
        )
        out = capsys.readouterr().out.strip().splitlines()
        created[scope] = out[-1]
        assert created[scope] not in "\n".join(out[:-1])  # printed once, on the last line
    assert cli(["tokens", "create", "--scope", "read", "--database-url", database_url]) == 0  # name generated
    capsys.readouterr()
    assert len(set(created.values())) == 3 and all(len(t) >= 40 for t in created.values())
    with engine.connect() as conn:
        stored = {t.name: t for t in queries.list_tokens(conn)}
    assert {stored[f"cli-{s}"].scope for s in SCOPES} == set(SCOPES)
    table = _all_text_in_tokens_table(engine)
    for token in created.values():
        assert all(t.token_hash != token for t in stored.values())
        assert token not in table
        assert token[4:20] not in table  # not even a recognisable piece of it
    assert len({t.token_hash for t in stored.values()}) == len(stored)
    if engine.dialect.name == "sqlite":  # not anywhere in the database files either
        engine.dispose()
        path = Path(engine.url.database)
        blob = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        for token in created.values():
            assert token.encode() not in blob
    assert cli(["tokens", "list", "--database-url", database_url]) == 0
    listing = capsys.readouterr().out
    assert "cli-admin" in listing and all(t not in listing for t in created.values())
    assert all(t.token_hash not in listing for t in stored.values())


def test_revoked_token_stays_revoked_and_others_keep_working(database_url: str, client: TestClient, capsys) -> None:
    assert cli(["tokens", "create", "--scope", "write", "--name", "launcher", "--database-url", database_url]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert client.get("/v1/studies", headers=bearer(token)).status_code == 200
    assert cli(["tokens", "revoke", "launcher", "--database-url", database_url]) == 0
    assert_error(client.get("/v1/studies", headers=bearer(token)), 401, "unauthorized")
    assert cli(["tokens", "revoke", "launcher", "--database-url", database_url]) == 1  # already revoked
    capsys.readouterr()
    assert cli(["tokens", "list", "--database-url", database_url]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("launcher"))
    assert line.rstrip().endswith("revoked")
    assert client.get("/v1/studies").status_code == 200  # the fixture's admin token is unaffected


def test_last_used_at_is_set_by_use(engine: Engine, client: TestClient, tokens: dict[str, str]) -> None:
    def last_used(name: str) -> datetime | None:
        with engine.connect() as conn:
            return conn.execute(select(ApiToken.last_used_at).where(ApiToken.name == name)).scalar_one()

    assert last_used("test-read") is None
    before = datetime.now(UTC)
    assert client.get("/v1/studies", headers=bearer(tokens["read"])).status_code == 200
    after = datetime.now(UTC)
    used = last_used("test-read")
    assert used is not None and before <= used <= after
    assert last_used("test-write") is None  # only the token that was used
    # A refused request (403) still authenticated the token; a 401 touches nothing.
    client.post("/v1/studies", json={"name": "x"}, headers=bearer(tokens["write"]))
    assert last_used("test-write") is not None
    client.get("/v1/studies", headers=bearer(tokens["write"] + "x"))
    assert last_used("test-write") is not None


def test_no_auth_app_makes_every_request_admin(database_url: str, engine: Engine) -> None:
    app = create_app(Settings(database_url=database_url, no_auth=True), engine=engine)
    # No-auth mode answers loopback peers with a loopback Host only (tests/test_security_hardening.py).
    with TestClient(app, base_url="http://127.0.0.1:8000", client=("127.0.0.1", 50000)) as anonymous:
        assert anonymous.post("/v1/studies", json={"name": "open"}).status_code == 201
        assert anonymous.post("/v1/studies/open/runs", json=make_run(1)).status_code == 201
        (run,) = anonymous.get("/v1/studies/open/runs").json()["items"]
    assert run["created_by"] == "no-auth"


# --- audit ------------------------------------------------------------------------------


def test_runs_record_the_token_name_and_can_be_filtered_by_it(
    engine: Engine, client: TestClient, tokens: dict[str, str]
) -> None:
    client.post("/v1/studies", json={"name": "audit"})
    other = run_in_transaction(engine, lambda c: queries.create_token(c, "launcher-b", "write"))
    a = client.post(
        "/v1/studies/audit/runs", json={"runs": [make_run(i) for i in range(5)]}, headers=bearer(tokens["write"])
    )
    b = client.post("/v1/studies/audit/runs", json={"runs": [make_run(i) for i in range(3, 9)]}, headers=bearer(other))
    assert a.json()["inserted"] == 5 and b.json()["inserted"] == 4  # keys 3, 4 were a's
    c = client.post("/v1/studies/audit/runs", json=make_run(100))  # the admin token
    assert c.status_code == 201

    def ids_by(name: str) -> list[int]:
        body = client.get("/v1/studies/audit/runs", params={"created_by": name}).json()
        assert all(r["created_by"] == name for r in body["items"])
        return [r["id"] for r in body["items"]]

    assert ids_by("test-write") == a.json()["ids"]
    assert ids_by("launcher-b") == b.json()["ids"][2:]
    assert ids_by("test-admin") == c.json()["ids"]
    assert ids_by("nobody") == []
    assert ids_by("test-write'; DROP TABLE runs; --") == []
    assert len(client.get("/v1/studies/audit/runs").json()["items"]) == 10
    with engine.connect() as conn:
        assert conn.execute(text("SELECT created_by FROM studies")).scalar_one() == "test-admin"

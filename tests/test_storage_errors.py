"""One storage wrapper (issue 18): database failures leave the store as `store.errors`, become
one domain error each — 503 + Retry-After for an unavailable or unmigrated database (naming
`hpscale db upgrade`), 409 or 404 for a concurrent change — and one line of the CLI."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

import service.runs
import store.queries
from app.main import create_app
from service.settings import Settings
from service.tokens import create_token
from store import errors, queries
from store.db import make_engine, run_in_transaction
from store.models import Study
from tests.conftest import assert_error, bearer, make_run

ROOT = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once the socket closes


def test_an_unmigrated_database_says_to_run_db_upgrade(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'bare.db'}")  # a file, no schema
    app = create_app(Settings(database_url=str(engine.url), no_auth=True), engine=engine)
    with TestClient(app, base_url="http://127.0.0.1", client=("127.0.0.1", 5000)) as client:
        response = client.get("/v1/studies")
        error = assert_error(response, 503, "unavailable")
        assert "hpscale db upgrade" in error["message"] and response.headers["retry-after"]
    engine.dispose()


def test_a_row_that_was_deleted_meanwhile_is_a_missing_reference(engine: Engine) -> None:
    run = {**make_run(1), "weight_decay": 0.0, "status": "completed", "study_id": 999}
    with pytest.raises(errors.MissingReference):
        run_in_transaction(engine, lambda conn: queries.insert_runs(conn, 999, [run], None))


def test_runs_for_a_study_deleted_between_lookup_and_insert_are_404(
    client: TestClient, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The study is found, then gone when its runs are inserted (a concurrent DELETE on
    PostgreSQL): the foreign key refuses the insert, and the answer is 404, not a 500."""
    assert client.post("/v1/studies", json={"name": "doomed"}).status_code == 201
    real = service.runs.get_study

    def found_then_deleted(conn, name):  # type: ignore[no-untyped-def]
        study = real(conn, name)
        conn.execute(Study.__table__.delete().where(Study.id == study.id))
        return study

    monkeypatch.setattr(service.runs, "get_study", found_then_deleted)
    error = assert_error(client.post("/v1/studies/doomed/runs", json=make_run(1)), 404, "not_found")
    assert "doomed" in error["message"]


def test_a_token_name_taken_by_a_concurrent_request_is_a_conflict(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_token(engine, "twice", "read")
    monkeypatch.setattr(store.queries, "token_name_exists", lambda conn, name: False)  # the race
    from service.errors import TokenExists

    with pytest.raises(TokenExists):
        create_token(engine, "twice", "read")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env_path = {"PYTHONPATH": str(ROOT)}
    import os

    return subprocess.run(
        [sys.executable, "-m", "hpscale.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env_path},
        timeout=120,
    )


def test_the_cli_says_in_one_line_that_the_database_is_down() -> None:
    down = f"postgresql://u@127.0.0.1:{closed_port()}/db"
    result = run_cli("tokens", "create", "--scope", "read", "--name", "x", "--database-url", down)
    assert result.returncode == 1, result
    lines = [line for line in result.stderr.splitlines() if not line.startswith("hpscale: using database")]
    assert lines == ["error: the database is unavailable; try again shortly"], result.stderr
    assert "Traceback" not in result.stderr


def test_the_cli_says_in_one_line_that_the_database_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    assert run_cli("db", "upgrade", "--database-url", f"sqlite:///{path}").returncode == 0
    read_only = f"sqlite:///file:{path}?mode=ro&uri=true"  # as on a read-only disk
    result = run_cli("tokens", "create", "--scope", "read", "--name", "x", "--database-url", read_only)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("hpscale: using database")]
    assert lines == ["error: the database is read-only; try again shortly"], result.stderr


def test_every_storage_error_becomes_one_domain_error() -> None:
    from app.errors import HTTP_STATUS
    from service.errors import from_storage

    statuses = {}
    for cls in (errors.DatabaseUnavailable, errors.SchemaNotMigrated, errors.Conflict, errors.MissingReference):
        domain = from_storage(cls("why"))
        assert type(domain) in HTTP_STATUS and domain.message.startswith("why")
        statuses[cls.__name__] = HTTP_STATUS[type(domain)]
    assert statuses == {"DatabaseUnavailable": 503, "SchemaNotMigrated": 503, "Conflict": 409, "MissingReference": 404}


def test_the_app_answers_a_storage_error_from_a_route_with_its_status(
    engine: Engine, database_url: str, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def conflict(*_: object, **__: object) -> None:
        raise errors.Conflict("a concurrent change took the same name or key; try again")

    monkeypatch.setattr(service.runs.runviews, "list_page", conflict)
    app = create_app(Settings(database_url=database_url), engine=engine)
    with TestClient(app, headers=bearer(tokens["admin"])) as client:
        assert client.post("/v1/studies", json={"name": "s"}).status_code == 201
        assert_error(client.get("/v1/studies/s/runs"), 409, "conflict")

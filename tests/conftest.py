"""Shared fixtures: a migrated database per test on SQLite and (when available) PostgreSQL,
an app client on it, and tokens of each scope.

PostgreSQL tests run when HPSCALE_TEST_POSTGRES_URL names a server (`.ci/run` starts one);
with HPSCALE_REQUIRE_POSTGRES=1 (set in CI) its absence is a failure, not a skip.
"""

from __future__ import annotations

import os

# Fits are small linear algebra; BLAS thread pools only fight over CI's two cores (fits
# were 10-25x slower with them). Set before numpy is first imported; subprocesses inherit it.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
import tempfile

# A tracked run that cannot be submitted is saved under ./hpscale-unsent by default: never
# into the working tree from a test (subprocesses inherit this too).
os.environ.setdefault("HPSCALE_SPOOL_DIR", tempfile.mkdtemp(prefix="hpscale-unsent-"))
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, func, select, text

from app.main import create_app
from service.limits import SCOPES
from service.settings import Settings
from store import migrate, queries
from store.db import make_engine, normalize_url, run_in_transaction
from store.models import Base, Run

# The real data sits beside the repository, in ../shared/data (never copied in).
SHARED_DATA = Path(os.environ.get("HPSCALE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
POSTGRES_URL = os.environ.get("HPSCALE_TEST_POSTGRES_URL")
REQUIRE_POSTGRES = os.environ.get("HPSCALE_REQUIRE_POSTGRES") == "1"

STEPLAW_CSV = SHARED_DATA / "steplaw_dense_proxy.csv"
STEPLAW_MAP = [
    "h=width",
    "numl=depth",
    "N=n_params",
    "D=tokens",
    "lr=learning_rate",
    "bs=batch_size",
    "smooth loss=final_loss",
    "exp_name=run_key",
]


def steplaw_import_argv(database_url: str, study: str = "steplaw") -> list[str]:
    """`hpscale import` arguments loading the Step Law sweep as `study` (seq_len 2048), as the README does."""
    args = ["import", str(STEPLAW_CSV), "--study", study, "--create", "--seq-len", "2048"]
    args += ["--database-url", database_url, "--quiet"]
    return args + [a for pair in STEPLAW_MAP for a in ("--map", pair)]


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    if not POSTGRES_URL:
        if REQUIRE_POSTGRES:
            pytest.fail("HPSCALE_REQUIRE_POSTGRES=1 but HPSCALE_TEST_POSTGRES_URL is not set")
        pytest.skip("no PostgreSQL server (set HPSCALE_TEST_POSTGRES_URL)")
    name = f"hpscale_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(normalize_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base = normalize_url(POSTGRES_URL).rsplit("/", 1)[0]
    url = f"{base}/{name}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: a new SQLite file, or the session's PostgreSQL emptied."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hpscale.db'}"
        engine = make_engine(url)
        migrate.upgrade(engine)
        engine.dispose()
        yield url
        return
    url = request.getfixturevalue("postgres_database")
    engine = make_engine(url)
    # The session's database is reused under one URL and its ids start again: what an earlier
    # test left running in this process (a background refit) must end first, and what this
    # process remembers about those studies is forgotten.
    from service.fits import forget_database, wait_for_background_refits

    assert wait_for_background_refits(120, engine), "an earlier test's background refit never ended"
    forget_database(str(engine.url))
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def tokens(engine: Engine) -> dict[str, str]:
    """One token per scope, by scope name."""
    return {
        scope: run_in_transaction(engine, lambda conn, s=scope: queries.create_token(conn, f"test-{s}", s))
        for scope in SCOPES
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(engine: Engine, database_url: str, tokens: dict[str, str]) -> Iterator[TestClient]:
    """An authenticated app client whose default token is admin."""
    # Fewer bootstrap resamples than the service default: API tests check shapes, not coverage.
    app = create_app(Settings(database_url=database_url, bootstrap=40), engine=engine)
    with TestClient(app, headers=bearer(tokens["admin"])) as test_client:
        yield test_client


def count_rows(engine: Engine, model: type = Run) -> int:
    """How many rows `model`'s table holds (runs by default)."""
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model)).scalar_one()


def assert_error(response, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    """`response` is the contract's error body with this status and code; returns the error."""
    assert response.status_code == status, (response.request.method, response.request.url, response.text)
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code and body["error"]["message"]
    assert isinstance(body["error"]["details"], list)
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    return body["error"]


def make_run(i: int = 0, **overrides: object) -> dict[str, object]:
    """A valid run whose numbers vary with `i`."""
    run: dict[str, object] = {
        "run_key": f"run-{i}",
        "n_params": 1.0e8 * (1 + i % 3),
        "tokens": 2.0e9,
        "width": 512 * (1 + i % 3),
        "depth": 8,
        "learning_rate": 1e-3 * (1 + i % 7),
        "batch_size": 64 * (1 + i % 4),
        "final_loss": 3.0 + 0.001 * i,
    }
    run.update(overrides)
    return run


class InProcessTransport(httpx.BaseTransport):
    """An `httpx` transport into a `TestClient`'s app, for `hpscale.client.Client`.

    Starlette's TestClient is built on `httpx2` when that is installed (transformers'
    huggingface_hub brings it), and its own transport then answers httpx2 responses, which
    `httpx.Client` refuses; this adapter copies the request and the answer across."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.client.request(
            request.method, str(request.url), headers=list(request.headers.multi_items()), content=request.read()
        )
        return httpx.Response(answer.status_code, headers=list(answer.headers.multi_items()), content=answer.content)


def api_client(client: TestClient, token: str | None = None, **options: Any) -> Any:
    """`hpscale.client.Client` talking to the test app in-process (the admin token by default)."""
    from hpscale.client import Client

    token = token or client.headers["Authorization"].split()[1]
    return Client("http://testserver", token, transport=InProcessTransport(client), **options)

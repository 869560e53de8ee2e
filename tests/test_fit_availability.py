"""Answers never wait on a fit (issue 11): stale answers with a warning and a background refit,
`fresh=true` waits, a first fit waits only up to a deadline (503 + Retry-After), claims are
leases, and database failures are 503 + Retry-After on a connection that stays usable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine

from app.main import create_app
from service.fits import wait_for_background_refits
from service.settings import Settings
from store import leases, migrate, queries
from store.db import make_engine, run_in_transaction
from store.models import Fit
from tests.conftest import assert_error, bearer, count_rows
from tests.test_service_limits import loss_law_sweep

TARGET = {"n_params": 1e9, "tokens": 2e10}
URL = "/v1/studies/surface/recommendation"


@pytest.fixture
def surface(client: TestClient, engine: Engine) -> Iterator[TestClient]:
    assert client.post("/v1/studies", json={"name": "surface", "seq_len": 2048}).status_code == 201
    runs = loss_law_sweep()
    # Hold some runs back: the tests add them to make the fit stale.
    assert client.post("/v1/studies/surface/runs", json={"runs": runs[:-3]}).status_code == 201
    client.held_back = runs[-3:]  # type: ignore[attr-defined]
    yield client
    assert wait_for_background_refits(60, engine), "background refits still running after the test"


def study_state(client: TestClient) -> tuple[int, int]:
    study = client.get("/v1/studies/surface").json()
    return study["id"], int(study["data_version"])


def test_a_stale_fit_answers_at_once_with_a_warning_and_a_refit_follows(surface: TestClient, engine: Engine) -> None:
    first = surface.get(URL, params=TARGET)
    assert first.status_code == 200, first.text
    assert not any("refit is running" in w for w in first.json()["warnings"])
    n_runs = surface.get(f"/v1/studies/surface/fits/{first.json()['fit_id']}").json()["n_runs"]

    assert surface.post("/v1/studies/surface/runs", json=surface.held_back[0]).status_code == 201  # type: ignore[attr-defined]
    stale = surface.get(URL, params=TARGET)
    assert stale.status_code == 200, stale.text
    assert stale.json()["fit_id"] == first.json()["fit_id"]
    assert f"fitted on {n_runs} of {n_runs + 1} runs; a refit is running" in stale.json()["warnings"]

    assert wait_for_background_refits(60, engine)
    _, version = study_state(surface)
    fresh = surface.get(URL, params=TARGET)
    assert fresh.status_code == 200
    assert fresh.json()["fit_id"] != first.json()["fit_id"] and fresh.json()["data_version"] == str(version)
    assert not any("refit is running" in w for w in fresh.json()["warnings"])
    assert count_rows(engine, Fit) == 2


def test_fresh_true_waits_for_a_fit_of_the_current_runs(surface: TestClient) -> None:
    assert surface.get(URL, params=TARGET).status_code == 200
    assert surface.post("/v1/studies/surface/runs", json=surface.held_back[1]).status_code == 201  # type: ignore[attr-defined]
    _, version = study_state(surface)
    answer = surface.get(URL, params={**TARGET, "fresh": "true"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["data_version"] == str(version)
    assert not any("refit is running" in w for w in answer.json()["warnings"])


def dead_claim(engine: Engine, study_id: int, version: int, bootstrap: int) -> int:
    """A 'running' fit left by a process that died: its row, and on SQLite its lease, expired
    by the database's clock (on PostgreSQL its advisory lock went with its connection)."""

    def work(conn: Connection) -> int:
        fit_id = queries.claim_fit(conn, study_id, version, bootstrap, "dead-worker", "dead-worker")
        if conn.dialect.name != "postgresql":
            assert leases.acquire_lease(conn, study_id, "dead-worker", seconds=-1.0)
        assert fit_id is not None
        return fit_id

    return run_in_transaction(engine, work)


def test_a_first_fit_waits_only_up_to_the_deadline(engine: Engine, database_url: str, tokens: dict[str, str]) -> None:
    app = create_app(Settings(database_url=database_url, bootstrap=40, fit_wait_seconds=0.3), engine=engine)
    with TestClient(app, headers=bearer(tokens["admin"])) as client:
        assert client.post("/v1/studies", json={"name": "surface", "seq_len": 2048}).status_code == 201
        assert client.post("/v1/studies/surface/runs", json={"runs": loss_law_sweep()}).status_code == 201
        study_id, _ = study_state(client)
        # Another process holds the study's fit lock (and keeps it: a live holder), so the
        # first fit cannot start here.
        lock = leases.try_lock(engine, study_id, "other-worker")
        assert lock is not None
        try:
            response = client.get(URL, params=TARGET)
            assert_error(response, 503, "unavailable")
            assert response.headers["retry-after"]
            assert "first fit" in response.json()["error"]["message"]
        finally:
            lock.release()
        assert wait_for_background_refits(60, engine)


def test_a_recommendation_takes_over_a_claim_whose_holder_died(surface: TestClient, engine: Engine) -> None:
    study_id, version = study_state(surface)
    fit_id = dead_claim(engine, study_id, version, 40)
    response = surface.get(URL, params=TARGET)
    assert response.status_code == 200, response.text
    assert response.json()["fit_id"] == fit_id
    assert count_rows(engine, Fit) == 1


def test_a_database_that_refuses_writes_gives_503_and_keeps_the_connection(
    tmp_path: Path, tokens: dict[str, str]
) -> None:
    # A SQLite file opened read-only: reads work, every write fails as on a read-only disk.
    path = tmp_path / "ro.db"
    writable = make_engine(f"sqlite:///{path}")
    migrate.upgrade(writable)
    token = run_in_transaction(writable, lambda conn: queries.create_token(conn, "ro-admin", "admin"))
    writable.dispose()
    engine = make_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    app = create_app(Settings(database_url=f"sqlite:///{path}", bootstrap=40), engine=engine)
    with TestClient(app, headers=bearer(token)) as client:
        response = client.post("/v1/studies", json={"name": "nowhere"})
        error = assert_error(response, 503, "unavailable")
        assert "read-only" in error["message"]
        assert response.headers["retry-after"]
        assert response.headers.get("connection") != "close"
        ready = client.get("/readyz")
        assert_error(ready, 503, "unavailable")
        assert "writes" in ready.json()["error"]["message"]
        assert client.get("/healthz").status_code == 200
    engine.dispose()


def test_readyz_is_ready_on_a_writable_database(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ready"


def test_fit_inputs_read_in_one_snapshot_equal_the_stored_runs(surface: TestClient, engine: Engine) -> None:
    """The fit's input (COPY on PostgreSQL, keyset chunks on SQLite) is exactly the stored
    runs, excluded ones left out: numbers, NULLs and defaults (a weight decay never given
    reads as 0), statuses, and run keys with characters COPY's text format escapes (tab and
    backslash: the only control character a run key may hold is tab)."""
    import numpy as np

    from fitting.runs import RunTable
    from service.fits import read_snapshot, run_table
    from store.db import snapshot_connection

    extra = [
        {**surface.held_back[0], "status": "diverged", "final_loss": None, "run_key": "tab\tand\\back\\slash"},  # type: ignore[attr-defined]
        {**surface.held_back[1], "weight_decay": 0.1, "seq_len": 4096, "run_key": None},  # type: ignore[attr-defined]
        {**surface.held_back[2], "run_key": "ünïcode\tkey", "weight_decay": None},  # type: ignore[attr-defined]
    ]
    posted = surface.post("/v1/studies/surface/runs", json={"runs": extra})
    assert posted.status_code == 201, posted.text
    excluded = surface.post(f"/v1/studies/surface/runs/{posted.json()['ids'][0] - 5}/exclude", json={"reason": "x"})
    assert excluded.status_code == 200, excluded.text
    study_id, version = study_state(surface)
    stored = [run for run in queries.iter_runs(engine, study_id) if not run["excluded"]]
    expected = RunTable.from_records(stored, default_seq_len=2048)
    study, table = read_snapshot(engine, study_id)
    with snapshot_connection(engine) as conn:
        chunked = run_table(queries.fit_input_chunks(conn, study_id, chunk=7), 2048)
    assert study.data_version == version
    assert len(table) == len(chunked) == len(expected) > 7
    for got in (table, chunked):
        for name in expected.__dataclass_fields__:
            a, b = getattr(expected, name), getattr(got, name)
            if a.dtype == object:
                assert list(a) == list(b), name
            else:
                np.testing.assert_array_equal(a, b, err_msg=name)
    assert "tab\tand\\back\\slash" in list(table.run_key)


def test_a_failed_final_write_releases_the_claim_and_the_next_request_fits(
    surface: TestClient, engine: Engine, database_url: str
) -> None:
    """The database fails exactly at the fit's final write (PostgreSQL raises disk_full from a
    trigger, the error a full disk gives): 503 + Retry-After, no 'running' row left behind,
    and the next request fits at once instead of waiting for a dead claim."""
    if not database_url.startswith("postgresql"):
        pytest.skip("the disk_full trigger is PostgreSQL's; the SQLite read-only case is tested above")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE FUNCTION hpscale_test_disk_full() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full'; "
            "END $$ LANGUAGE plpgsql"
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER hpscale_test_disk_full BEFORE UPDATE ON fits FOR EACH ROW "
            "WHEN (NEW.status = 'done') EXECUTE FUNCTION hpscale_test_disk_full()"
        )
    try:
        response = surface.post("/v1/studies/surface/fits", json={"bootstrap": 20})
        error = assert_error(response, 503, "unavailable")
        assert response.headers["retry-after"]
        # Answered when the fit failed, with its reason, not after waiting out the deadline.
        assert "the fit this request waits for failed" in error["message"] and "disk is full" in error["message"]
        with engine.connect() as conn:
            statuses = [row[0] for row in conn.exec_driver_sql("SELECT status FROM fits")]
        assert "running" not in statuses
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER hpscale_test_disk_full ON fits")
            conn.exec_driver_sql("DROP FUNCTION hpscale_test_disk_full()")
    again = surface.post("/v1/studies/surface/fits", json={"bootstrap": 20})
    assert again.status_code == 201, again.text

"""Exactly-once writes under concurrency, and crash safety.

- 8 writer processes x 5,000 runs, half of each writer's keys shared by all writers, at
  once on one database: through the store layer (SQLite file and PostgreSQL) and over
  HTTP against `hpscale serve --workers 2`. Exactly the distinct keys are stored, never a
  duplicate, and every writer is told the same id for the same key.
- A server killed with SIGKILL while it stores a 10,000-run batch leaves all of it or
  none of it.

`pytest -s` prints the figures for the closing note.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select, text

from store import queries
from store.db import make_engine, run_in_transaction
from store.models import Run
from tests.conftest import make_run
from tests.test_serve import free_port, serve_argv, wait_healthy

pytestmark = pytest.mark.slow  # starts servers or a browser

WRITERS = 8
RUNS_PER_WRITER = 5_000
SHARED = RUNS_PER_WRITER // 2  # keys every writer submits: 50% of each writer's runs
BATCH = 500
EXPECTED_DISTINCT = WRITERS * (RUNS_PER_WRITER - SHARED) + SHARED  # 22,500


def writer_runs(writer: int) -> list[dict[str, Any]]:
    """Writer `writer`'s 5,000 runs: keys s-0..s-2499 (shared by all) and its own u{w}-*,
    interleaved in an order of its own so writers collide on shared keys mid-batch."""
    shared = [make_run(i, run_key=f"s-{i}") for i in range(SHARED)]
    own = [make_run(i, run_key=f"u{writer}-{i}") for i in range(RUNS_PER_WRITER - SHARED)]
    runs = shared + own
    random.Random(writer).shuffle(runs)
    return runs


def _store_writer(url: str, study_id: int, writer: int, barrier: Any, out: str) -> None:
    engine = make_engine(url)
    runs = [r | {"weight_decay": 0.0, "status": "completed"} for r in writer_runs(writer)]
    ids: dict[str, int] = {}
    inserted = duplicates = 0
    barrier.wait()
    for start in range(0, len(runs), BATCH):
        batch = runs[start : start + BATCH]
        result = run_in_transaction(engine, lambda c: queries.insert_runs(c, study_id, batch, f"writer-{writer}"))
        inserted += result.inserted
        duplicates += result.duplicates
        ids.update(zip((r["run_key"] for r in batch), result.ids))
    engine.dispose()
    Path(out).write_text(json.dumps({"ids": ids, "inserted": inserted, "duplicates": duplicates, "errors": 0}))


def _http_writer(base_url: str, token: str, study: str, writer: int, barrier: Any, out: str) -> None:
    runs = writer_runs(writer)
    ids: dict[str, int] = {}
    inserted = duplicates = errors = 0
    statuses: dict[str, int] = {}
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
        barrier.wait()
        for start in range(0, len(runs), BATCH):
            batch = runs[start : start + BATCH]
            response = client.post(f"/v1/studies/{study}/runs", json={"runs": batch})
            statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
            if response.status_code != 201:
                errors += 1
                continue
            result = response.json()
            inserted += result["inserted"]
            duplicates += result["duplicates"]
            ids.update(zip((r["run_key"] for r in batch), result["ids"]))
    Path(out).write_text(
        json.dumps({"ids": ids, "inserted": inserted, "duplicates": duplicates, "errors": errors, "statuses": statuses})
    )


def run_writers(target: Any, args: tuple[Any, ...], tmp_path: Path) -> list[dict[str, Any]]:
    # fork: each writer is its own process with its own engine or HTTP client, without
    # paying for re-importing the app eight times on a two-core CI machine.
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(WRITERS)
    outs = [tmp_path / f"writer-{w}.json" for w in range(WRITERS)]
    processes = [
        context.Process(target=target, args=(*args, w, barrier, str(outs[w])), name=f"writer-{w}")
        for w in range(WRITERS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert all(p.exitcode == 0 for p in processes), [p.exitcode for p in processes]
    return [json.loads(out.read_text()) for out in outs]


def assert_exactly_once(engine: Engine, study_id: int, results: list[dict[str, Any]], label: str) -> None:
    with engine.connect() as conn:
        stored = conn.execute(select(Run.run_key, Run.id).where(Run.study_id == study_id)).all()
        repeated = conn.execute(
            select(Run.run_key).where(Run.study_id == study_id).group_by(Run.run_key).having(func.count() > 1)
        ).all()
    id_of = dict(stored)
    expected_keys = {f"s-{i}" for i in range(SHARED)} | {
        f"u{w}-{i}" for w in range(WRITERS) for i in range(RUNS_PER_WRITER - SHARED)
    }
    assert repeated == []
    assert len(stored) == EXPECTED_DISTINCT == len(id_of)
    assert set(id_of) == expected_keys
    assert sum(r["errors"] for r in results) == 0, [r.get("statuses") for r in results]
    assert sum(r["inserted"] for r in results) == EXPECTED_DISTINCT
    assert sum(r["duplicates"] for r in results) == WRITERS * RUNS_PER_WRITER - EXPECTED_DISTINCT
    for result in results:
        assert len(result["ids"]) == RUNS_PER_WRITER
        assert all(id_of[key] == run_id for key, run_id in result["ids"].items())  # same id for every writer
    print(
        f"\n[concurrency:{label}] {WRITERS} writers x {RUNS_PER_WRITER} runs ({WRITERS * RUNS_PER_WRITER} writes, "
        f"{SHARED} keys shared by all): {len(stored)} stored, expected {EXPECTED_DISTINCT}, "
        f"lost {len(expected_keys - set(id_of))}, duplicated {len(repeated)}, errors 0"
    )


def test_concurrent_store_writers_store_each_key_once(database_url: str, engine: Engine, tmp_path: Path) -> None:
    study = run_in_transaction(
        engine,
        lambda c: queries.create_study(c, {"name": "race", "parameterization": "sp", "optimizer": "adamw"}, None),
    )
    assert study is not None
    results = run_writers(_store_writer, (database_url, study.id), tmp_path)
    assert_exactly_once(engine, study.id, results, f"store/{engine.dialect.name}")


# --- real servers ---------------------------------------------------------------------------

TOKEN = "hps_concurrency-test-admin-token-0123456789-ABCDEFGHIJK"


def start_server(database_url: str, workers: int = 1, port: int | None = None) -> tuple[subprocess.Popen, str]:
    port = port or free_port()
    process = subprocess.Popen(
        serve_argv(database_url, port, workers=workers),
        env={**os.environ, "HPSCALE_BOOTSTRAP_ADMIN_TOKEN": TOKEN},
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, process)
    return process, url


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)  # the server and its workers (its own session)
    process.wait(timeout=30)
    if process.stderr:
        process.stderr.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """`hpscale serve --workers 2` on a SQLite file (PostgreSQL's conflict handling is
    covered by the store-layer test; this one is about several server processes)."""
    process, url = start_server(f"sqlite:///{tmp_path / 'served.db'}", workers=2)
    yield url
    stop(process)


def test_concurrent_http_writers_on_two_workers_store_each_key_once(server: str, tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'served.db'}")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(f"{server}/v1/studies", json={"name": "race"}, headers=auth).status_code == 201
    results = run_writers(_http_writer, (server, TOKEN, "race"), tmp_path)
    with engine.connect() as conn:
        study_id = conn.execute(text("SELECT id FROM studies WHERE name = 'race'")).scalar_one()
    assert_exactly_once(engine, study_id, results, f"http/serve --workers 2/{engine.dialect.name}")
    statuses: dict[str, int] = {}
    for result in results:
        for code, n in result["statuses"].items():
            statuses[code] = statuses.get(code, 0) + n
    assert statuses == {"201": WRITERS * RUNS_PER_WRITER // BATCH}
    shown = httpx.get(f"{server}/v1/studies/race", headers=auth).json()
    assert shown["run_count"] == EXPECTED_DISTINCT
    engine.dispose()


# --- SIGKILL in the middle of a 10,000-run batch --------------------------------------------

BIG = 10_000


def _writer_active(database_url: str, engine: Engine) -> bool:
    """Whether some other connection holds an open write transaction right now."""
    if engine.dialect.name == "sqlite":
        conn = sqlite3.connect(engine.url.database, timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:  # database is locked: a writer is in its transaction
            return True
        finally:
            conn.close()
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL"
                )
            ).scalar_one()
        )


def test_sigkill_mid_batch_leaves_all_or_nothing(database_url: str, engine: Engine) -> None:
    rng = random.Random(20240506)
    # (how the moment is chosen, seconds): kill a few ms, or a while, after the server's
    # write transaction began; or at a random moment of a whole request (its length taken
    # from the first trial's retry, which stores the batch in full).
    # Last, a kill right after the 201: what was acknowledged must survive it.
    plan = [
        ("in transaction", rng.uniform(0, 0.02)),
        ("in transaction", rng.uniform(0.02, 0.25)),
        ("random", rng.random()),
        ("after response", 0.0),
    ]
    outcomes: list[tuple[str, float, int, str]] = []
    request_seconds = 1.0
    process, url = start_server(database_url)
    port = int(url.rsplit(":", 1)[1])
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    try:
        for trial, (phase, planned_delay) in enumerate(plan):
            study = f"crash-{trial}"
            delay = planned_delay
            assert httpx.post(f"{url}/v1/studies", json={"name": study}, headers=auth).status_code == 201
            body = json.dumps({"runs": [make_run(i, run_key=f"t{trial}-{i}") for i in range(BIG)]}).encode()
            response: dict[str, Any] = {}

            def send() -> None:
                try:
                    response["status"] = httpx.post(
                        f"{url}/v1/studies/{study}/runs", content=body, headers=auth, timeout=120
                    ).status_code
                except httpx.HTTPError as error:
                    response["error"] = type(error).__name__

            sender = threading.Thread(target=send)
            sender.start()
            if phase == "in transaction":
                deadline = time.monotonic() + 60
                while not _writer_active(database_url, engine) and sender.is_alive() and time.monotonic() < deadline:
                    time.sleep(0.001)
                assert sender.is_alive(), "the request finished before its transaction was seen"
            elif phase == "random":
                delay = planned_delay * 1.2 * request_seconds
            else:
                sender.join(timeout=120)
                assert response.get("status") == 201, response
            time.sleep(delay)
            stop(process, signal.SIGKILL)
            sender.join(timeout=60)
            process, url = start_server(database_url, port=port)  # recovers the database
            with engine.connect() as conn:
                stored = conn.execute(
                    select(func.count()).select_from(Run).where(Run.run_key.like(f"t{trial}-%"))
                ).scalar_one()
            assert stored in (0, BIG), f"trial {trial}: {stored} of {BIG} runs survived the kill"
            assert httpx.get(f"{url}/v1/studies/{study}", headers=auth).json()["run_count"] == stored
            if response.get("status") == 201:
                assert stored == BIG  # an acknowledged batch is never lost
            outcomes.append(
                (phase, round(delay * 1000, 1), stored, str(response.get("status") or response.get("error")))
            )
            # The client may simply retry: the batch ends up stored exactly once.
            started = time.monotonic()
            retry = httpx.post(f"{url}/v1/studies/{study}/runs", content=body, headers=auth, timeout=120)
            if trial == 0:
                request_seconds = time.monotonic() - started
            assert retry.status_code == 201 and retry.json()["inserted"] == BIG - stored
            assert httpx.get(f"{url}/v1/studies/{study}", headers=auth).json()["run_count"] == BIG
    finally:
        stop(process)
    print(
        f"\n[sigkill:{engine.dialect.name}] {len(plan)} trials (phase, ms after, runs stored, client saw): {outcomes}"
    )

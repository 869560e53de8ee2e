"""Batch-ingest throughput of runs into SQLite: raw sqlite3 vs. the store layer vs. HTTP.

Measures runs/second for inserting the same N deterministic synthetic runs, in batches,
into a fresh temporary SQLite file (schema from `store.migrate.upgrade`, WAL mode) three ways:

1. baseline -- plain `sqlite3` `executemany` into the `runs` table, one transaction per batch;
2. store    -- `store.queries.insert_runs` inside `store.db.run_in_transaction`, with run_keys;
3. http     -- POST {"runs": [...]} batches to a real `hpscale serve --no-auth` subprocess
               over one keep-alive `httpx.Client` (wall time of all posts).

After each method the database must hold exactly N runs, or the benchmark aborts. The store
layer's speed relative to the baseline is compared with a target (>= 0.25); the result is
reported as PASS/MISS, it does not change the exit status.

Run from the repository root:

    python bench/ingest.py                       # 100,000 runs in batches of 10,000
    python bench/ingest.py --runs 20000 --batch 5000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

# Allow `python bench/ingest.py` from a checkout without relying on the current directory.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from service.limits import MAX_BATCH_RUNS
from store import migrate, queries
from store.db import make_engine, run_in_transaction
from store.queries import RUN_FIELDS

STUDY = "bench-ingest"
CREATED_BY = "bench"
STORE_TARGET = 0.25
MAX_HTTP_BATCH = MAX_BATCH_RUNS  # the API's limit on runs per POST


# --- synthetic data ------------------------------------------------------------------


def synthetic_runs(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` completed proxy runs, as `RunIn.model_dump()` would hand them to the store."""
    rng = random.Random(seed)
    widths = (128, 256, 384, 512, 768, 1024, 1536, 2048)
    depths = (2, 4, 6, 8, 12, 16, 24)
    runs = []
    for i in range(n):
        width = rng.choice(widths)
        depth = rng.choice(depths)
        seq_len = rng.choice((1024, 2048))
        n_params = float(12 * depth * width * width)
        tokens = float(round(n_params * rng.uniform(10.0, 40.0)))
        learning_rate = 10 ** rng.uniform(-4.0, -2.0)
        batch_size = 2 ** rng.randint(5, 10)
        weight_decay = rng.choice((0.0, 0.01, 0.1))
        final_loss = 1.8 + 40.0 * n_params**-0.25 + 0.5 * abs(rng.gauss(0.0, 0.05))
        runs.append(
            {
                "run_key": f"bench-{seed}-{i:08d}",
                "n_params": n_params,
                "tokens": tokens,
                "width": width,
                "depth": depth,
                "seq_len": seq_len,
                "learning_rate": learning_rate,
                "batch_size": batch_size,
                "weight_decay": weight_decay,
                "status": "completed",
                "final_loss": final_loss,
                "loss_curve": None,
                "seed": rng.randint(0, 2**31 - 1),
                "extra": {"beta2": rng.choice((0.95, 0.99)), "sweep": f"sweep-{i % 7}"},
            }
        )
    assert all(tuple(run) == RUN_FIELDS for run in runs[:1])
    return runs


def batches(runs: Sequence[dict[str, Any]], size: int) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(runs), size):
        yield runs[start : start + size]


# --- verification --------------------------------------------------------------------


def verify(path: Path, expected: int, method: str) -> None:
    """Abort unless the file holds exactly `expected` runs, all in the study, keys distinct."""
    with sqlite3.connect(path) as db:
        total, in_study, keys = db.execute(
            "SELECT count(*),"
            " sum(study_id = (SELECT id FROM studies WHERE name = ?)),"
            " count(DISTINCT run_key) FROM runs",
            (STUDY,),
        ).fetchone()
    db.close()
    if not (total == in_study == keys == expected):
        raise SystemExit(
            f"{method}: database holds {total} runs ({in_study} in the study, {keys} distinct keys), "
            f"expected {expected}"
        )


def migrated_file(directory: Path, name: str) -> Path:
    path = directory / f"{name}.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    engine.dispose()
    return path


# --- 1. baseline: raw sqlite3 ----------------------------------------------------------

_RAW_COLUMNS = ("study_id", *RUN_FIELDS, "created_at", "created_by")
_JSON_FIELDS = {"loss_curve", "extra"}


def bench_baseline(directory: Path, runs: list[dict[str, Any]], batch: int) -> float:
    path = migrated_file(directory, "baseline")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute(
        "INSERT INTO studies (name, parameterization, optimizer, data_version, created_at, created_by)"
        " VALUES (?, 'sp', 'adamw', 0, ?, ?)",
        (STUDY, _sqlite_timestamp(), CREATED_BY),
    )
    (study_id,) = db.execute("SELECT id FROM studies WHERE name = ?", (STUDY,)).fetchone()
    sql = f"INSERT INTO runs ({', '.join(_RAW_COLUMNS)}) VALUES ({', '.join('?' for _ in _RAW_COLUMNS)})"

    started = time.perf_counter()
    for chunk in batches(runs, batch):
        # The raw path still has to serialize JSON columns and stamp rows, like the store does.
        now = _sqlite_timestamp()
        rows = [
            (
                study_id,
                *(
                    (None if run[f] is None else json.dumps(run[f])) if f in _JSON_FIELDS else run[f]
                    for f in RUN_FIELDS
                ),
                now,
                CREATED_BY,
            )
            for run in chunk
        ]
        db.execute("BEGIN IMMEDIATE")
        db.executemany(sql, rows)
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    verify(path, len(runs), "baseline")
    return elapsed


def _sqlite_timestamp() -> str:
    # The format SQLAlchemy's SQLite DateTime type stores.
    from store.models import utcnow

    return utcnow().strftime("%Y-%m-%d %H:%M:%S.%f")


# --- 2. store layer --------------------------------------------------------------------


def bench_store(directory: Path, runs: list[dict[str, Any]], batch: int) -> float:
    path = migrated_file(directory, "store")
    engine = make_engine(f"sqlite:///{path}")
    fields = {"name": STUDY, "parameterization": "sp", "optimizer": "adamw"}
    study = run_in_transaction(engine, lambda conn: queries.create_study(conn, fields, CREATED_BY))
    assert study is not None

    started = time.perf_counter()
    for chunk in batches(runs, batch):
        result = run_in_transaction(engine, lambda conn: queries.insert_runs(conn, study.id, chunk, CREATED_BY))
        if result.inserted != len(chunk):
            raise SystemExit(f"store: inserted {result.inserted} of {len(chunk)} runs")
    elapsed = time.perf_counter() - started
    engine.dispose()
    verify(path, len(runs), "store")
    return elapsed


# --- 3. HTTP ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _hpscale_command() -> list[str]:
    script = shutil.which("hpscale")
    return [script] if script else [sys.executable, "-m", "hpscale.cli"]


def bench_http(directory: Path, runs: list[dict[str, Any]], batch: int) -> float:
    path = directory / "http.db"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = directory / "server.log"
    command = [
        *_hpscale_command(), "serve", "--no-auth", "--database-url", f"sqlite:///{path}",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "HPSCALE_BOOTSTRAP_ADMIN_TOKEN"}
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        with httpx.Client(base_url=base, timeout=httpx.Timeout(300.0, connect=5.0)) as client:
            _wait_healthy(client, server, log_path)
            response = client.post("/v1/studies", json={"name": STUDY})
            _expect(response, 201, log_path)
            url = f"/v1/studies/{STUDY}/runs"
            # JSON encoding stays inside the timed loop: a real client has to do it too.
            started = time.perf_counter()
            for chunk in batches(runs, batch):
                response = client.post(url, json={"runs": list(chunk)})
                _expect(response, 201, log_path)
                if response.json()["inserted"] != len(chunk):
                    raise SystemExit(f"http: server inserted {response.json()['inserted']} of {len(chunk)}")
            elapsed = time.perf_counter() - started
    finally:
        _stop(server)
    verify(path, len(runs), "http")
    return elapsed


def _wait_healthy(client: httpx.Client, server: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"http: server exited with {server.returncode}:\n{log_path.read_text()}")
        try:
            if client.get("/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"http: server not healthy after 60 s:\n{log_path.read_text()}")


def _expect(response: httpx.Response, status: int, log_path: Path) -> None:
    if response.status_code != status:
        raise SystemExit(
            f"http: {response.request.method} {response.request.url.path} -> {response.status_code}: "
            f"{response.text[:500]}\n{log_path.read_text()[-2000:]}"
        )


def _stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is not None:
        return
    server.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


# --- main ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100_000, help="runs to ingest per method")
    parser.add_argument("--batch", type=int, default=MAX_HTTP_BATCH, help=f"runs per batch (1..{MAX_HTTP_BATCH})")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be positive")
    if not 1 <= args.batch <= MAX_HTTP_BATCH:
        parser.error(f"--batch must be between 1 and {MAX_HTTP_BATCH} (the API's batch limit)")

    runs = synthetic_runs(args.runs)
    methods: list[tuple[str, Callable[[Path, list[dict[str, Any]], int], float]]] = [
        ("baseline", bench_baseline),
        ("store", bench_store),
        ("http", bench_http),
    ]
    print(f"ingesting {args.runs:,} runs in batches of {args.batch:,} into SQLite {sqlite3.sqlite_version}")
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="hpscale-bench-") as tmp:
        for name, bench in methods:
            directory = Path(tmp) / name
            directory.mkdir()
            results[name] = bench(directory, runs, args.batch)

    base_rate = args.runs / results["baseline"]
    print(f"\n{'method':<10} {'runs':>9} {'seconds':>9} {'runs/s':>11} {'vs baseline':>12}")
    for name, seconds in results.items():
        rate = args.runs / seconds
        print(f"{name:<10} {args.runs:>9,} {seconds:>9.2f} {rate:>11,.0f} {rate / base_rate:>12.3f}")
    ratio = results["baseline"] / results["store"]
    verdict = "PASS" if ratio >= STORE_TARGET else "MISS"
    print(f"\nstore-layer ratio: {ratio:.2f} (target >= {STORE_TARGET:.2f}) {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

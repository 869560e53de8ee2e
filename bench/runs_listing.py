"""Runs as the dashboard lists them: a 100k-run study filtered by the latest fit's state, sorted,
paged, over HTTP from a real server; the unfiltered first page, measured in the same run, is the
baseline.

For each database (SQLite, plus PostgreSQL when HPSCALE_TEST_POSTGRES_URL is set):

1. `hpscale import` of a generated study (bench/scale.py's grid and loss surface), then a fit;
2. cold: the first `?state=` page after the fit (it computes and stores every run's state);
3. warm, 200 requests each (p50 / p99 in ms, and p50 over the baseline's):
   - baseline: `GET .../runs?limit=100`;
   - `?state=<s>` for every state the fit gave, page 1 and the page after it;
   - `?sort=final_loss`, `?state=used&sort=final_loss&order=desc`;
4. after 1,000 more runs arrive: the first state page (only the new runs get a state), then warm;
5. after 50 runs are excluded: `?state=excluded`.

The target (issue 21): a state-filtered page in ≤ 50 ms at 100k runs. Servers listen on
127.0.0.1; every loop is bounded. Run from the repo root:

    python bench/runs_listing.py                  # 100,000 runs
    python bench/runs_listing.py --runs 20000 --backends sqlite
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python bench/runs_listing.py` from a checkout

from bench.scale import generate_csv, run_measured, server
from store.db import create_database, drop_database

STUDY = "listing"
REQUESTS = 200
TARGET_MS = 50.0


def timed(client: httpx.Client, path: str, params: dict, n: int = REQUESTS) -> tuple[float, float, dict]:
    """p50 and p99 (ms) of `n` identical GETs, and the last answer."""
    times = []
    body: dict = {}
    for _ in range(n):
        started = time.perf_counter()
        response = client.get(path, params=params)
        times.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"GET {path} {params}: {response.status_code} {response.text[:300]}")
        body = response.json()
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))], body


def import_study(database_url: str, directory: Path, n_runs: int) -> float:
    csv = directory / "runs.csv"
    generate_csv(csv, n_runs)
    args = [sys.executable, "-m", "hpscale.cli", "import", str(csv), "--study", STUDY, "--create", "--quiet"]
    seconds, _ = run_measured([*args, "--database-url", database_url])
    return seconds


def bench(database_url: str, label: str, n_runs: int, directory: Path) -> list[tuple[str, float, float, float]]:
    seconds = import_study(database_url, directory, n_runs)
    print(f"\n== {label}: {n_runs:,} runs imported in {seconds:.1f} s", flush=True)
    rows: list[tuple[str, float, float, float]] = []
    with server(database_url, 1) as (url, _process), httpx.Client(base_url=url, timeout=600) as client:
        path = f"/v1/studies/{STUDY}/runs"
        started = time.perf_counter()
        fit = client.post(f"/v1/studies/{STUDY}/fits", json={"bootstrap": 20})
        if fit.status_code != 201:
            raise SystemExit(f"fit: {fit.status_code} {fit.text[:300]}")
        print(f"fit: {time.perf_counter() - started:.1f} s", flush=True)
        counts = client.get(f"/v1/studies/{STUDY}/fits/latest/run-states").json()["counts"]
        print("states in the fit: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()), flush=True)

        started = time.perf_counter()
        client.get(path, params={"state": "used", "limit": 100}).raise_for_status()
        cold = (time.perf_counter() - started) * 1000
        rows.append(("first state page after the fit (stores every run's state)", cold, cold, float("nan")))

        base50, base99, _ = timed(client, path, {"limit": 100})
        rows.append(("baseline: unfiltered page 1", base50, base99, 1.0))
        for state in [s for s, n in counts.items() if n] + ["outlier"]:
            p50, p99, body = timed(client, path, {"state": state, "limit": 100})
            rows.append((f"state={state} page 1 ({counts.get(state, 0):,} runs)", p50, p99, p50 / base50))
            if body["next_cursor"]:
                params = {"state": state, "limit": 100, "cursor": body["next_cursor"]}
                p50, p99, _ = timed(client, path, params)
                rows.append((f"state={state} page 2", p50, p99, p50 / base50))
        p50, p99, _ = timed(client, path, {"sort": "final_loss", "limit": 100}, n=50)
        rows.append(("sort=final_loss page 1", p50, p99, p50 / base50))
        params = {"state": "used", "sort": "final_loss", "order": "desc", "limit": 100}
        p50, p99, _ = timed(client, path, params, n=50)
        rows.append(("state=used&sort=final_loss&order=desc page 1", p50, p99, p50 / base50))

        more = [
            {"n_params": 1e8, "tokens": 2e9, "learning_rate": 1e-3 * (1 + i % 7), "batch_size": 64, "final_loss": 3.0}
            for i in range(1000)
        ]
        client.post(f"/v1/studies/{STUDY}/runs", json={"runs": more}).raise_for_status()
        started = time.perf_counter()
        client.get(path, params={"state": "used", "limit": 100}).raise_for_status()
        first = (time.perf_counter() - started) * 1000
        rows.append(("first state page after 1,000 new runs (states of the new ones)", first, first, first / base50))
        p50, p99, _ = timed(client, path, {"state": "used", "limit": 100})
        rows.append(("state=used page 1, warm again", p50, p99, p50 / base50))
        for run in client.get(path, params={"state": "diverged", "limit": 50}).json()["items"]:
            client.post(f"{path}/{run['id']}/exclude", json={"reason": "bench"}).raise_for_status()
        client.get(path, params={"state": "used", "limit": 1}).raise_for_status()  # states after the change
        p50, p99, _ = timed(client, path, {"state": "excluded", "limit": 100})
        rows.append(("state=excluded page 1 (50 runs)", p50, p99, p50 / base50))
    print(f"{'request':<66} {'p50 ms':>8} {'p99 ms':>8} {'p50/base':>9}")
    for name, p50, p99, ratio in rows:
        print(f"{name:<66} {p50:>8.1f} {p99:>8.1f} {ratio:>9.2f}")
    state_pages = [p50 for name, p50, _, _ in rows if name.startswith("state=") and "page" in name]
    worst = max(state_pages)
    verdict = "meets" if worst <= TARGET_MS else "MISSES"
    print(f"slowest state-filtered page p50: {worst:.1f} ms ({verdict} the {TARGET_MS:.0f} ms target)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"], choices=("sqlite", "postgresql"))
    args = parser.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="hpscale-listing-") as tmp:
        directory = Path(tmp)
        if "sqlite" in args.backends:
            bench(f"sqlite:///{directory / 'listing.db'}", "SQLite", args.runs, directory)
        admin = os.environ.get("HPSCALE_TEST_POSTGRES_URL")
        if "postgresql" in args.backends and admin:
            name = f"hpscale_listing_{uuid.uuid4().hex[:8]}"
            url = create_database(admin, name)
            try:
                bench(url, "PostgreSQL", args.runs, directory)
            finally:
                drop_database(admin, name)
        elif "postgresql" in args.backends:
            print("\n(PostgreSQL skipped: set HPSCALE_TEST_POSTGRES_URL)")


if __name__ == "__main__":
    main()

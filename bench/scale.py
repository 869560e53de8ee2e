"""Scale and availability: one study of 10k / 100k / 1M synthetic runs, measured from outside.

For each size (and each database: SQLite, plus PostgreSQL when HPSCALE_TEST_POSTGRES_URL is
set) it prints one table row:

- import: `hpscale import` of a generated CSV (wall time, peak RSS of the CLI process);
- first fit: the first recommendation of the study (it waits for the first fit), and the
  server's peak RSS (VmHWM of the single worker) by then;
- runs.csv: rows/s streamed over HTTP; baseline: `hpscale export` to /dev/null, same run;
- list p99: `GET .../runs?limit=100` (page 1), 200 requests;
- recommendation p50/p99 idle, and under continuous ingest (4 writers posting 10-run
  batches; 2 workers on PostgreSQL, 1 on SQLite). Baseline: `/healthz` p50/p99, same run.

Servers and clients talk over 127.0.0.1 only; every loop is bounded. Run from the repo root:

    python bench/scale.py                     # 10,000 runs (what CI runs)
    python bench/scale.py --sizes 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python bench/scale.py` from a checkout

from store.db import create_database, drop_database

TARGET = {"n_params": 7e9, "tokens": 1.4e12}
COLUMNS = ["run_key", "n_params", "tokens", "width", "depth", "learning_rate", "batch_size", "final_loss", "seed"]


def generate_csv(path: Path, n_runs: int, seed: int = 0) -> None:
    """`n_runs` runs on a grid: 8 model sizes x 10 learning rates x 5 batch sizes x seeds,
    losses from a known surface (bowl in log lr and log batch around power-law optima)."""
    rng = random.Random(seed)
    sizes = [(256 * 2**i, 4 + 2 * i) for i in range(8)]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for i in range(n_runs):
            width, depth = sizes[i % 8]
            n_params = 12.0 * width * width * depth
            tokens = 20.0 * n_params
            lr = 10 ** (-4 + 2.5 * ((i // 8) % 10) / 9)
            batch = 32 * 2 ** ((i // 80) % 5)
            lr_star = 3e-3 * (n_params / 1e8) ** -0.3
            batch_star = 256 * (tokens / 2e9) ** 0.3
            loss = 1.8 + 400 / n_params**0.34 + 0.1 * math.log(lr / lr_star) ** 2
            loss += 0.03 * math.log(batch / batch_star) ** 2 + rng.gauss(0, 0.005)
            writer.writerow([f"r{i}", n_params, tokens, width, depth, lr, batch, round(loss, 6), i // 400])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_measured(args: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run a command; its wall time (s) and peak RSS (MB)."""
    start = time.perf_counter()
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"failed ({process.returncode}): {' '.join(args)}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def peak_rss_mb(pid: int) -> float:
    """Peak RSS (VmHWM) of a process and its children (uvicorn's workers), in MB."""
    total = 0.0
    pids = [pid] + [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total = max(total, int(line.split()[1]) / 1024)
    return total


@contextmanager
def server(database_url: str, workers: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {**os.environ, "HPSCALE_FIT_WAIT_SECONDS": "3600", "OPENBLAS_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "hpscale.cli", "serve", "--no-auth", "--port", str(port)),
            *("--workers", str(workers), "--database-url", database_url, "--log-level", "warning"),
        ],
        env=env,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise SystemExit("server did not start")
        yield url, process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2] * 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


def timed_gets(client: httpx.Client, url: str, params: dict[str, float] | None, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        response = client.get(url, params=params)
        samples.append(time.perf_counter() - start)
        if response.status_code != 200:
            raise SystemExit(f"{url}: {response.status_code} {response.text[:200]}")
    return samples


def measure(database_url: str, n_runs: int, workdir: Path, workers: int) -> dict[str, str]:
    study = f"scale{n_runs}"
    data = workdir / f"runs-{n_runs}.csv"
    if not data.exists():
        generate_csv(data, n_runs)
    cli = [sys.executable, "-m", "hpscale.cli"]
    import_s, import_mb = run_measured(
        [*cli, "import", str(data), "--study", study, "--create", "--database-url", database_url, "--quiet"]
    )
    export_s, _ = run_measured([*cli, "export", "--study", study, "--database-url", database_url, "-o", os.devnull])
    row: dict[str, str] = {
        "runs": f"{n_runs:,}",
        "import": f"{import_s:.1f} s / {import_mb:.0f} MB",
    }
    with server(database_url, workers) as (url, process), httpx.Client(timeout=3600) as client:
        start = time.perf_counter()
        response = client.get(f"{url}/v1/studies/{study}/recommendation", params=TARGET)
        if response.status_code != 200:
            raise SystemExit(f"first fit: {response.status_code} {response.text[:300]}")
        row["first fit"] = f"{time.perf_counter() - start:.1f} s / {peak_rss_mb(process.pid):.0f} MB"
        start, rows = time.perf_counter(), -1
        with client.stream("GET", f"{url}/v1/studies/{study}/runs.csv") as stream:
            for chunk in stream.iter_bytes():
                rows += chunk.count(b"\n")
        elapsed = time.perf_counter() - start
        row["runs.csv"] = f"{rows / elapsed / 1000:.0f}k rows/s (export {n_runs / export_s / 1000:.0f}k)"
        row["list p99"] = (
            f"{percentiles(timed_gets(client, f'{url}/v1/studies/{study}/runs', {'limit': 100}, 200))[1]:.1f} ms"
        )
        health = percentiles(timed_gets(client, f"{url}/healthz", None, 300))
        idle = percentiles(timed_gets(client, f"{url}/v1/studies/{study}/recommendation", TARGET, 300))
        row["rec idle p50/p99"] = f"{idle[0]:.1f}/{idle[1]:.1f} ms"
        stop = threading.Event()

        def writer(index: int) -> None:
            with httpx.Client(timeout=60) as w:
                batch = 0
                while not stop.is_set():
                    runs = [
                        {
                            "run_key": f"w{index}-{batch}-{k}",
                            "n_params": 1e8,
                            "tokens": 2e9,
                            "learning_rate": 1e-3,
                            "batch_size": 64,
                            "final_loss": 3.0 + 0.001 * k,
                        }
                        for k in range(10)
                    ]
                    w.post(f"{url}/v1/studies/{study}/runs", json={"runs": runs})
                    batch += 1
                    stop.wait(0.2)

        writers = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
        for thread in writers:
            thread.start()
        try:
            busy = percentiles(timed_gets(client, f"{url}/v1/studies/{study}/recommendation", TARGET, 300))
        finally:
            stop.set()
            for thread in writers:
                thread.join(timeout=60)
        row["rec ingest p50/p99"] = f"{busy[0]:.1f}/{busy[1]:.1f} ms"
        row["healthz p50/p99 (baseline)"] = f"{health[0]:.1f}/{health[1]:.1f} ms"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=["sqlite", "postgresql"],
        default=["sqlite", "postgresql"],
        help="databases to measure (postgresql only when HPSCALE_TEST_POSTGRES_URL is set)",
    )
    args = parser.parse_args()
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min)")
    workdir = Path(tempfile.mkdtemp(prefix="hpscale-scale-"))
    backends: list[tuple[str, str | None]] = [("sqlite", None)] if "sqlite" in args.backends else []
    if os.environ.get("HPSCALE_TEST_POSTGRES_URL") and "postgresql" in args.backends:
        backends.append(("postgresql", os.environ["HPSCALE_TEST_POSTGRES_URL"]))
    try:
        for name, base in backends:
            rows = []
            for n_runs in args.sizes:
                if base is None:
                    url = f"sqlite:///{workdir / f'scale-{n_runs}.db'}"
                    rows.append(measure(url, n_runs, workdir, workers=1))
                else:
                    rows.append(measure_postgres(base, n_runs, workdir))
                print_table(name, rows)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def measure_postgres(base: str, n_runs: int, workdir: Path) -> dict[str, str]:
    """The same on a fresh database of the PostgreSQL server, with 2 workers; dropped after."""
    name = f"hpscale_scale_{uuid.uuid4().hex[:8]}"
    url = create_database(base, name)
    try:
        return measure(url, n_runs, workdir, workers=2)
    finally:
        drop_database(base, name)


def print_table(backend: str, rows: list[dict[str, str]]) -> None:
    columns = list(rows[0])
    print(f"\n{backend}")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(row[c] for c in columns) + " |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

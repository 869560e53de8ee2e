"""Scale and availability: studies of 10k / 100k / 1M synthetic runs of several shapes, measured from outside.

For each database (SQLite, plus PostgreSQL when HPSCALE_TEST_POSTGRES_URL is set), size and
data shape (`bench/shapes.py`: a sharp LR bowl, a flat bowl, a sparse sweep with no two runs
alike, a Step Law-like grid) it prints one row of the fit table:

- import: `hpscale import` of the generated CSV (wall time, peak RSS of the CLI process);
- export (baseline): `hpscale export` of the same study to /dev/null, same run (a linear scan);
- first fit over HTTP: the study's first recommendation (it waits for the fit), once the
  server's fitting children (started with it) are up, and the peak RSS of every server
  process by then (workers and their fitting children: the largest);
- the fit's stages as the server timed them (`hpscale_fit_stage_seconds` in /metrics): read
  (the runs' snapshot), fit (the engine), write (the result);
- a refit over HTTP: one new run, then `POST .../fits`; and the peak RSS after both.
  Targets (issue 18): a fit ≤ 5 s at 100k runs, ≤ 10 s at 1M, ≤ 800 MB.

For the Step Law-like shape it also prints the service table: runs.csv rows/s (baseline:
`hpscale export`), list p99 (`GET .../runs?limit=100`), recommendation p50/p99 idle and under
continuous ingest (4 writers posting 10-run batches; 2 workers on PostgreSQL, 1 on SQLite);
baseline `/healthz` p50/p99, same run.

Servers and clients talk over 127.0.0.1 only; every loop is bounded. Run from the repo root:

    python bench/scale.py                     # 10,000 runs, every shape (what CI runs)
    python bench/scale.py --sizes 10000 100000 1000000 --shapes sharp sparse
"""

from __future__ import annotations

import argparse
import os
import re
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

from bench.shapes import SHAPES, write_csv
from store.db import create_database, drop_database

TARGET = {"n_params": 7e9, "tokens": 1.4e12}
FIT_TARGETS = {100_000: 5.0, 1_000_000: 10.0}  # seconds, over HTTP (issue 18)
RSS_TARGET_MB = 800.0


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


def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found += [int(child), *_descendants(int(child))]
    return found


def peak_rss_mb(pid: int) -> float:
    """The largest peak RSS (VmHWM) of a process and all its descendants (uvicorn's workers and
    their fitting children), in MB."""
    peak = 0.0
    for p in [pid, *_descendants(pid)]:
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def wait_for_fitting_children(pid: int, workers: int, timeout: float = 60.0) -> None:
    """Until every worker's fitting child (started with the server) has imported the engine and
    idles: the first fit then measures a fit, not a Python process starting on a loaded machine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = [p for p in _descendants(pid) if b"spawn_main" in _cmdline(p)]
        fitting = [p for p in children if _ppid(p) != pid or workers == 1]
        if len(fitting) >= workers and all(_cpu_seconds(p) > 0.5 and _idle(p) for p in fitting):
            return
        time.sleep(0.5)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _ppid(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return -1
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _idle(pid: int) -> bool:
    before = _cpu_seconds(pid)
    time.sleep(0.3)
    return _cpu_seconds(pid) - before < 0.03


_STAGE = re.compile(r'^hpscale_fit_stage_seconds_sum\{stage="(\w+)"\} ([0-9.eE+-]+)$', re.M)


def fit_stages(client: httpx.Client, url: str) -> dict[str, float]:
    """Seconds spent per fit stage so far, summed over every fit (the server's /metrics)."""
    return {stage: float(value) for stage, value in _STAGE.findall(client.get(f"{url}/metrics").text)}


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
            if process.poll() is not None:
                raise SystemExit(f"server exited with {process.returncode} before answering")
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


def measure(
    database_url: str, n_runs: int, shape: str, workdir: Path, workers: int, service: bool
) -> tuple[dict[str, str], dict[str, str] | None]:
    """One study of `n_runs` runs of `shape`: its fit row, and (with `service`) its service row."""
    study = f"{shape}{n_runs}"
    data = workdir / f"{shape}-{n_runs}.csv"
    if not data.exists():
        write_csv(data, shape, n_runs)
    cli = [sys.executable, "-m", "hpscale.cli"]
    import_s, import_mb = run_measured(
        [*cli, "import", str(data), "--study", study, "--create", "--database-url", database_url, "--quiet"]
    )
    export_s, _ = run_measured([*cli, "export", "--study", study, "--database-url", database_url, "-o", os.devnull])
    fit_row: dict[str, str] = {
        "shape": shape,
        "runs": f"{n_runs:,}",
        "import": f"{import_s:.1f} s / {import_mb:.0f} MB",
        "export (baseline)": f"{export_s:.1f} s",
    }
    service_row: dict[str, str] | None = None
    with server(database_url, workers) as (url, process), httpx.Client(timeout=3600) as client:
        wait_for_fitting_children(process.pid, workers)  # a running server's: started with it
        start = time.perf_counter()
        response = client.get(f"{url}/v1/studies/{study}/recommendation", params=TARGET)
        fit_s = time.perf_counter() - start
        outcome = "200" if response.status_code == 200 else f"{response.status_code} {response.json()['error']['code']}"
        rss = peak_rss_mb(process.pid)
        stages = fit_stages(client, url)
        target = FIT_TARGETS.get(n_runs)
        verdict = "" if target is None else (" ok" if fit_s <= target and rss <= RSS_TARGET_MB else " MISS")
        fit_row["first fit over HTTP"] = f"{fit_s:.1f} s / {rss:.0f} MB ({outcome}){verdict}"
        fit_row["read / fit / write (s)"] = " / ".join(
            f"{stages.get(k, float('nan')):.2f}" for k in ("read", "fit", "write")
        )
        # A refit: one new run, then POST .../fits (the fitting child is warm by now).
        extra = {"run_key": "refit", "n_params": 1e8, "tokens": 2e9, "learning_rate": 1e-3, "batch_size": 64}
        client.post(f"{url}/v1/studies/{study}/runs", json={**extra, "final_loss": 3.5})
        start = time.perf_counter()
        refit = client.post(f"{url}/v1/studies/{study}/fits")
        refit_s = time.perf_counter() - start
        verdict = "" if target is None else (" ok" if refit_s <= target else " MISS")
        fit_row["refit over HTTP"] = f"{refit_s:.1f} s ({refit.status_code}){verdict}"
        fit_row["fit ÷ export"] = f"{fit_s / export_s:.1f}×"
        fit_row["peak RSS"] = f"{peak_rss_mb(process.pid):.0f} MB"
        if service and response.status_code == 200:
            service_row = measure_service(client, url, study, n_runs, export_s)
    return fit_row, service_row


def measure_service(client: httpx.Client, url: str, study: str, n_runs: int, export_s: float) -> dict[str, str]:
    row: dict[str, str] = {"runs": f"{n_runs:,}"}
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
        "--shapes", nargs="+", choices=SHAPES, default=list(SHAPES), help="data shapes (bench/shapes.py)"
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=["sqlite", "postgresql"],
        default=["sqlite", "postgresql"],
        help="databases to measure (postgresql only when HPSCALE_TEST_POSTGRES_URL is set)",
    )
    parser.add_argument("--no-service", action="store_true", help="fits only: skip the service table")
    args = parser.parse_args()
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min)")
    workdir = Path(tempfile.mkdtemp(prefix="hpscale-scale-"))
    backends: list[tuple[str, str | None]] = [("sqlite", None)] if "sqlite" in args.backends else []
    if os.environ.get("HPSCALE_TEST_POSTGRES_URL") and "postgresql" in args.backends:
        backends.append(("postgresql", os.environ["HPSCALE_TEST_POSTGRES_URL"]))
    try:
        for name, base in backends:
            fits, services = [], []
            for n_runs in args.sizes:
                for shape in args.shapes:
                    service = not args.no_service and shape == "steplaw"
                    fit_row, service_row = measure_on(base, n_runs, shape, workdir, service)
                    fits.append(fit_row)
                    print_table(f"{name}: fits", fits)
                    if service_row is not None:
                        services.append(service_row)
                        print_table(f"{name}: service (Step Law-like shape)", services)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def measure_on(
    base: str | None, n_runs: int, shape: str, workdir: Path, service: bool
) -> tuple[dict[str, str], dict[str, str] | None]:
    """`measure` on a fresh database: a SQLite file (1 worker), or a new database of the
    PostgreSQL server (2 workers), dropped after."""
    if base is None:
        url = f"sqlite:///{workdir / f'scale-{shape}-{n_runs}.db'}"
        try:
            return measure(url, n_runs, shape, workdir, workers=1, service=service)
        finally:
            for path in workdir.glob(f"scale-{shape}-{n_runs}.db*"):
                path.unlink()
    name = f"hpscale_scale_{uuid.uuid4().hex[:8]}"
    url = create_database(base, name)
    try:
        return measure(url, n_runs, shape, workdir, workers=2, service=service)
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

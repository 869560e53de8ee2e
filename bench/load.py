"""The fit path under real traffic (issue 18), measured from outside on loopback.

One `hpscale serve --workers 2` on PostgreSQL (HPSCALE_TEST_POSTGRES_URL; a fresh database,
dropped after) or SQLite (`--backend sqlite`, 1 worker), and:

a. continuous ingest: a study of 100k runs with a sharp LR bowl (`bench/shapes.py`), 4 readers
   asking for recommendations and 4 writers posting 10-run batches, none pausing, for 60 s:
   fits completed in the window, how many fits behind each answer was (fits completed before
   it was asked, newer than the one it came from), recommendation p50/p99 and any non-200.
   Baseline, same run: recommendation and /healthz p50/p99 with no writers.
   Targets: ≥ 3 fits, no answer more than one fit behind, p99 ≤ 100 ms, 0 non-200.
b. 30 concurrent `fresh=true` after new runs: each one's status and latency, against the
   duration of one fit of that study (measured by POST .../fits in the same run) + 5 s.
c. `fresh=true` sent as the fitting child is killed with SIGKILL: status and latency, against
   two fit durations.
d. suggestions and compute-optimal while a refit of a 40-scale study runs: latency (< 1 s),
   against the same requests with no refit running.

Run from the repo root: `python bench/load.py [--runs 100000] [--seconds 60] [--backend postgresql]`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scale import _descendants, percentiles, run_measured, server
from bench.shapes import write_csv
from store import queries
from store.db import create_database, drop_database, make_engine

TARGET = {"n_params": 7e9, "tokens": 1.4e12}
BATCH = 10


@dataclass
class Answer:
    started: float  # time.time() when asked
    seconds: float
    status: int
    fit_id: int | None = None
    stale: bool = False


@dataclass
class Log:
    answers: list[Answer] = field(default_factory=list)
    posts: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def ask(client: httpx.Client, url: str, params: dict[str, object]) -> Answer:
    started, t0 = time.time(), time.perf_counter()
    response = client.get(url, params=params)
    seconds = time.perf_counter() - t0
    if response.status_code != 200:
        return Answer(started, seconds, response.status_code)
    body = response.json()
    return Answer(started, seconds, 200, body.get("fit_id"), any("refit is running" in w for w in body["warnings"]))


def new_runs(prefix: str, n: int) -> list[dict[str, object]]:
    """`n` runs at the sharp shape's first scale, near its optimum (they move the data, not the fit)."""
    return [
        {
            "run_key": f"{prefix}-{k}",
            "n_params": 12.0 * 256 * 256 * 4,
            "tokens": 10 * 12.0 * 256 * 256 * 4,
            "width": 256,
            "depth": 4,
            "learning_rate": 1e-2,
            "batch_size": 128,
            "final_loss": 4.0 + 0.001 * (k % 7),
        }
        for k in range(n)
    ]


def fits_done(engine: object) -> list[tuple[int, float]]:
    """(id, finished_at as epoch seconds) of every done fit."""
    with engine.connect() as conn:  # type: ignore[attr-defined]
        rows = queries.fits_with_status(conn, "done")
    return [(i, f.timestamp()) for i, f in rows if f is not None]


def import_csv(data: Path, study: str, database_url: str) -> float:
    cli = [sys.executable, "-m", "hpscale.cli", "import", str(data), "--study", study, "--create", "--quiet"]
    return run_measured([*cli, "--database-url", database_url])[0]


def continuous_ingest(url: str, study: str, engine: object, seconds: float) -> None:
    rec = f"{url}/v1/studies/{study}/recommendation"
    with httpx.Client(timeout=60) as client:
        assert client.get(rec, params=TARGET).status_code == 200
        idle = [ask(client, rec, TARGET).seconds for _ in range(300)]
        health = []
        for _ in range(300):
            t0 = time.perf_counter()
            client.get(f"{url}/healthz")
            health.append(time.perf_counter() - t0)
    before = {i for i, _ in fits_done(engine)}
    log, stop = Log(), threading.Event()

    def reader() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                answer = ask(client, rec, TARGET)
                with log.lock:
                    log.answers.append(answer)

    def writer(index: int) -> None:
        with httpx.Client(timeout=60) as client:
            batch = 0
            while not stop.is_set():
                runs = new_runs(f"w{index}-{batch}", BATCH)
                status = client.post(f"{url}/v1/studies/{study}/runs", json={"runs": runs}).status_code
                with log.lock:
                    log.posts.append(status)
                batch += 1

    seen: dict[int, float] = {}

    def monitor() -> None:  # fits are pruned (newest 20 + pinned): note each as it completes
        while not stop.wait(0.25):
            seen.update(fits_done(engine))

    threads = [threading.Thread(target=reader) for _ in range(4)] + [
        threading.Thread(target=writer, args=(i,)) for i in range(4)
    ]
    threads.append(threading.Thread(target=monitor))
    start = time.time()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    seen.update(fits_done(engine))
    all_done = sorted(seen.items())
    completed = [(i, t) for i, t in all_done if i not in before and t <= start + seconds]
    behind = []
    for answer in log.answers:
        if answer.fit_id is None:
            continue
        newer = [i for i, t in all_done if t < answer.started and i > answer.fit_id]
        behind.append(len(newer))
    lat = [a.seconds for a in log.answers]
    bad = [a.status for a in log.answers if a.status != 200] + [s for s in log.posts if s != 201]
    p50, p99 = percentiles(lat)
    i50, i99 = percentiles(idle)
    h50, h99 = percentiles(health)
    worst = max(behind, default=0)
    print(f"\na. {seconds:.0f} s of 4 readers + 4 unpaced writers ({BATCH}-run batches)")
    print(f"   runs posted: {sum(1 for s in log.posts if s == 201) * BATCH:,} in {len(log.posts)} batches")
    print(f"   fits completed in the window: {len(completed)}  (target ≥ 3)")
    print(
        f"   answers: {len(log.answers):,}; stale (warned): {sum(a.stale for a in log.answers):,}; "
        f"fits behind: max {worst}, {sum(b > 1 for b in behind)} answers > 1  (target: none > 1)"
    )
    print(f"   recommendation p50/p99 under load: {p50:.1f}/{p99:.1f} ms  (target p99 ≤ 100 ms)")
    print(f"   non-200 (answers and posts): {len(bad)} {sorted(set(bad))}  (target 0)")
    print(
        f"   baseline, no writers: recommendation p50/p99 {i50:.1f}/{i99:.1f} ms; /healthz p50/p99 {h50:.1f}/{h99:.1f} ms"
    )


def fit_duration(url: str, study: str) -> float:
    """One fit of the study's current runs (POST .../fits of new data), in seconds."""
    with httpx.Client(timeout=600) as client:
        assert client.post(f"{url}/v1/studies/{study}/runs", json={"runs": new_runs("timed", 1)}).status_code == 201
        t0 = time.perf_counter()
        response = client.post(f"{url}/v1/studies/{study}/fits")
        assert response.status_code == 201, response.text
        return time.perf_counter() - t0


def concurrent_fresh(url: str, study: str, fit_s: float) -> None:
    with httpx.Client(timeout=600) as client:
        assert client.post(f"{url}/v1/studies/{study}/runs", json={"runs": new_runs("fresh", BATCH)}).status_code == 201
    answers: list[Answer] = []
    shared = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=40))

    def one() -> None:
        answers.append(ask(shared, f"{url}/v1/studies/{study}/recommendation", {**TARGET, "fresh": "true"}))

    threads = [threading.Thread(target=one) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    shared.close()
    statuses = sorted({a.status for a in answers})
    worst = max(a.seconds for a in answers)
    verdict = "ok" if statuses == [200] and worst <= fit_s + 5 else "MISS"
    print(f"\nb. 30 concurrent fresh=true after new runs: statuses {statuses}, latency max {worst:.1f} s, ")
    print(f"   median {statistics.median(a.seconds for a in answers):.1f} s; one fit: {fit_s:.1f} s  {verdict}")


def fit_children(pid: int) -> list[int]:
    """The fitting children of a server: spawned processes whose parent is a spawned worker
    (with --workers N), or the server itself (one worker runs in the server's process)."""
    spawned = {}
    for child in _descendants(pid):
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                status = Path(f"/proc/{child}/status").read_text()
                spawned[child] = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
    nested = [child for child, parent in spawned.items() if parent in spawned]
    return nested or [child for child, parent in spawned.items() if parent == pid]


def fresh_at_kill(url: str, study: str, process: object, engine: object, fit_s: float) -> None:
    with httpx.Client(timeout=600) as client:
        assert client.post(f"{url}/v1/studies/{study}/runs", json={"runs": new_runs("kill", BATCH)}).status_code == 201
    result: list[Answer] = []
    asker = threading.Thread(
        target=lambda: result.append(
            ask(httpx.Client(timeout=600), f"{url}/v1/studies/{study}/recommendation", {**TARGET, "fresh": "true"})
        )
    )
    asker.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the fit of the new runs is claimed
        with engine.connect() as conn:  # type: ignore[attr-defined]
            if queries.fits_with_status(conn, "running"):
                break
        time.sleep(0.02)
    killed = fit_children(process.pid)  # type: ignore[attr-defined]
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    asker.join()
    answer = result[0]
    verdict = "ok" if answer.status == 200 and answer.seconds <= 2 * fit_s else "MISS"
    print(f"\nc. fresh=true at a SIGKILL of the fitting child ({len(killed)} killed): {answer.status} after ")
    print(f"   {answer.seconds:.1f} s; two fits: {2 * fit_s:.1f} s  {verdict}")


def answers_during_refit(url: str, database_url: str, workdir: Path) -> None:
    study = "scales40"
    data = workdir / "scales40.csv"
    write_csv(data, "scales40", 48_000)
    import_csv(data, study, database_url)
    engine = make_engine(database_url)
    paths = {
        "suggestions": (f"{url}/v1/studies/{study}/suggestions", {**TARGET, "count": 5}),
        "compute-optimal": (f"{url}/v1/studies/{study}/compute-optimal", {"compute": 1e23}),
    }
    with httpx.Client(timeout=600) as client:
        assert client.get(f"{url}/v1/studies/{study}/recommendation", params=TARGET).status_code == 200
        idle = {name: [ask(client, u, p) for _ in range(5)] for name, (u, p) in paths.items()}
        busy: dict[str, list[Answer]] = {name: [] for name in paths}
        for round_ in range(5):
            assert (
                client.post(f"{url}/v1/studies/{study}/runs", json={"runs": new_runs(f"r{round_}", 1)}).status_code
                == 201
            )
            client.get(f"{url}/v1/studies/{study}/recommendation", params=TARGET)  # starts the refit
            running = False
            for _ in range(200):
                with engine.connect() as conn:
                    running = bool(queries.fits_with_status(conn, "running"))
                if running:
                    break
                time.sleep(0.01)
            for name, (u, p) in paths.items():
                answer = ask(
                    client,
                    u,
                    {**p, "count": p.get("count", 5) + round_}
                    if name == "suggestions"
                    else {**p, "compute": p["compute"] * (round_ + 2)},
                )
                if running:
                    busy[name].append(answer)
            while True:
                with engine.connect() as conn:
                    if not queries.fits_with_status(conn, "running"):
                        break
                time.sleep(0.05)
    engine.dispose()
    print("\nd. while a refit of a 40-scale study (48k runs) runs:")
    for name in paths:
        during = [a.seconds for a in busy[name]]
        base = [a.seconds for a in idle[name]]
        statuses = sorted({a.status for a in busy[name]})
        print(
            f"   {name}: max {max(during, default=float('nan')):.2f} s over {len(during)} requests during refits "
            f"(statuses {statuses}); baseline idle max {max(base):.2f} s  (target < 1 s)"
        )


@contextmanager
def database(backend: str, workdir: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'load.db'}"
        return
    base = os.environ.get("HPSCALE_TEST_POSTGRES_URL")
    if not base:
        raise SystemExit("set HPSCALE_TEST_POSTGRES_URL (or --backend sqlite)")
    name = f"hpscale_load_{uuid.uuid4().hex[:8]}"
    url = create_database(base, name)
    try:
        yield url
    finally:
        drop_database(base, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    args = parser.parse_args()
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min)")
    workers = 2 if args.backend == "postgresql" else 1
    with tempfile.TemporaryDirectory(prefix="hpscale-load-") as tmp, database(args.backend, Path(tmp)) as url:
        workdir = Path(tmp)
        data = workdir / "sharp.csv"
        write_csv(data, "sharp", args.runs)
        import_s = import_csv(data, "sharp", url)
        print(f"{args.backend}, {workers} worker(s); study 'sharp': {args.runs:,} runs imported in {import_s:.0f} s")
        engine = make_engine(url)
        with server(url, workers) as (server_url, process):
            continuous_ingest(server_url, "sharp", engine, args.seconds)
            fit_s = fit_duration(server_url, "sharp")
            print(f"\none fit of the study (POST .../fits of new runs): {fit_s:.1f} s")
            concurrent_fresh(server_url, "sharp", fit_s)
            fresh_at_kill(server_url, "sharp", process, engine, fit_s)
            answers_during_refit(server_url, url, workdir)
        engine.dispose()


if __name__ == "__main__":
    main()

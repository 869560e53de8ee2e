"""Throughput and latency of a cached recommendation against the same server's /healthz.

Issue 4: a training launcher asks for its hyperparameters right before a job starts, so
once the study's fit exists, answering `GET /v1/studies/steplaw/recommendation?...` should
cost about as much as the server's cheapest endpoint. This benchmark:

1. imports the Step Law sweep (`steplaw_dense_proxy.csv`, 1,746 runs) into a fresh
   temporary SQLite database with `hpscale import`, and creates a read token with
   `hpscale tokens create --scope read`;
2. starts a real `hpscale serve` subprocess (`--workers N`, default 1);
3. warms up: one recommendation (this computes and stores the fit, ~10 s), then a few
   hundred requests of each endpoint;
4. runs a closed-loop load generator -- C concurrent HTTP/1.1 keep-alive connections
   (default 16), spread over P client processes (default 2) of threads on raw sockets,
   each request's latency timed with `time.perf_counter` -- for a fixed duration per
   endpoint, alternating which endpoint goes first over several rounds to be fair
   against noise. Both endpoints get the same bearer token, the same client, the same run.

Every response must be 200 and, for the recommendation, exactly as long as the warm-up's
body (same fit, same answer); otherwise the benchmark aborts. It prints requests/s,
p50/p99/mean latency, the server's and the client's CPU time per request, the ratio of recommendation
throughput to /healthz throughput, and PASS/MISS beside the targets (ratio >= 0.8,
recommendation p99 <= 20 ms); a MISS does not change the exit status.

The client shares the machine with the server: on a small machine (2 cores here) the
load generator's own CPU is part of what is measured, identically for both endpoints (its
CPU per request is printed: ~0.1-0.2 ms, so it does not hide the server). Note: with
`--workers` > 1 every keep-alive response currently waits ~40 ms (one idle connection's
/healthz: 0.9 ms with 1 worker, 44 ms with 2 -- Nagle + delayed ACK, the accepted sockets
lack TCP_NODELAY), so 1 worker is the faster setting until that is fixed.

Run from the repository root:

    python bench/recommend.py                          # 2 rounds x 10 s per endpoint
    python bench/recommend.py --duration 5 --rounds 3 --workers 2
    python bench/recommend.py --no-auth                # also the --no-auth server variant
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Allow `python bench/recommend.py` from a checkout without relying on the current directory.
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx

STUDY = "steplaw"
STEPLAW_RUNS = 1_746
RECOMMENDATION = f"/v1/studies/{STUDY}/recommendation?n_params=7e9&tokens=1.4e12&width=4096&depth=32"
HEALTHZ = "/healthz"
RATIO_TARGET = 0.8
P99_TARGET_MS = 20.0
# Issue 20: every answer now carries the expected loss penalty (and larger baselines); a cached one must
# stay within this factor of the same question's latency on the revision before (--baseline-rev).
BASELINE_RATIO_TARGET = 1.2
IMPORT_MAPS = (
    "h=width", "numl=depth", "N=n_params", "D=tokens", "lr=learning_rate", "bs=batch_size",
    "smooth loss=final_loss", "exp_name=run_key",
)  # fmt: skip


# --- setup: database, token, server ----------------------------------------------------


def _hpscale_command() -> list[str]:
    script = shutil.which("hpscale")
    return [script] if script else [sys.executable, "-m", "hpscale.cli"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("HPSCALE_BOOTSTRAP_ADMIN_TOKEN", "HPSCALE_NO_AUTH")}


def _run_cli(args: list[str]) -> str:
    done = subprocess.run([*_hpscale_command(), *args], capture_output=True, text=True, env=_env())
    if done.returncode != 0:
        raise SystemExit(f"hpscale {args[0]} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


def prepare_database(database_url: str, data: Path) -> str:
    """Import the Step Law sweep into a new study; return a new read token."""
    maps = [arg for m in IMPORT_MAPS for arg in ("--map", m)]
    _run_cli([
        "import", str(data), "--study", STUDY, "--create", "--seq-len", "2048", *maps,
        "--database-url", database_url, "--quiet",
    ])  # fmt: skip
    output = _run_cli(
        ["tokens", "create", "--scope", "read", "--name", "bench-recommend", "--database-url", database_url]
    )
    return output.strip().splitlines()[-1].strip()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def start_server(database_url: str, workers: int, no_auth: bool, directory: Path, code: Path | None = None) -> Server:
    """`hpscale serve` of this checkout, or (`code`) of another tree put first on PYTHONPATH."""
    port = _free_port()
    log_path = directory / f"server-{port}.log"
    command = [
        *_hpscale_command(), "serve", "--database-url", database_url, "--host", "127.0.0.1",
        "--port", str(port), "--workers", str(workers), "--log-level", "warning",
        *(["--no-auth"] if no_auth else []),
    ]  # fmt: skip
    env = _env() if code is None else {**_env(), "PYTHONPATH": str(code)}
    if code is not None:
        command = [sys.executable, "-m", "hpscale.cli", *command[command.index("serve") :]]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=directory)
    server = Server(process, port, log_path)
    deadline = time.monotonic() + 60.0
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"server exited with {process.returncode}:\n{server.log_tail()}")
            try:
                if client.get(HEALTHZ, timeout=1.0).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    stop_server(server)
    raise SystemExit(f"server not healthy after 60 s:\n{server.log_tail()}")


def stop_server(server: Server) -> None:
    if server.process.poll() is not None:
        return
    server.process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU of the server process and its descendants (uvicorn workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                stack.extend(int(c) for c in children)
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return total


# --- load generator: raw HTTP/1.1 keep-alive sockets -------------------------------------


def _request_bytes(path: str, port: int, token: str | None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Accept: application/json", "User-Agent: hpscale-bench"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class _Connection:
    """One keep-alive connection; `get()` sends the canned request and reads one response."""

    def __init__(self, port: int, request: bytes) -> None:
        self.port = port
        self.request = request
        self.sock: socket.socket | None = None
        self.buffer = b""

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30.0)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        return sock

    def get(self) -> tuple[int, int]:
        """(status, body length); reconnects if the server closed the connection."""
        if self.sock is None:
            self.sock = self._connect()
        sock = self.sock
        sock.sendall(self.request)
        buffer = self.buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection mid-response")
            buffer += chunk
        head = buffer[:end].decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        length = None
        close = False
        for line in head[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        if length is None:
            raise ConnectionError("response without content-length (chunked responses are not expected here)")
        body_end = end + 4 + length
        while len(buffer) < body_end:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection mid-body")
            buffer += chunk
        self.buffer = buffer[body_end:]
        if close:
            self.close()
        return status, length

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


@dataclass
class Load:
    """What one phase measured: latencies of successful requests, and everything that was not."""

    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0

    def merge(self, other: Load) -> None:
        self.latencies.extend(other.latencies)
        for key, count in other.errors.items():
            self.errors[key] = self.errors.get(key, 0) + count
        self.elapsed += other.elapsed
        self.server_cpu += other.server_cpu
        self.client_cpu += other.client_cpu

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


def _client_process(
    port: int,
    request: bytes,
    threads: int,
    start_at: float,
    duration: float,
    max_requests: int | None,
    expect_length: int | None,
    queue: multiprocessing.Queue,  # type: ignore[type-arg]
) -> None:
    """`threads` connections in one process, closed loop from `start_at` (wall clock) for `duration`."""
    results: list[tuple[list[float], dict[str, int]]] = []
    lock = threading.Lock()
    cpu_started = time.process_time()

    def worker() -> None:
        latencies: list[float] = []
        errors: dict[str, int] = {}
        connection = _Connection(port, request)
        try:
            connection.sock = connection._connect()
        except OSError as error:
            errors[f"connect: {type(error).__name__}"] = 1
        delay = start_at - time.time()
        if delay > 0:
            time.sleep(delay)
        deadline = time.perf_counter() + duration
        clock = time.perf_counter
        done = 0
        while (now := clock()) < deadline and (max_requests is None or done < max_requests):
            try:
                status, length = connection.get()
            except (OSError, ValueError) as error:
                connection.close()
                key = f"{type(error).__name__}"
                errors[key] = errors.get(key, 0) + 1
                continue
            latency = clock() - now
            done += 1
            if status != 200:
                errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
            elif expect_length is not None and length != expect_length:
                key = f"body length {length} != {expect_length}"
                errors[key] = errors.get(key, 0) + 1
            else:
                latencies.append(latency)
        connection.close()
        with lock:
            results.append((latencies, errors))

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    latencies = [x for lat, _ in results for x in lat]
    errors: dict[str, int] = {}
    for _, errs in results:
        for key, count in errs.items():
            errors[key] = errors.get(key, 0) + count
    queue.put((latencies, errors, time.time(), time.process_time() - cpu_started))


def run_load(
    port: int,
    path: str,
    token: str | None,
    *,
    connections: int,
    processes: int,
    duration: float,
    server_pid: int,
    max_requests: int | None = None,
    expect_length: int | None = None,
) -> Load:
    """Closed-loop load: `connections` keep-alive connections over `processes` client processes."""
    request = _request_bytes(path, port, token)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    shares = [connections // processes + (1 if i < connections % processes else 0) for i in range(processes)]
    start_at = time.time() + 0.5  # every process connected and waiting before the clock starts
    workers = [
        context.Process(
            target=_client_process,
            args=(port, request, share, start_at, duration, max_requests, expect_length, queue),
        )
        for share in shares
        if share
    ]
    for worker in workers:
        worker.start()
    time.sleep(max(0.0, start_at - time.time()))
    cpu_before = server_cpu_seconds(server_pid)
    load = Load()
    finished = start_at
    for _ in workers:
        latencies, errors, ended, client_cpu = queue.get()
        load.merge(Load(latencies, errors, client_cpu=client_cpu))
        finished = max(finished, ended)
    load.elapsed = finished - start_at
    load.server_cpu = server_cpu_seconds(server_pid) - cpu_before
    for worker in workers:
        worker.join()
    return load


# --- one server variant --------------------------------------------------------------------


def warm_up(server: Server, token: str | None, args: argparse.Namespace) -> int:
    """Compute the fit with one recommendation; return its body length; then a few hundred of each."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", headers=headers, timeout=600.0) as client:
        started = time.perf_counter()
        response = client.get(RECOMMENDATION)
        seconds = time.perf_counter() - started
        if response.status_code != 200:
            raise SystemExit(
                f"first recommendation -> {response.status_code}: {response.text[:500]}\n{server.log_tail()}"
            )
        study = client.get(f"/v1/studies/{STUDY}")
        runs = study.json().get("run_count") if study.status_code == 200 else None
        if runs is not None and runs != STEPLAW_RUNS:
            raise SystemExit(f"the study holds {runs} runs, expected {STEPLAW_RUNS}")
        again = client.get(RECOMMENDATION)
        if again.status_code != 200 or again.content != response.content:
            raise SystemExit("a second recommendation differs from the first (the fit should be cached)")
    body = response.json()
    print(
        f"  first recommendation (computes fit {body['fit_id']}): {seconds:.1f} s; "
        f"response {len(response.content):,} bytes; learning_rate {body['learning_rate']['value']:.3g}"
    )
    for path, length in ((RECOMMENDATION, len(response.content)), (HEALTHZ, None)):
        load = run_load(
            server.port, path, token, connections=args.connections, processes=args.processes,
            duration=30.0, server_pid=server.process.pid, max_requests=max(1, args.warmup // args.connections),
            expect_length=length,
        )  # fmt: skip
        _check(load, path, server)
    return len(response.content)


def _check(load: Load, path: str, server: Server) -> None:
    if load.error_count:
        raise SystemExit(f"{path}: {load.error_count} failed requests {load.errors}\n{server.log_tail()}")
    if load.ok == 0:
        raise SystemExit(f"{path}: no request completed")


def bench_variant(database_url: str, token: str | None, args: argparse.Namespace, directory: Path) -> dict[str, Load]:
    server = start_server(database_url, args.workers, token is None, directory)
    try:
        length = warm_up(server, token, args)
        totals = {HEALTHZ: Load(), RECOMMENDATION: Load()}
        for round_ in range(args.rounds):
            order = [RECOMMENDATION, HEALTHZ] if round_ % 2 == 0 else [HEALTHZ, RECOMMENDATION]
            for path in order:
                load = run_load(
                    server.port, path, token, connections=args.connections, processes=args.processes,
                    duration=args.duration, server_pid=server.process.pid,
                    expect_length=length if path == RECOMMENDATION else None,
                )  # fmt: skip
                _check(load, path, server)
                label = "recommendation" if path == RECOMMENDATION else "healthz"
                print(
                    f"  round {round_ + 1} {label:<15} {load.ok:>8,} req {load.rate:>9,.0f} req/s "
                    f"p50 {load.percentile_ms(0.5):6.2f} ms  p99 {load.percentile_ms(0.99):6.2f} ms"
                )
                totals[path].merge(load)
        if server.process.poll() is not None:
            raise SystemExit(f"server died during the run:\n{server.log_tail()}")
    finally:
        stop_server(server)
    return totals


def extract_revision(rev: str, directory: Path) -> Path:
    """The tree of git revision `rev` (e.g. main before issue 20) in `directory`/rev, for a baseline server."""
    import tarfile
    from io import BytesIO

    data = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True).stdout
    target = directory / f"rev-{rev}"
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(target, filter="data")
    return target


def bench_against_baseline(
    database_url: str, baseline_url: str, token: str, code: Path, args: argparse.Namespace, directory: Path
) -> dict[str, Load]:
    """This checkout's server and a baseline revision's, each on its own copy of the database, measured in
    alternating rounds of the same load (which goes first alternates): the cached recommendation of each."""
    servers = {
        "this checkout": start_server(database_url, args.workers, False, directory),
        f"baseline {args.baseline_rev}": start_server(baseline_url, args.workers, False, directory, code),
    }
    try:
        lengths = {}
        for name, server in servers.items():
            print(f"  {name}:")
            lengths[name] = warm_up(server, token, args)
        totals = {name: Load() for name in servers}
        names = list(servers)
        for round_ in range(args.rounds):
            for name in names if round_ % 2 == 0 else names[::-1]:
                server = servers[name]
                load = run_load(
                    server.port, RECOMMENDATION, token, connections=args.connections, processes=args.processes,
                    duration=args.duration, server_pid=server.process.pid, expect_length=lengths[name],
                )  # fmt: skip
                _check(load, RECOMMENDATION, server)
                print(
                    f"  round {round_ + 1} {name:<24} {load.ok:>8,} req {load.rate:>9,.0f} req/s "
                    f"p50 {load.percentile_ms(0.5):6.2f} ms  p99 {load.percentile_ms(0.99):6.2f} ms"
                )
                totals[name].merge(load)
    finally:
        for server in servers.values():
            stop_server(server)
    return totals


def report_baseline(totals: dict[str, Load]) -> None:
    (mine, ours), (base_name, base) = totals.items()
    print(f"\ncached recommendation, {mine} against {base_name} (same run, same load):")
    print(f"{'server':<26} {'requests':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for name, load in totals.items():
        print(
            f"{name:<26} {load.ok:>9,} {load.rate:>9,.0f} {load.percentile_ms(0.5):>8.2f} "
            f"{load.percentile_ms(0.99):>8.2f} {statistics.fmean(load.latencies) * 1e3:>8.2f}"
        )
    mean_ratio = statistics.fmean(ours.latencies) / statistics.fmean(base.latencies)
    p50_ratio = ours.percentile_ms(0.5) / base.percentile_ms(0.5)
    print(
        f"latency ratio {mine} / {base_name}: mean {mean_ratio:.3f}, p50 {p50_ratio:.3f}, "
        f"p99 {ours.percentile_ms(0.99) / base.percentile_ms(0.99):.3f} (target mean <= {BASELINE_RATIO_TARGET}) "
        f"{'PASS' if mean_ratio <= BASELINE_RATIO_TARGET else 'MISS'}"
    )


def report(name: str, totals: dict[str, Load], args: argparse.Namespace) -> None:
    print(
        f"\n{name}: {args.connections} connections, {args.workers} worker(s), {args.rounds} x {args.duration:g} s per endpoint"
    )
    print(
        f"{'endpoint':<16} {'requests':>9} {'errors':>6} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} "
        f"{'server CPU ms/req':>18} {'client CPU ms/req':>18}"
    )
    for path, label in ((RECOMMENDATION, "recommendation"), (HEALTHZ, "healthz")):
        load = totals[path]
        print(
            f"{label:<16} {load.ok:>9,} {load.error_count:>6} {load.rate:>9,.0f} {load.percentile_ms(0.5):>8.2f} "
            f"{load.percentile_ms(0.99):>8.2f} {statistics.fmean(load.latencies) * 1e3:>8.2f} "
            f"{load.server_cpu / max(1, load.ok) * 1e3:>18.3f} {load.client_cpu / max(1, load.ok) * 1e3:>18.3f}"
        )
    ratio = totals[RECOMMENDATION].rate / totals[HEALTHZ].rate
    p99 = totals[RECOMMENDATION].percentile_ms(0.99)
    print(
        f"throughput ratio recommendation/healthz: {ratio:.3f} (target >= {RATIO_TARGET}) "
        f"{'PASS' if ratio >= RATIO_TARGET else 'MISS'}"
    )
    print(
        f"recommendation p99: {p99:.2f} ms (target <= {P99_TARGET_MS:g} ms) {'PASS' if p99 <= P99_TARGET_MS else 'MISS'}"
    )


# --- main ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data",
        type=Path,
        default=REPO.parent / "shared" / "data" / "steplaw_dense_proxy.csv",
        help="the Step Law CSV (default: ../shared/data/steplaw_dense_proxy.csv from the repo root)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per endpoint per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; the endpoint that goes first alternates")
    parser.add_argument("--connections", type=int, default=16, help="concurrent keep-alive connections")
    parser.add_argument(
        "--processes", type=int, default=2, help="load-generator processes (threads share the connections)"
    )
    parser.add_argument("--workers", type=int, default=1, help="hpscale serve --workers")
    parser.add_argument("--warmup", type=int, default=400, help="warm-up requests per endpoint after the first")
    parser.add_argument("--no-auth", action="store_true", help="also measure a `serve --no-auth` server (no token)")
    parser.add_argument(
        "--baseline-rev",
        help="also compare the cached recommendation with this git revision's server (e.g. dfdd94b), same run",
    )
    args = parser.parse_args(argv)
    if not args.data.is_file():
        parser.error(f"no data file at {args.data}; pass --data")
    if args.duration <= 0 or args.rounds < 1 or args.connections < 1 or args.workers < 1:
        parser.error("--duration, --rounds, --connections and --workers must be positive")
    args.processes = max(1, min(args.processes, args.connections))

    print(
        f"machine: {os.cpu_count()} CPUs; Python {sys.version.split()[0]}; "
        f"client: {args.processes} processes, raw HTTP/1.1 sockets"
    )
    print(f"target: GET {RECOMMENDATION}")
    results: list[tuple[str, dict[str, Load]]] = []
    with tempfile.TemporaryDirectory(prefix="hpscale-bench-") as tmp:
        directory = Path(tmp)
        database_url = f"sqlite:///{directory / 'bench.db'}"
        started = time.perf_counter()
        token = prepare_database(database_url, args.data)
        print(f"imported {args.data.name} and created a read token in {time.perf_counter() - started:.1f} s")
        shutil.copyfile(directory / "bench.db", directory / "pristine.db")  # no fit yet: for the baseline pair
        print("\nwith a bearer token (read scope):")
        results.append(("bearer token", bench_variant(database_url, token, args, directory)))
        if args.no_auth:
            print("\n--no-auth:")
            results.append(("--no-auth", bench_variant(database_url, None, args, directory)))
        compared = None
        if args.baseline_rev:
            print(f"\nthis checkout against {args.baseline_rev}, alternating rounds:")
            code = extract_revision(args.baseline_rev, directory)
            baseline_db = directory / "baseline.db"
            shutil.copyfile(directory / "pristine.db", baseline_db)  # each server fits its own copy
            fresh_db = directory / "mine.db"
            shutil.copyfile(directory / "pristine.db", fresh_db)
            compared = bench_against_baseline(
                f"sqlite:///{fresh_db}", f"sqlite:///{baseline_db}", token, code, args, directory
            )
    for name, totals in results:
        report(name, totals, args)
    if compared is not None:
        report_baseline(compared)
    return 0


if __name__ == "__main__":
    sys.exit(main())

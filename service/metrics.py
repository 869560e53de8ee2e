"""Prometheus metrics (the official `prometheus-client`), correct across `--workers`.

`hpscale serve` points PROMETHEUS_MULTIPROC_DIR at a fresh directory before the workers
start, so every worker writes its counters to memory-mapped files there and `/metrics`
(any worker) sums them all (`prometheus_client.multiprocess`). Without it (tests, one
process embedding the app) the process's own registry is exported.

What is counted, and where:
- requests and their latency per method, route template (`/v1/studies/{name}/runs`, never
  the concrete path, so labels stay few) and status: `app.metrics.MetricsMiddleware`;
- fits computed, by outcome, their duration and each stage's (read, fit, write): `service.fits.compute`;
- runs stored (not duplicates): `service.runs` (HTTP submissions and imports);
- database errors (exceptions of the database driver reaching a request): the middleware.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter(
    "hpscale_http_requests_total",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"],
)
REQUEST_SECONDS = Histogram(
    "hpscale_http_request_duration_seconds",
    "HTTP request latency in seconds, by method, route template and status",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
FITS = Counter("hpscale_fits_total", "Fits computed, by outcome (done, insufficient_data, error)", ["outcome"])
FIT_SECONDS = Histogram(
    "hpscale_fit_duration_seconds",
    "Time to compute one fit, in seconds",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
FIT_STAGE_SECONDS = Histogram(
    "hpscale_fit_stage_seconds",
    "Time of each stage of a fit, in seconds: read (the runs' snapshot), fit (the engine), write (the result)",
    ["stage"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
RUNS_INGESTED = Counter("hpscale_runs_ingested_total", "Runs stored (duplicates not counted), by source", ["source"])
DATABASE_ERRORS = Counter("hpscale_database_errors_total", "Database errors that reached a request, by type", ["type"])

_DATABASE_MODULES = frozenset({"sqlalchemy", "psycopg", "psycopg2", "sqlite3"})


def record_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered request and its latency (what the HTTP middleware does per request)."""
    labels = (method, route, str(status))
    REQUESTS.labels(*labels).inc()
    REQUEST_SECONDS.labels(*labels).observe(seconds)


def is_database_error(error: BaseException) -> bool:
    """An exception of the database layer (driver or SQLAlchemy), by where its class lives."""
    return any(cls.__module__.split(".")[0] in _DATABASE_MODULES for cls in type(error).__mro__)


def record_fit(outcome: str | None, seconds: Mapping[str, float]) -> None:
    """Count one fit attempt: the engine's outcome ("done", "insufficient_data", "error"; None
    when the engine did not run) and each stage's time (read, fit, write). Called in the
    server process with what its fitting child reported, so /metrics sees every fit."""
    if outcome is not None:
        FITS.labels(outcome).inc()
        if "fit" in seconds:
            FIT_SECONDS.observe(seconds["fit"])
    for stage, value in seconds.items():
        FIT_STAGE_SECONDS.labels(stage).observe(value)


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format and its content type (all workers' sums)."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # unannotated upstream
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST

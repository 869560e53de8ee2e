"""Prometheus metrics (the official `prometheus-client`), correct across `--workers`.

`hpscale serve` points PROMETHEUS_MULTIPROC_DIR at a fresh directory before the workers
start, so every worker writes its counters to memory-mapped files there and `/metrics`
(any worker) sums them all (`prometheus_client.multiprocess`). Without it (tests, one
process embedding the app) the process's own registry is exported.

What is counted, and where:
- requests and their latency per method, route template (`/v1/studies/{name}/runs`, never
  the concrete path, so labels stay few) and status: `app.metrics.MetricsMiddleware`;
- fits computed, by outcome, their duration and each stage's (read, fit, write): `service.fits.compute`;
- runs stored (not duplicates), by source: read from the audit log (`IngestedRuns`), where every
  HTTP submission and every import records its count, so runs an `hpscale import` process
  stored are counted too (an in-process counter saw only the server's own submissions);
- database errors (exceptions of the database driver reaching a request): the middleware.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from store import audit
from store.db import Engine, read_connection

log = logging.getLogger("hpscale")

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


class IngestedRuns(Collector):
    """`hpscale_runs_ingested_total{source}`: runs stored per source (http, csv, optuna, mlflow,
    wandb), summed over the audit log. The database is the one truth every process shares, so
    the total is the same from any worker and includes `hpscale import` runs; a sum over an
    append-only log never decreases (deleting runs does not uncount them). Read at most once
    per `ttl` seconds per process; a database that cannot answer leaves the series out."""

    def __init__(self, engine: Engine, ttl: float = 0.0) -> None:
        self.engine = engine
        self.ttl = ttl
        self._lock = threading.Lock()
        self._read_at = -float("inf")
        self._totals: dict[str, int] | None = None

    def totals(self) -> dict[str, int] | None:
        with self._lock:
            if time.monotonic() - self._read_at >= self.ttl:
                try:
                    with read_connection(self.engine) as conn:
                        self._totals = audit.ingested_totals(conn)
                    self._read_at = time.monotonic()
                except Exception as error:  # noqa: BLE001 - /metrics must answer while the database does not
                    log.warning("runs ingested: the audit log could not be read (%s)", type(error).__name__)
                    return None
            return self._totals

    def collect(self) -> Iterator[CounterMetricFamily]:
        totals = self.totals()
        if totals is None:
            return
        family = CounterMetricFamily(
            "hpscale_runs_ingested", "Runs stored (duplicates not counted), by source", labels=["source"]
        )
        for source, count in sorted(totals.items()):
            family.add_metric([source], count)
        yield family


_ingested: dict[int, IngestedRuns] = {}


def exposition(engine: Engine | None = None) -> tuple[bytes, str]:
    """The metrics in Prometheus' text format and its content type (all workers' sums), with the
    runs ingested read from `engine`'s audit log."""
    extra = CollectorRegistry()
    if engine is not None:
        extra.register(_ingested.setdefault(id(engine), IngestedRuns(engine)))
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # unannotated upstream
        return generate_latest(registry) + generate_latest(extra), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY) + generate_latest(extra), CONTENT_TYPE_LATEST

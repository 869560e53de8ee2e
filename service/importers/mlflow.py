"""MLflow: the runs of an experiment on a tracking server (`mlflow` library:
`pip install 'hpscale[mlflow]'`).

    hpscale import --from mlflow --tracking-uri http://mlflow:5000 --experiment proxies --study S

A run's params (strings, read as numbers where they are) and metrics (their latest values)
are its names; the common aliases map them to run fields (`lr`, `batch_size`, `n_params`,
…, and `val_loss`/`eval_loss`/`loss` for the final loss; see
`service.importers.common.ALIASES`), `--map` overrides. A FINISHED run is `completed`
(`diverged` if its loss is NaN/inf), FAILED and KILLED runs are `failed`, runs still
RUNNING or SCHEDULED are left for a later import. Each metric's history (by step) becomes a
curve: the final loss's metric is the run's loss curve, the others its `curves` (one request
per run and metric; `curves=False` skips them). The run's name is kept in `extra.run_name`; a
run without a weight decay has an unknown one (null). Run key: `mlflow:<run id>`.

An HTTP tracking server that does not answer within `timeout` seconds is reported in one
line (MLflow's own client would retry for minutes): the server is asked once before anything
else, and MLflow's requests get that timeout and one retry unless MLFLOW_HTTP_REQUEST_TIMEOUT
and MLFLOW_HTTP_REQUEST_MAX_RETRIES say otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import httpx

from service.errors import InvalidArgument
from service.importers.common import (
    DEFAULT_TIMEOUT,
    RUN_NAME,
    check_mapping,
    field_sources,
    finite_points,
    map_runs,
    redact_credentials,
    source_errors,
)
from service.limits import MAX_LOSS_CURVE_POINTS

_STATUS = {"FINISHED": "completed", "FAILED": "failed", "KILLED": "failed"}
_PAGE = 1000


def _probe(tracking_uri: str, timeout: float) -> None:
    """One request to an HTTP tracking server, bounded by `timeout`: a server that is not there
    is one line now, not minutes of MLflow's retries and a traceback."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        httpx.get(tracking_uri.rstrip("/") + "/health", timeout=timeout)
    except httpx.TimeoutException:
        raise InvalidArgument(
            f"cannot read the MLflow tracking server at {redact_credentials(tracking_uri)}: "
            f"no answer within {timeout:g} s (--timeout)"
        ) from None
    except httpx.HTTPError as error:
        reason = str(error).strip() or type(error).__name__
        raise InvalidArgument(
            f"cannot read the MLflow tracking server at {redact_credentials(tracking_uri)}: "
            f"{redact_credentials(reason)[:300]}"
        ) from None


def _runs(tracking_uri: str, experiment: str, timeout: float) -> tuple[Any, list[Any]]:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise InvalidArgument("importing from MLflow needs the mlflow package: pip install 'hpscale[mlflow]'") from None
    _probe(tracking_uri, timeout)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(timeout))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    with source_errors("the MLflow tracking server", tracking_uri):
        client = MlflowClient(tracking_uri=tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            names = ", ".join(e.name for e in client.search_experiments()) or "(none)"
            raise InvalidArgument(
                f"no MLflow experiment {experiment!r} at {redact_credentials(tracking_uri)}; "
                f"its experiments are: {names}"
            )
        runs: list[Any] = []
        token = None
        while True:
            page = client.search_runs([found.experiment_id], max_results=_PAGE, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return client, runs


def _histories(client: Any, runs: list[Any], loss_metric: str | None, tracking_uri: str) -> dict[str, Any]:
    """Per source id: the loss metric's history as the loss curve, every other metric's as a
    named curve (by step); single values are not curves."""
    out: dict[str, Any] = {}
    with source_errors("the MLflow tracking server", tracking_uri):
        for r in runs:
            loss_curve: list[list[float]] = []
            curves: dict[str, list[list[float]]] = {}
            for key in sorted(r.data.metrics):
                history = client.get_metric_history(r.info.run_id, key)
                points = finite_points(sorted((m.step, m.value) for m in history), MAX_LOSS_CURVE_POINTS)
                if len(points) < 2:
                    continue
                if key == loss_metric:
                    loss_curve = points
                elif len(curves) < 16:
                    curves[key] = points
            if loss_curve or curves:
                out[f"mlflow:{r.info.run_id}"] = {
                    "loss_curve": loss_curve or None,
                    "curves": curves,
                    "curve_x": "steps",
                }
    return out


def read_runs(
    tracking_uri: str,
    experiment: str,
    mapping: Mapping[str, str] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    curves: bool = True,
) -> list[tuple[str, dict[str, Any]]]:
    """(source id, run) for every finished run of the MLflow experiment, mapped to hpscale runs."""
    mapping = dict(mapping or {})
    check_mapping(mapping)
    client, found = _runs(tracking_uri, experiment, timeout)
    runs = [r for r in found if r.info.status in _STATUS]
    named = [(f"mlflow:{r.info.run_id}", _STATUS[r.info.status], {**r.data.metrics, **r.data.params}) for r in runs]
    names = {name for _, _, values in named for name in values}
    loss_metric = field_sources(names, mapping).get("final_loss")
    return map_runs(
        named,
        mapping,
        "MLflow param or metric",
        extras={f"mlflow:{r.info.run_id}": {RUN_NAME: r.info.run_name} for r in runs if r.info.run_name},
        histories=_histories(client, runs, loss_metric, tracking_uri) if curves else None,
    )

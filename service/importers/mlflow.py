"""MLflow: the runs of an experiment on a tracking server (`mlflow` library:
`pip install 'hpscale[mlflow]'`).

    hpscale import --from mlflow --tracking-uri http://mlflow:5000 --experiment proxies --study S

A run's params (strings, read as numbers where they are) and metrics (their latest values)
are its names; the common aliases map them to run fields (`lr`, `batch_size`, `n_params`,
…, and `val_loss`/`eval_loss`/`loss` for the final loss; see
`service.importers.common.ALIASES`), `--map` overrides. A FINISHED run is `completed`
(`diverged` if its loss is NaN/inf), FAILED and KILLED runs are `failed`, runs still
RUNNING or SCHEDULED are left for a later import. Run key: `mlflow:<run id>`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.errors import InvalidArgument
from service.importers.common import check_mapping, map_runs, redact_credentials, source_errors

_STATUS = {"FINISHED": "completed", "FAILED": "failed", "KILLED": "failed"}
_PAGE = 1000


def _runs(tracking_uri: str, experiment: str) -> list[Any]:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise InvalidArgument("importing from MLflow needs the mlflow package: pip install 'hpscale[mlflow]'") from None
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
                return runs


def read_runs(
    tracking_uri: str, experiment: str, mapping: Mapping[str, str] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """(source id, run) for every finished run of the MLflow experiment, mapped to hpscale runs."""
    mapping = dict(mapping or {})
    check_mapping(mapping)
    runs = [r for r in _runs(tracking_uri, experiment) if r.info.status in _STATUS]
    return map_runs(
        ((f"mlflow:{r.info.run_id}", _STATUS[r.info.status], {**r.data.metrics, **r.data.params}) for r in runs),
        mapping,
        "MLflow param or metric",
    )

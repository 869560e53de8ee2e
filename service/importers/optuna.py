"""Optuna: the trials of a study in a storage (`optuna` library: `pip install 'hpscale[optuna]'`).

    hpscale import --from optuna --storage sqlite:///optuna.db --source-study lr-sweep --study S

Hyperparameters and scale fields are read from a trial's params and user attributes (params
win), by the common aliases (`lr`/`learning_rate`, `bs`/`batch_size`, `wd`/`weight_decay`,
`n_params`, `tokens`, `width`, `depth`, …; see `service.importers.common.ALIASES`). The
trial's value is the final loss (`value`; a multi-objective trial's are `value_0`, `value_1`,
… and the first is the loss unless `--map` says otherwise). Statuses: a complete trial is
`completed`, or `diverged` if its value is NaN/inf; a failed or pruned trial is `diverged`
when its last reported value (`trial.report`) is NaN/inf — Optuna stores an objective that
returned NaN as FAIL with no value, so its reports are the evidence — and `failed` otherwise;
trials still running or waiting are left for a later import. The trial's state is kept in
`extra.optuna_state`, its reported values become its loss curve (x in steps). A trial without a
weight decay has an unknown one (null). Run key: `optuna:<number>:<study name>`.

A `sqlite:///` storage must name an existing file (Optuna would create an empty one); a
database server that does not answer within `timeout` seconds is reported in one line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.errors import InvalidArgument
from service.importers.common import (
    DEFAULT_TIMEOUT,
    check_mapping,
    finite_points,
    flatten,
    map_runs,
    redact_credentials,
    source_errors,
)
from service.limits import MAX_LOSS_CURVE_POINTS

_STATUS = {"COMPLETE": "completed", "PRUNED": "failed", "FAIL": "failed"}


def _storage(storage: str, timeout: float) -> Any:
    """The storage to open: a `sqlite:///` file that exists, or an RDB with a connect timeout."""
    import optuna

    if storage.startswith("sqlite:"):
        path = storage.split("///", 1)[1].split("?", 1)[0] if "///" in storage else ""
        if path and path != ":memory:" and not Path(path).exists():
            raise InvalidArgument(
                f"no Optuna storage at {path}: {redact_credentials(storage)} names no existing file "
                "(Optuna would create an empty one); check the path"
            )
        return storage
    if not storage.startswith(("postgresql", "postgres", "mysql")):
        return storage
    # psycopg and the MySQL drivers take connect_timeout (whole seconds)
    connect = {"connect_timeout": max(1, round(timeout))}
    return optuna.storages.RDBStorage(storage, engine_kwargs={"connect_args": connect})


def _load(storage: str, study_name: str, timeout: float) -> Any:
    try:
        import optuna
    except ImportError:
        raise InvalidArgument("importing from Optuna needs the optuna package: pip install 'hpscale[optuna]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with source_errors("the Optuna storage", storage):
        opened = _storage(storage, timeout)
        try:
            return optuna.load_study(study_name=study_name, storage=opened)
        except KeyError:
            names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(opened)) or "(none)"
            raise InvalidArgument(
                f"no Optuna study {study_name!r} in {redact_credentials(storage)}; its studies are: {names}"
            ) from None


def trial_values(trial: Any) -> dict[str, Any]:
    """A trial's names: user attributes, then params over them, then its objective value(s)."""
    values = {**flatten(trial.user_attrs), **flatten(trial.params)}
    objective = trial.values or []
    if len(objective) == 1:
        values["value"] = objective[0]
    else:
        values.update({f"value_{i}": v for i, v in enumerate(objective)})
    return values


def _reports(trial: Any) -> list[tuple[int, float]]:
    return sorted((int(step), float(value)) for step, value in (trial.intermediate_values or {}).items())


def trial_status(trial: Any) -> str:
    """completed, diverged or failed (see the module's docstring)."""
    state = trial.state.name
    if state == "COMPLETE":
        return "completed"  # a NaN/inf value makes it diverged when mapped (common.to_run)
    reports = _reports(trial)
    if reports and not math.isfinite(reports[-1][1]):
        return "diverged"
    return _STATUS[state]


def read_runs(
    storage: str,
    study_name: str,
    mapping: Mapping[str, str] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[tuple[str, dict[str, Any]]]:
    """(source id, run) for every finished trial of the Optuna study, mapped to hpscale runs."""
    mapping = dict(mapping or {})
    check_mapping(mapping)
    study = _load(storage, study_name, timeout)
    with source_errors("the Optuna storage", storage):
        trials = [t for t in study.get_trials(deepcopy=False) if t.state.name in _STATUS]
    key = {t.number: f"optuna:{t.number}:{study_name}" for t in trials}
    histories = {}
    for t in trials:
        curve = finite_points(_reports(t), MAX_LOSS_CURVE_POINTS)
        if curve:
            histories[key[t.number]] = {"loss_curve": curve, "curve_x": "steps"}
    return map_runs(
        ((key[t.number], trial_status(t), trial_values(t)) for t in trials),
        mapping,
        "Optuna trial param or user attribute",
        # the trial's value is its loss unless --map names another field's source for it
        default_sources=lambda names: {"final_loss": "value" if "value" in names else "value_0"},
        extras={key[t.number]: {"optuna_state": t.state.name} for t in trials},
        histories=histories,
    )

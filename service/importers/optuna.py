"""Optuna: the trials of a study in a storage (`optuna` library: `pip install 'hpscale[optuna]'`).

    hpscale import --from optuna --storage sqlite:///optuna.db --source-study lr-sweep --study S

Hyperparameters and scale fields are read from a trial's params and user attributes (params
win), by the common aliases (`lr`/`learning_rate`, `bs`/`batch_size`, `wd`/`weight_decay`,
`n_params`, `tokens`, `width`, `depth`, …; see `service.importers.common.ALIASES`). The
trial's value is the final loss (`value`; a multi-objective trial's are `value_0`, `value_1`,
… and the first is the loss unless `--map` says otherwise). A complete trial is `completed`
(`diverged` if its value is NaN/inf); pruned and failed trials are `failed`; trials still
running or waiting are left for a later import. Run key: `optuna:<number>:<study name>`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.errors import InvalidArgument
from service.importers.common import check_mapping, flatten, map_runs, redact_credentials, source_errors

_STATUS = {"COMPLETE": "completed", "PRUNED": "failed", "FAIL": "failed"}


def _load(storage: str, study_name: str) -> Any:
    try:
        import optuna
    except ImportError:
        raise InvalidArgument("importing from Optuna needs the optuna package: pip install 'hpscale[optuna]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with source_errors("the Optuna storage", storage):
        try:
            return optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "(none)"
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


def read_runs(
    storage: str, study_name: str, mapping: Mapping[str, str] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """(source id, run) for every finished trial of the Optuna study, mapped to hpscale runs."""
    mapping = dict(mapping or {})
    check_mapping(mapping)
    study = _load(storage, study_name)
    with source_errors("the Optuna storage", storage):
        trials = [t for t in study.get_trials(deepcopy=False) if t.state.name in _STATUS]
    return map_runs(
        ((f"optuna:{t.number}:{study_name}", _STATUS[t.state.name], trial_values(t)) for t in trials),
        mapping,
        "Optuna trial param or user attribute",
        # the trial's value is its loss unless --map names another field's source for it
        default_sources=lambda names: {"final_loss": "value" if "value" in names else "value_0"},
    )

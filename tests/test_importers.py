"""Importers from where runs really live: a real Optuna storage (with pruned and failed trials),
a real MLflow tracking server (runs logged by the real client), real W&B offline run
directories (written by the real `wandb` package, WANDB_MODE=offline) and a runs-table CSV.

Each imports ≥ 100 runs with the right fields, a second import adds 0, and a bad source run
is reported by its source id with nothing written.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from hpscale.cli import main
from store.models import Run
from tests.conftest import count_rows

optuna = pytest.importorskip("optuna")


def runs_by_key(engine: Engine) -> dict[str, Run]:
    with engine.connect() as conn:
        return {row.run_key: row for row in conn.execute(select(Run.__table__))}


def lr_of(i: int) -> float:
    return 1e-4 * 2 ** (i % 8)


def make_optuna_study(path: Path, n: int = 120, *, bad: int | None = None) -> str:
    """A real Optuna study on SQLite: n trials, every 10th pruned, every 15th failed."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{path}"
    study = optuna.create_study(study_name="lr-sweep", storage=storage)
    trials = []
    for i in range(n):
        state = TrialState.PRUNED if i % 10 == 9 else TrialState.FAIL if i % 15 == 14 else TrialState.COMPLETE
        lr = -1.0 if i == bad else lr_of(i)
        trials.append(
            create_trial(
                state=state,
                params={"lr": lr, "bs": 64 * (1 + i % 3)},
                distributions={
                    "lr": FloatDistribution(-10.0, 10.0),
                    "bs": CategoricalDistribution([64, 128, 192]),
                },
                user_attrs={"n_params": 1e8 * (1 + i % 4), "tokens": 2e9, "width": 512, "warmup": 100},
                value=3.0 + 0.01 * i if state == TrialState.COMPLETE else None,
            )
        )
    study.add_trials(trials)
    return storage


def optuna_import(database_url: str, storage: str, *extra: str) -> int:
    args = ["import", "--from", "optuna", "--storage", storage, "--source-study", "lr-sweep", "--study", "hpo"]
    return main([*args, "--create", "--database-url", database_url, "--quiet", *extra])


def test_optuna_trials_round_trip_idempotently(database_url: str, engine: Engine, tmp_path: Path, capsys) -> None:
    storage = make_optuna_study(tmp_path / "optuna.db")
    assert optuna_import(database_url, storage) == 0
    out = capsys.readouterr().out
    assert "imported 120 runs into 'hpo'" in out and "--undo" in out
    runs = runs_by_key(engine)
    assert len(runs) == 120
    done = runs["optuna:3:lr-sweep"]
    assert done.status == "completed" and done.final_loss == pytest.approx(3.03)
    assert done.learning_rate == lr_of(3) and done.batch_size == 64 and done.n_params == 4e8
    assert done.width == 512 and done.tokens == 2e9 and done.extra == {"warmup": 100}
    assert runs["optuna:9:lr-sweep"].status == "failed"  # pruned
    assert runs["optuna:14:lr-sweep"].status == "failed" and runs["optuna:14:lr-sweep"].final_loss is None
    completed = [i for i in range(120) if i % 10 != 9 and i % 15 != 14]
    assert sorted(int(k.split(":")[1]) for k, r in runs.items() if r.status == "completed") == completed
    assert optuna_import(database_url, storage) == 0
    assert "imported 0 runs" in capsys.readouterr().out and count_rows(engine) == 120


def test_a_bad_optuna_trial_is_named_and_nothing_is_written(
    database_url: str, engine: Engine, tmp_path: Path, capsys
) -> None:
    storage = make_optuna_study(tmp_path / "optuna.db", bad=7)
    assert optuna_import(database_url, storage) == 1
    err = capsys.readouterr().err
    assert "optuna:7:lr-sweep: learning_rate" in err
    assert count_rows(engine) == 0


def test_mapping_errors_are_one_message_with_a_hint(database_url: str, engine: Engine, tmp_path: Path, capsys) -> None:
    storage = make_optuna_study(tmp_path / "optuna.db", n=20)
    assert optuna_import(database_url, storage, "--map", "n_params=tokens") == 2
    err = capsys.readouterr().err
    assert "no Optuna trial param or user attribute provides n_params" in err and "--map" in err
    assert err.count("error:") == 1
    assert optuna_import(database_url, storage, "--map", "lr=learning_rate", "--map", "warmup=learning_rate") == 2
    assert "same field" in capsys.readouterr().err
    assert count_rows(engine) == 0
    assert optuna_import(database_url, storage, "--map", "n_params=extra.size", "--map", "warmup=n_params") == 0
    assert math.isclose(runs_by_key(engine)["optuna:0:lr-sweep"].n_params, 100)

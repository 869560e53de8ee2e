"""`hpscale suggest --to optuna|wandb-sweep|json` and `hpscale transfer-check` against a real `hpscale serve`.

The loop closes for real: the suggested runs are enqueued into an Optuna storage (SQLite file), an
Optuna worker runs them (its objective reads the enqueued values through `trial.suggest_*` and
trains on a synthetic truth), and `hpscale import --from optuna` brings them into the study. The
W&B sweep configuration is checked by W&B's own sweep engine (`sweeps`, what `wandb`'s local
controller validates with), offline, and its grid enumerated: exactly the suggested runs.

`sweeps` pins numpy < 2 in its metadata though it runs on numpy 2, so `.ci/run` installs it without
its dependencies; without it these tests skip, except in CI where they fail.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from hpscale.cli import main
from tests.test_api_decisions import SP_TARGET, runs_of
from tests.test_serve import free_port, wait_healthy

pytestmark = pytest.mark.slow
REQUIRED = bool(os.environ.get("CI")) or os.environ.get("HPSCALE_REQUIRE_INTEGRATIONS") == "1"


def _library(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        if REQUIRED:
            raise AssertionError(f"{name} must be installed in CI (see .ci/run)") from error
        pytest.skip(f"{name} not installed")


@pytest.fixture
def server(database_url: str) -> Iterator[tuple[str, Any]]:
    """A no-auth `hpscale serve` on a free loopback port with a fitted synthetic SP study 'sp'."""
    from fitting.synthetic import random_study

    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hpscale.cli",
            "serve",
            "--no-auth",
            "--port",
            str(port),
            "--database-url",
            database_url,
        ],
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HPSCALE_BOOTSTRAP": "20"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        table, truth = random_study(1, kind="sp", outliers=False)
        assert httpx.post(f"{url}/v1/studies", json={"name": "sp"}).status_code == 201
        r = httpx.post(f"{url}/v1/studies/sp/runs", json={"runs": runs_of(table, "sp")}, timeout=60)
        assert r.status_code == 201, r.text
        assert httpx.post(f"{url}/v1/studies/sp/fits", json={"bootstrap": 20}, timeout=120).status_code == 201
        yield url, truth
    finally:
        process.terminate()
        process.wait(timeout=30)


def suggest_argv(url: str, *extra: str) -> list[str]:
    target = [f"--{k.replace('_', '-')}={v}" for k, v in SP_TARGET.items()]
    return ["suggest", "--study", "sp", "--url", url, *target, "--budget-flops", "3e18", "--seq-len", "1024", *extra]


def test_suggested_runs_go_through_optuna_and_come_back(
    server: tuple[str, Any], database_url: str, tmp_path: Path, capsys
) -> None:
    optuna = _library("optuna")
    url, truth = server
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert main(suggest_argv(url, "--to", "json", "--output", str(tmp_path / "runs.json"))) == 0
    planned = json.loads((tmp_path / "runs.json").read_text())["runs"]
    assert planned and all(r["run_key"].startswith("hpscale-sp-fit") for r in planned)
    assert main(suggest_argv(url, "--to", "optuna", "--storage", storage, "--optuna-study", "next")) == 0
    assert f"{len(planned)} trial(s) enqueued" in capsys.readouterr().out
    study = optuna.load_study(study_name="next", storage=storage)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == len(planned)
    assert main(suggest_argv(url, "--to", "optuna", "--storage", storage, "--optuna-study", "next")) == 0
    assert "0 trial(s) enqueued" in capsys.readouterr().out  # enqueuing again adds nothing

    def objective(trial: Any) -> float:  # a worker: reads what hpscale enqueued, trains on the truth
        scale = {k: trial.suggest_float(k, 1.0, 1e16, log=True) for k in ("n_params", "tokens")}
        scale |= {k: float(trial.suggest_int(k, 1, 100_000)) for k in ("width", "depth")}
        lr = trial.suggest_float("learning_rate", 1e-7, 1.0, log=True)
        bs = trial.suggest_int("batch_size", 1, 1_000_000)
        wd = trial.suggest_float("weight_decay", 1e-8, 10.0, log=True)
        return float(truth.loss(*(scale[k] for k in ("n_params", "tokens", "width", "depth")), lr, bs, wd))

    study.optimize(objective, n_trials=len(planned))
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert {(t.params["learning_rate"], t.params["batch_size"]) for t in done} == {
        (r["learning_rate"], r["batch_size"]) for r in planned
    }
    before = httpx.get(f"{url}/v1/studies/sp").json()["run_count"]
    argv = ["import", "--from", "optuna", "--storage", storage, "--source-study", "next", "--study", "sp"]
    assert main([*argv, "--database-url", database_url]) == 0
    assert httpx.get(f"{url}/v1/studies/sp").json()["run_count"] == before + len(planned)
    back = httpx.get(f"{url}/v1/studies/sp/runs", params={"limit": 1000}).json()["items"]
    imported = [r for r in back if str(r.get("run_key", "")).startswith("optuna:")]
    assert len(imported) == len(planned)
    assert all(np.isclose(r["final_loss"], r["final_loss"]) and r["status"] == "completed" for r in imported)


def test_wandb_sweep_is_valid_for_wandbs_sweep_engine_and_grids_exactly_the_runs(
    server: tuple[str, Any], tmp_path: Path
) -> None:
    sweeps = _library("sweeps")
    yaml = _library("yaml")
    url, _ = server
    out = tmp_path / "sweep.yaml"
    assert main(suggest_argv(url, "--to", "wandb-sweep", "--output", str(out), "--program", "train.py")) == 0
    config = yaml.safe_load(out.read_text())
    assert sweeps.schema_violations_from_proposed_config(config) == []
    assert config["method"] == "grid" and config["program"] == "train.py"
    broken = {**config, "method": "grd"}
    assert sweeps.schema_violations_from_proposed_config(broken)  # the validator does reject
    runs: list[Any] = []
    while (nxt := sweeps.next_run(config, runs)) is not None and len(runs) < 1000:
        nxt.state = sweeps.RunState.finished
        runs.append(nxt)
    gridded = [r.config["hpscale"]["value"] for r in runs]
    assert sorted(json.dumps(g, sort_keys=True) for g in gridded) == sorted(
        json.dumps(v, sort_keys=True) for v in config["parameters"]["hpscale"]["values"]
    )
    assert all({"n_params", "tokens", "learning_rate", "batch_size", "run_key"} <= set(g) for g in gridded)


def test_transfer_check_and_suggest_print_for_people(server: tuple[str, Any], capsys) -> None:
    url, _ = server
    assert (
        main(
            [
                "transfer-check",
                "--study",
                "sp",
                "--url",
                url,
                *[f"--{k.replace('_', '-')}={v}" for k, v in SP_TARGET.items()],
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "drift exponent" in out and "width" in out and "reusing the base model's optimum" in out
    assert main(suggest_argv(url)) == 0
    out = capsys.readouterr().out
    assert "expected loss penalty at the target" in out and "FLOPs" in out
    assert main(["suggest", "--study", "sp", "--url", url, "--to", "optuna"]) == 2  # needs --storage

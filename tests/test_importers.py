"""Importers from where runs really live: a real Optuna storage (with pruned and failed trials),
a real MLflow tracking server (runs logged by the real client), real W&B offline run
directories (written by the real `wandb` package, WANDB_MODE=offline) and a runs-table CSV.

Each imports ≥ 100 runs with the right fields, a second import adds 0, and a bad source run
is reported by its source id with nothing written.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select

from hpscale.cli import main
from store.models import Run
from tests.conftest import count_rows
from tests.test_serve import free_port

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


@pytest.mark.slow
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
    assert done.width == 512 and done.tokens == 2e9 and done.extra == {"warmup": 100, "optuna_state": "COMPLETE"}
    assert done.weight_decay is None  # the trials never say: unknown, not a measured 0
    assert runs["optuna:9:lr-sweep"].status == "failed"  # pruned
    assert runs["optuna:9:lr-sweep"].extra["optuna_state"] == "PRUNED"
    assert runs["optuna:14:lr-sweep"].status == "failed" and runs["optuna:14:lr-sweep"].final_loss is None
    completed = [i for i in range(120) if i % 10 != 9 and i % 15 != 14]
    assert sorted(int(k.split(":")[1]) for k, r in runs.items() if r.status == "completed") == completed
    assert optuna_import(database_url, storage) == 0
    assert "imported 0 runs" in capsys.readouterr().out and count_rows(engine) == 120


@pytest.mark.slow
def test_a_bad_optuna_trial_is_named_and_nothing_is_written(
    database_url: str, engine: Engine, tmp_path: Path, capsys
) -> None:
    storage = make_optuna_study(tmp_path / "optuna.db", bad=7)
    assert optuna_import(database_url, storage) == 1
    err = capsys.readouterr().err
    assert "optuna:7:lr-sweep: learning_rate" in err
    assert "of Optuna study 'lr-sweep'" in err and "in the file" not in err  # the message names the source
    assert count_rows(engine) == 0


NAN_SWEEP = """
import math, sys
import optuna
optuna.logging.set_verbosity(optuna.logging.ERROR)
study = optuna.create_study(study_name="lr-sweep", storage=sys.argv[1])

def objective(trial):
    lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
    trial.set_user_attr("n_params", 1e8)
    trial.set_user_attr("tokens", 2e9)
    trial.set_user_attr("batch_size", 64)
    loss = 3.0
    for step in range(5):
        # a learning rate past ~0.1 blows up: its loss becomes NaN, as training reports it
        loss = math.nan if lr > 0.1 and step >= 3 else 3.0 + (math.log(lr / 3e-3)) ** 2 / 50 + 1.0 / (step + 1)
        trial.report(loss, step)
    return loss  # NaN for a divergence: Optuna stores the trial as FAIL, without a value

study.optimize(objective, n_trials=40)
"""


@pytest.mark.slow
def test_a_nan_optuna_trial_is_diverged_with_its_state_kept(
    database_url: str, engine: Engine, tmp_path: Path, capsys
) -> None:
    """Issue item 2: an objective that returned NaN (Optuna: FAIL, no value) became `failed`."""
    path = tmp_path / "optuna.db"
    result = subprocess.run(
        [sys.executable, "-c", NAN_SWEEP, f"sqlite:///{path}"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    trials = optuna.load_study(study_name="lr-sweep", storage=f"sqlite:///{path}").trials
    nan_trials = {t.number for t in trials if t.state.name == "FAIL"}
    assert nan_trials and all(t.values is None for t in trials if t.number in nan_trials)
    assert optuna_import(database_url, f"sqlite:///{path}") == 0
    runs = runs_by_key(engine)
    for t in trials:
        run = runs[f"optuna:{t.number}:lr-sweep"]
        assert run.extra["optuna_state"] == t.state.name
        if t.number in nan_trials:
            assert run.status == "diverged" and run.final_loss is None, t.number
        else:
            assert run.status == "completed" and run.final_loss == pytest.approx(t.value)
    # the reported values are the run's loss curve (in steps; the NaN reports are not points)
    with engine.connect() as conn:
        from store.models import RunCurve

        curves = {row.run_id: row for row in conn.execute(select(RunCurve.__table__))}
    done = runs[f"optuna:{min(set(range(40)) - nan_trials)}:lr-sweep"]
    assert curves[done.id].x_unit == "steps" and len(curves[done.id].points) == 5
    diverged = runs[f"optuna:{min(nan_trials)}:lr-sweep"]
    assert len(curves[diverged.id].points) == 3


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


# --- MLflow: a real tracking server, runs logged by the real client ----------------------


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 with a SQLite backend, stopped after the module."""
    pytest.importorskip("mlflow")
    import shutil

    executable = shutil.which("mlflow")
    if executable is None:
        pytest.skip("the mlflow command is not installed")
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    process = subprocess.Popen(
        [
            *(executable, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
            *("--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--default-artifact-root", str(root / "art")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # it takes ~25 s to start on a loaded 2-core machine
        while True:
            assert process.poll() is None, "mlflow server exited"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def log_mlflow_runs(url: str, experiment: str, n: int = 110, *, bad: int | None = None) -> dict[int, str]:
    """n runs logged with the real MLflow client: params as training code logs them, the loss
    as a metric, every 12th run FAILED and every 25th KILLED. Returns {i: run id}."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url)
    experiment_id = client.create_experiment(experiment)
    ids = {}
    for i in range(n):
        run = client.create_run(experiment_id, run_name=f"proxy-{i}")
        run_id = run.info.run_id
        params = {"lr": str(-1.0 if i == bad else lr_of(i)), "batch_size": "128", "n_params": "1e8"}
        params |= {"tokens": "2000000000", "d_model": "512", "optimizer": "adamw"}
        now = int(time.time() * 1000)
        metrics = [Metric("train_loss", 3.5, now, 0), Metric("val_loss", 3.0 + 0.01 * i, now, 1)]
        client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
        status = "FAILED" if i % 12 == 11 else "KILLED" if i % 25 == 24 else "FINISHED"
        client.set_terminated(run_id, status)
        ids[i] = run_id
    return ids


def mlflow_import(database_url: str, url: str, experiment: str) -> int:
    args = ["import", "--from", "mlflow", "--tracking-uri", url, "--experiment", experiment, "--study", "tracked"]
    return main([*args, "--create", "--database-url", database_url, "--quiet"])


@pytest.mark.slow
def test_mlflow_runs_round_trip_idempotently(database_url: str, engine: Engine, mlflow_server: str, capsys) -> None:
    experiment = f"proxies-{uuid.uuid4().hex[:8]}"
    ids = log_mlflow_runs(mlflow_server, experiment)
    assert mlflow_import(database_url, mlflow_server, experiment) == 0
    assert "imported 110 runs into 'tracked'" in capsys.readouterr().out
    runs = runs_by_key(engine)
    assert len(runs) == 110
    run = runs[f"mlflow:{ids[3]}"]
    assert run.status == "completed" and run.final_loss == pytest.approx(3.03)  # val_loss before train_loss
    assert run.learning_rate == lr_of(3) and run.batch_size == 128 and run.width == 512 and run.tokens == 2e9
    assert run.extra == {"optimizer": "adamw", "train_loss": 3.5, "run_name": "proxy-3"}
    assert run.weight_decay is None
    assert runs[f"mlflow:{ids[11]}"].status == "failed" and runs[f"mlflow:{ids[24]}"].status == "failed"
    assert mlflow_import(database_url, mlflow_server, experiment) == 0
    assert "imported 0 runs" in capsys.readouterr().out and count_rows(engine) == 110


@pytest.mark.slow
@pytest.mark.slow
def test_mlflow_histories_become_curves_and_run_names_are_kept(
    database_url: str, engine: Engine, mlflow_server: str, capsys
) -> None:
    """Issue item 12: MLflow imports brought only final values and dropped the run name."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = f"curves-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment(experiment)
    run_id = client.create_run(experiment_id, run_name="lr-3e-3-seed-1").info.run_id
    params = [Param("lr", "0.003"), Param("batch_size", "128"), Param("n_params", "1e8"), Param("tokens", "2e9")]
    metrics = [Metric("train_loss", 4.0 - 0.01 * s, 1000 + s, s) for s in range(300)]
    metrics += [Metric("val_loss", 3.9 - 0.1 * s, 2000 + s, 100 * s) for s in range(3)]
    client.log_batch(run_id, metrics=metrics, params=params)
    client.set_terminated(run_id, "FINISHED")
    assert mlflow_import(database_url, mlflow_server, experiment) == 0
    [run] = runs_by_key(engine).values()
    assert run.extra["run_name"] == "lr-3e-3-seed-1" and run.final_loss == pytest.approx(3.7)
    with engine.connect() as conn:
        from store.models import RunCurve

        curves = {row.series: row for row in conn.execute(select(RunCurve.__table__))}
    assert curves["loss"].points == [[0.0, 3.9], [100.0, pytest.approx(3.8)], [200.0, pytest.approx(3.7)]]
    assert curves["train_loss"].x_unit == "steps" and curves["train_loss"].n_points == 300
    assert run.extra["loss_curve_x"] == "steps"


def test_a_bad_mlflow_run_is_named_and_nothing_is_written(
    database_url: str, engine: Engine, mlflow_server: str, capsys
) -> None:
    experiment = f"bad-{uuid.uuid4().hex[:8]}"
    ids = log_mlflow_runs(mlflow_server, experiment, n=20, bad=5)
    assert mlflow_import(database_url, mlflow_server, experiment) == 1
    assert f"mlflow:{ids[5]}: learning_rate" in capsys.readouterr().err
    assert count_rows(engine) == 0
    assert mlflow_import(database_url, mlflow_server, "no-such-experiment") == 2
    assert "no MLflow experiment 'no-such-experiment'" in capsys.readouterr().err


# --- credentials in a source's URL never reach an error message (issue 19) ------------------

SECRET = "TopSecret-" + uuid.uuid4().hex[:8]


def test_an_unreachable_optuna_storage_is_reported_without_its_password(database_url: str, capsys) -> None:
    storage = f"postgresql+psycopg://hpscale:{SECRET}@127.0.0.1:{free_port()}/optuna"  # nothing listens there
    assert optuna_import(database_url, storage) == 2
    err = capsys.readouterr().err
    assert "cannot read the Optuna storage at postgresql+psycopg://hpscale:***@127.0.0.1" in err, err
    assert SECRET not in err


def test_an_unreachable_mlflow_server_is_one_line_at_once(database_url: str, capsys) -> None:
    """Issue item 6: nothing listening meant 4 minutes of silence, then a 115-line traceback."""
    pytest.importorskip("mlflow")
    import socket

    started = time.monotonic()
    assert mlflow_import(database_url, f"http://127.0.0.1:{free_port()}", "proxies") == 2
    assert time.monotonic() - started < 30  # MLflow's own retries take ~4 minutes
    err = capsys.readouterr().err
    assert "cannot read the MLflow tracking server at http://127.0.0.1" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if not line.startswith("hpscale: using")]) == 1
    with socket.socket() as silent:  # accepts connections but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        args = ["import", "--from", "mlflow", "--tracking-uri", uri, "--experiment", "x", "--study", "t"]
        started = time.monotonic()
        assert main([*args, "--create", "--timeout", "2", "--database-url", database_url, "--quiet"]) == 2
        assert time.monotonic() - started < 20
    assert "no answer within 2 s" in capsys.readouterr().err


def test_an_unreachable_mlflow_server_is_reported_without_its_credentials(
    database_url: str, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = f"http://ci:{SECRET}@127.0.0.1:{free_port()}"  # nothing listens there
    assert mlflow_import(database_url, uri, "proxies") == 2
    err = capsys.readouterr().err
    assert "cannot read the MLflow tracking server at http://ci:***@127.0.0.1" in err, err
    assert SECRET not in err


# --- W&B: offline run directories written by the real wandb package, and a runs-table CSV ---

WANDB_SCRIPT = """
import math, sys
import wandb
n, crashed, nan = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    config = {"lr": 1e-4 * 2 ** (i % 8), "batch_size": 64 * (1 + i % 3), "seed": i,
              "model": {"n_params": 1e8 * (1 + i % 4), "d_model": 512, "n_layers": 8}, "tokens": 2e9}
    run = wandb.init(project="proxies", name=f"proxy-{i}", config=config, reinit="finish_previous")
    for step in range(3):
        run.log({"train/loss": 4.0 - 0.1 * step, "tokens_seen": (step + 1) * 1e8})
    run.summary["val_loss"] = math.nan if i == nan else 3.0 + 0.01 * i
    run.finish(exit_code=1 if i == crashed else 0)
"""


@pytest.fixture(scope="module")
def wandb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """105 offline runs written by the real wandb package (WANDB_MODE=offline: no network)."""
    pytest.importorskip("wandb")
    root = tmp_path_factory.mktemp("wandb")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(root), "WANDB_SILENT": "true"}
    env |= {"WANDB_DISABLE_GIT": "true", "WANDB_CONSOLE": "off"}
    result = subprocess.run(
        [sys.executable, "-c", WANDB_SCRIPT, "105", "7", "9"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "wandb"


def wandb_import(database_url: str, *paths: str | Path) -> int:
    args = ["import", "--from", "wandb", *map(str, paths), "--study", "wb", "--create"]
    return main([*args, "--database-url", database_url, "--quiet"])


@pytest.mark.slow
def test_wandb_offline_runs_round_trip_idempotently(database_url: str, engine: Engine, wandb_dir: Path, capsys) -> None:
    directories = sorted(wandb_dir.glob("offline-run-*"))
    assert len(directories) == 105
    assert wandb_import(database_url, wandb_dir) == 0
    assert "imported 105 runs into 'wb'" in capsys.readouterr().out
    runs = runs_by_key(engine)
    by_seed = {run.seed: run for run in runs.values()}
    assert len(runs) == 105 and set(by_seed) == set(range(105))
    run = by_seed[3]
    assert run.status == "completed" and run.final_loss == pytest.approx(3.03)
    assert run.learning_rate == lr_of(3) and run.batch_size == 64 and run.n_params == 4e8
    assert run.width == 512 and run.depth == 8 and run.tokens == 2e9
    assert run.extra["train/loss"] == pytest.approx(3.8) and run.extra["tokens_seen"] == 3e8
    assert by_seed[7].status == "failed"  # exit code 1
    assert by_seed[9].status == "diverged" and by_seed[9].final_loss is None  # NaN loss
    # the history is the run's loss curve, in tokens (every row logged tokens_seen)
    with engine.connect() as conn:
        from store.models import RunCurve

        [loss] = conn.execute(select(RunCurve.__table__).where(RunCurve.run_id == run.id)).all()
    assert loss.series == "loss" and loss.x_unit == "tokens"
    assert loss.points == [[1e8, 4.0], [2e8, pytest.approx(3.9)], [3e8, pytest.approx(3.8)]]
    assert run.extra["run_name"] == "proxy-3"  # the W&B run's display name
    assert all(key.startswith("wandb:") for key in runs)
    # Some directories again, by name: nothing new.
    assert wandb_import(database_url, *directories[:10]) == 0
    assert "imported 0 runs" in capsys.readouterr().out and count_rows(engine) == 105


def write_runs_table(path: Path, n: int = 120, *, bad: int | None = None) -> None:
    """A W&B runs-table CSV export ("Export as CSV" of the runs table)."""
    header = ["Name", "ID", "State", "Notes", "User", "Tags", "Created", "Runtime", "Sweep"]
    header += ["learning_rate", "batch_size", "n_params", "tokens", "width", "warmup", "eval/loss"]
    lines = [",".join(header)]
    for i in range(n):
        state = "running" if i == n - 1 else "crashed" if i % 20 == 19 else "finished"
        lr = -1.0 if i == bad else lr_of(i)
        loss = "" if state != "finished" else f"{3.0 + 0.01 * i}"
        row = [f"proxy-{i}", f"id{i:04d}", state, "", "me", "", "2026-11-30T10:00:00", "3600", ""]
        row += [repr(lr), "128", "1e8", "2e9", "512", "100", loss]
        lines.append(",".join(row))
    path.write_text("\n".join(lines) + "\n")


def test_wandb_runs_table_csv(database_url: str, engine: Engine, tmp_path: Path, capsys) -> None:
    table = tmp_path / "wandb_export.csv"
    write_runs_table(table)
    assert wandb_import(database_url, table) == 0
    runs = runs_by_key(engine)
    assert len(runs) == 119  # the running one waits for a later import
    assert runs["wandb:id0003"].final_loss == pytest.approx(3.03) and runs["wandb:id0003"].width == 512
    assert runs["wandb:id0019"].status == "failed"
    assert runs["wandb:id0003"].extra == {"warmup": 100, "run_name": "proxy-3"}  # the W&B run name is kept
    assert wandb_import(database_url, table) == 0
    assert count_rows(engine) == 119
    bad = tmp_path / "bad.csv"
    write_runs_table(bad, bad=4)
    with engine.begin() as conn:
        conn.execute(Run.__table__.delete())
    assert wandb_import(database_url, bad) == 1
    assert "wandb:id0004: learning_rate" in capsys.readouterr().err
    assert count_rows(engine) == 0

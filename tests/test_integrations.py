"""The training-loop integrations with the real libraries: the Hugging Face Trainer (a 2-layer
GPT-2) and Lightning (a 2-layer MLP), on random data on the CPU, against a real `hpscale serve`
on loopback; the multi-process runs through `torchrun` and Lightning DDP (gloo).

The libraries are the `integrations` extra. Without them these tests are skipped, except in
CI (CI or HPSCALE_REQUIRE_INTEGRATIONS=1 set), where their absence fails the run.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_serve import free_port, serve_argv, wait_healthy

REQUIRED = bool(os.environ.get("CI")) or os.environ.get("HPSCALE_REQUIRE_INTEGRATIONS") == "1"


def _library(name: str):  # type: ignore[no-untyped-def]
    try:
        return importlib.import_module(name)
    except ImportError as error:
        reason = f"{name} is not installed (pip install -e '.[integrations]'): {error}"
        if REQUIRED:
            pytest.fail(f"CI needs the integration libraries: {reason}", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


torch = _library("torch")
transformers = _library("transformers")
try:
    import lightning.pytorch as pl
except ImportError:
    pl = _library("pytorch_lightning")

from hpscale.callbacks import HpscaleLightningCallback, HpscaleTrainerCallback  # noqa: E402
from hpscale.client import Client, HpscaleError  # noqa: E402
from tests.scripts.tiny_models import TokenDataset, gpt2, hf_args, lightning_module, token_loader  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hps_integration-tests-admin-token-0123456789-ABCDEFGHIJKLMN"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`hpscale serve` on loopback with a SQLite database (the callbacks, not the store, are tested here)."""
    port = free_port()
    database = tmp_path_factory.mktemp("db") / "hpscale.db"
    process = subprocess.Popen(
        serve_argv(f"sqlite:///{database}", port),
        env={**os.environ, "HPSCALE_BOOTSTRAP_ADMIN_TOKEN": TOKEN},
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def hp(server: str, request: pytest.FixtureRequest) -> Iterator[tuple[Client, str]]:
    """A client and a fresh study named after the test."""
    study = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:60].strip("-")
    with Client(server, TOKEN) as client:
        client.create_study(study)
        yield client, study


def stored(client: Client, study: str) -> dict[str, dict]:
    return {run["run_key"]: run for run in client.runs(study)}


def hf_trainer(tmp_path: Path, callback, *callbacks, **args):  # type: ignore[no-untyped-def]
    return transformers.Trainer(
        model=gpt2(),
        args=hf_args(str(tmp_path), **args),
        train_dataset=TokenDataset(),
        eval_dataset=TokenDataset(64, seed=5),
        callbacks=[callback, *callbacks],
    )


class Poison(transformers.TrainerCallback):
    """Turns the weights NaN after step `at` (what a diverging run does), or raises there."""

    def __init__(self, at: int, *, error: bool = False) -> None:
        self.at, self.error = at, error

    def on_step_end(self, args, state, control, model=None, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step == self.at:
            if self.error:
                raise RuntimeError("CUDA out of memory (simulated)")
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.fill_(math.nan)


# --- Hugging Face Trainer ----------------------------------------------------------------------


def test_hf_records_what_the_trainer_knows_with_nothing_typed(hp, tmp_path: Path) -> None:
    client, study = hp
    callback = HpscaleTrainerCallback(client, study, run_key="hf-1")
    trainer = hf_trainer(tmp_path, callback, gradient_accumulation_steps=2, weight_decay=0.05)
    callback.train(trainer)
    run = stored(client, study)["hf-1"]
    model = trainer.model
    # A 30-step run with the default logging_steps (500) is completed, with the mean of the last steps.
    assert run["status"] == "completed"
    last = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    assert last["step"] == 30 and run["final_loss"] == pytest.approx(last["loss"])
    assert run["extra"]["final_loss_from"].startswith("mean training loss")
    assert run["learning_rate"] == 1e-3 and run["weight_decay"] == 0.05
    assert run["batch_size"] == 4 * 2  # per device × accumulation × 1 process
    assert run["seq_len"] == 16 and run["tokens"] == 30 * 8 * 16
    assert run["n_params"] == model.num_parameters() and run["width"] == 32 and run["depth"] == 2
    assert run["extra"]["n_params_non_embedding"] == model.num_parameters(exclude_embeddings=True)
    assert run["seed"] == 0 and run["extra"]["max_steps"] == 30
    assert run["loss_curve"][-1][0] == 30 * 8 * 16 and "loss_curve_x" not in run["extra"]  # tokens


def test_hf_nan_with_the_default_filter_is_diverged(hp, tmp_path: Path) -> None:
    client, study = hp
    for key, at in (("nan-late", 27), ("nan-early", 13)):
        callback = HpscaleTrainerCallback(client, study, run_key=key)
        trainer = hf_trainer(tmp_path, callback, Poison(at), logging_steps=5)
        assert trainer.args.logging_nan_inf_filter  # HF's default hides the NaN losses from its logs
        callback.train(trainer)
        logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        assert all(math.isfinite(loss) for loss in logged)  # what misled the old callback
    runs = stored(client, study)
    assert runs["nan-late"]["status"] == runs["nan-early"]["status"] == "diverged"
    assert runs["nan-late"]["final_loss"] is None and runs["nan-early"]["final_loss"] is None


def test_hf_an_exception_is_failed_and_reraised(hp, tmp_path: Path) -> None:
    client, study = hp
    callback = HpscaleTrainerCallback(client, study, run_key="oom")
    trainer = hf_trainer(tmp_path, callback, Poison(5, error=True))
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        callback.train(trainer)
    run = stored(client, study)["oom"]
    assert run["status"] == "failed" and run["extra"]["error"].startswith("RuntimeError: CUDA out of memory")


def test_hf_a_crash_that_ends_the_process_is_failed(hp, tmp_path: Path) -> None:
    """Without the wrapper: plain `trainer.train()` in a script that dies of the exception."""
    client, study = hp
    script = f"""
import sys; sys.path.insert(0, {str(REPO)!r})
from transformers import Trainer
from hpscale.callbacks import HpscaleTrainerCallback
from hpscale.client import Client
from tests.scripts.tiny_models import TokenDataset, gpt2, hf_args
from tests.test_integrations import Poison
callback = HpscaleTrainerCallback(Client({client.url!r}, {TOKEN!r}), {study!r}, run_key="crash")
Trainer(model=gpt2(), args=hf_args({str(tmp_path)!r}), train_dataset=TokenDataset(),
        callbacks=[callback, Poison(3, error=True)]).train()
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "CUDA out of memory" in result.stderr
    run = stored(client, study)["crash"]
    assert run["status"] == "failed" and "RuntimeError: CUDA out of memory" in run["extra"]["error"]


def test_hf_evaluate_after_train_is_the_final_loss_and_each_train_is_a_run(hp, tmp_path: Path) -> None:
    client, study = hp
    callback = HpscaleTrainerCallback(client, study, run_key="job")
    trainer = hf_trainer(tmp_path, callback)
    with callback:
        trainer.train()
        metrics = trainer.evaluate()
    trainer.train()  # the same callback again: a second run, not more points on the first
    runs = stored(client, study)
    assert set(runs) == {"job", "job-2"}
    assert runs["job"]["final_loss"] == pytest.approx(metrics["eval_loss"])
    assert runs["job"]["extra"]["final_loss_from"] == "eval_loss"
    assert runs["job-2"]["status"] == "completed" and len(runs["job-2"]["loss_curve"]) == len(runs["job"]["loss_curve"])


def test_hf_hand_values_win_and_a_contradiction_warns(hp, tmp_path: Path) -> None:
    client, study = hp
    callback = HpscaleTrainerCallback(client, study, run_key="hand", learning_rate=3e-3, width=32, warmup=7)
    trainer = hf_trainer(tmp_path, callback)
    with pytest.warns(UserWarning, match=r"learning_rate=0.003 was passed by hand but the framework says 0.001"):
        callback.train(trainer)
    run = stored(client, study)["hand"]
    assert run["learning_rate"] == 3e-3 and run["width"] == 32 and run["extra"]["warmup"] == 7


def test_hf_a_missing_study_or_bad_token_stops_before_training(hp, tmp_path: Path) -> None:
    client, study = hp
    with pytest.raises(HpscaleError, match="nothing was trained") as missing:
        HpscaleTrainerCallback(client, "no-such-study")
    assert missing.value.status_code == 404
    with Client(client.url, "hps_wrong") as wrong, pytest.raises(HpscaleError) as refused:
        HpscaleTrainerCallback(wrong, study)
    assert refused.value.status_code == 401
    with pytest.raises(TypeError, match="did you mean 'learning_rate'"):
        HpscaleTrainerCallback(client, study, learnig_rate=1e-3)
    # a field the server refuses is found when training begins, before the first step
    callback = HpscaleTrainerCallback(client, study, run_key="bad", learning_rate=50.0)
    trainer = hf_trainer(tmp_path, callback)
    with pytest.raises(HpscaleError, match="learning_rate"):
        callback.train(trainer)
    assert trainer.state.global_step == 0 and stored(client, study) == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # check="warn" trains anyway, saying why
        with pytest.raises(UserWarning, match="no-such-study"):
            HpscaleTrainerCallback(client, "no-such-study", check="warn")


def test_hf_a_server_that_is_down_never_stops_training_and_the_run_is_saved(tmp_path: Path) -> None:
    down = Client(f"http://127.0.0.1:{free_port()}", TOKEN, retries=1, submit_deadline=2, spool_dir=tmp_path / "unsent")
    with pytest.warns(UserWarning, match="cannot reach"):
        callback = HpscaleTrainerCallback(down, "proxies", run_key="offline")
    trainer = hf_trainer(tmp_path, callback)
    with pytest.warns(UserWarning, match="hpscale submit"):
        callback.train(trainer)
    assert trainer.state.global_step == 30
    saved = json.loads((tmp_path / "unsent" / "proxies--offline.json").read_text())
    assert saved["study"] == "proxies" and saved["runs"][0]["status"] == "completed"
    assert saved["runs"][0]["batch_size"] == 4 and saved["runs"][0]["final_loss"] > 0
    down.close()


def test_a_requeued_hf_job_stores_its_completed_retry(hp, tmp_path: Path) -> None:
    client, study = hp
    first = HpscaleTrainerCallback(client, study, run_key="slurm-4242")
    with pytest.raises(RuntimeError):
        first.train(hf_trainer(tmp_path, first, Poison(4, error=True)))
    assert stored(client, study)["slurm-4242"]["status"] == "failed"
    retry = HpscaleTrainerCallback(client, study, run_key="slurm-4242")
    retry.train(hf_trainer(tmp_path, retry))
    [run] = client.runs(study)
    assert run["status"] == "completed" and run["final_loss"] > 0
    assert retry.runs[0].result is not None and retry.runs[0].result["replaced"] == 1
    audit = client._request("GET", f"/v1/studies/{study}/audit")["items"]
    superseded = [entry for entry in audit if entry["action"] == "superseded"]
    assert len(superseded) == 1 and superseded[0]["run_id"] == run["id"]
    # Both attempts' submissions are audited too; nothing else happened to the study.
    assert {entry["action"] for entry in audit} == {"superseded", "submit"}


@pytest.mark.slow
def test_hf_torchrun_two_processes_store_one_run_with_the_global_batch(hp, tmp_path: Path) -> None:
    client, study = hp
    out = tmp_path / "history.json"
    env = {
        **os.environ,
        "HP_URL": client.url,
        "HP_TOKEN": TOKEN,
        "HP_STUDY": study,
        "HP_OUT": str(out),
        "HP_DIR": str(tmp_path),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    result = subprocess.run(
        [*command, str(REPO / "tests" / "scripts" / "hf_torchrun.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = stored(client, study)
    assert list(runs) == ["torchrun-job"]
    run = runs["torchrun-job"]
    assert run["batch_size"] == 4 * 2  # per device × 2 processes
    assert run["tokens"] == 12 * 8 * 16
    last = [entry for entry in json.loads(out.read_text()) if "loss" in entry][-1]
    assert run["final_loss"] == pytest.approx(last["loss"])  # the Trainer's all-process mean


# --- Lightning -----------------------------------------------------------------------------------


def lightning_trainer(callback, **options):  # type: ignore[no-untyped-def]
    settings = {
        "max_steps": 30,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(callbacks=[callback], **{**settings, **options})


def test_lightning_records_a_module_that_only_returns_its_loss(hp) -> None:
    client, study = hp
    callback = HpscaleLightningCallback(client, study, run_key="lit")
    module = lightning_module()
    lightning_trainer(callback, accumulate_grad_batches=2).fit(module, token_loader())
    run = stored(client, study)["lit"]
    assert run["status"] == "completed"
    # the last window: ceil(30 / 10) = 3 optimizer steps × 2 accumulated batches
    assert run["final_loss"] == pytest.approx(sum(module.losses[-6:]) / 6, rel=1e-5)
    assert run["learning_rate"] == 2e-3 and run["weight_decay"] == 0.01  # torch AdamW's default
    assert run["batch_size"] == 4 * 2 and run["seq_len"] == 8 and run["tokens"] == 30 * 8 * 8
    assert run["n_params"] == sum(p.numel() for p in module.parameters())
    assert run["width"] == 16 and run["depth"] == 2
    assert [point[0] for point in run["loss_curve"]] == [step * 64 for step in range(3, 31, 3)]


def test_lightning_an_exception_is_failed_and_reraised(hp) -> None:
    client, study = hp
    callback = HpscaleLightningCallback(client, study, run_key="boom")
    with pytest.raises(RuntimeError, match="loss exploded"):
        lightning_trainer(callback).fit(lightning_module(fail_at=5), token_loader())
    run = stored(client, study)["boom"]
    assert run["status"] == "failed" and "loss exploded" in run["extra"]["error"]


class LightningPoison(pl.Callback):
    """Turns the weights NaN after optimizer step `at` (what a diverging run does)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        if trainer.global_step == self.at:
            with torch.no_grad():
                for parameter in pl_module.parameters():
                    parameter.fill_(math.nan)


def test_lightning_nan_loss_is_diverged(hp) -> None:
    client, study = hp
    callback = HpscaleLightningCallback(client, study, run_key="nan")
    module = lightning_module()
    trainer = lightning_trainer(callback)
    trainer.callbacks.append(LightningPoison(25))
    trainer.fit(module, token_loader())
    assert not all(math.isfinite(loss) for loss in module.losses)
    run = stored(client, study)["nan"]
    assert run["status"] == "diverged" and run["final_loss"] is None


def test_lightning_without_token_data_needs_tokens_by_hand(hp) -> None:
    client, study = hp
    features = torch.utils.data.TensorDataset(torch.randn(64, 16))  # floats: no tokens to count
    callback = HpscaleLightningCallback(client, study, run_key="mlp")
    with pytest.raises(ValueError, match="cannot tell tokens"):
        lightning_trainer(callback).fit(lightning_module(), torch.utils.data.DataLoader(features, batch_size=4))
    assert stored(client, study) == {}


@pytest.mark.slow
def test_lightning_ddp_two_processes_store_one_run_with_the_global_loss(hp, tmp_path: Path) -> None:
    client, study = hp
    out = tmp_path / "losses"
    env = {**os.environ, "HP_URL": client.url, "HP_TOKEN": TOKEN, "HP_STUDY": study, "HP_OUT": str(out)}
    env.update(OMP_NUM_THREADS="1", MASTER_PORT=str(free_port()))
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "scripts" / "lightning_ddp.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = stored(client, study)
    assert list(runs) == ["ddp-job"]
    run = runs["ddp-job"]
    assert run["batch_size"] == 4 * 2  # per device × 2 processes
    per_rank = [json.loads(Path(f"{out}.{rank}").read_text()) for rank in (0, 1)]
    assert per_rank[0] != per_rank[1]  # each rank saw its own shard
    window = [loss for losses in per_rank for loss in losses[-1:]]  # ceil(10 / 10) = 1 step per window
    assert run["final_loss"] == pytest.approx(sum(window) / len(window), rel=1e-5)

"""The training-loop hook (`Client.track`) and the HF / Lightning callbacks built on it, and the
client's exclusion/undo/pinning calls, against the real app (in-process transport)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from hpscale.callbacks import HpscaleLightningCallback, HpscaleTrainerCallback
from hpscale.client import Client
from tests.test_undo_pins import TARGET, make_study

SCALE = {"n_params": 1.2e8, "tokens": 2.4e9, "learning_rate": 3e-3, "batch_size": 256, "width": 768, "depth": 12}


@pytest.fixture
def hp(client: TestClient) -> Iterator[Client]:
    """The Python client talking to the test app in-process (admin token), study 's' created."""
    assert client.post("/v1/studies", json={"name": "s"}).status_code == 201
    with Client("http://testserver", client.headers["Authorization"].split()[1], transport=client._transport) as c:
        yield c


def by_key(hp: Client) -> dict[str, dict]:
    return {run["run_key"]: run for run in hp.runs("s")}


def test_a_tracked_run_appears_in_the_study(hp: Client) -> None:
    with hp.track("s", run_key="job-1", warmup=2000, **SCALE) as run:
        for step in range(1, 5):
            run.log(step * 1e8, 4.0 - 0.1 * step)
        run.final_loss = 3.55
    assert run.result is not None and run.result["inserted"] == 1
    stored = by_key(hp)["job-1"]
    assert stored["status"] == "completed" and stored["final_loss"] == 3.55
    assert stored["learning_rate"] == 3e-3 and stored["width"] == 768 and stored["extra"] == {"warmup": 2000}
    assert stored["loss_curve"][-1] == [4e8, 3.6]
    assert stored["submission_id"] == run.result["submission_id"]
    # Leaving the same job's block again (a rerun) stores nothing new.
    with hp.track("s", run_key="job-1", **SCALE) as again:
        again.final_loss = 3.55
    assert again.result is not None and again.result["duplicates"] == 1


def test_an_exception_records_failed_and_still_propagates(hp: Client) -> None:
    with pytest.raises(RuntimeError, match="CUDA out of memory"), hp.track("s", run_key="oom", **SCALE) as run:
        run.log(1e8, 4.0)
        raise RuntimeError("CUDA out of memory")
    stored = by_key(hp)["oom"]
    assert stored["status"] == "failed" and stored["final_loss"] is None
    assert stored["extra"]["error"].startswith("RuntimeError: CUDA out of memory")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_loss_records_diverged(hp: Client, bad: float) -> None:
    with hp.track("s", run_key="nan-final", **SCALE) as run:
        run.final_loss = bad
    with hp.track("s", run_key="nan-curve", **SCALE) as run:
        run.log(1e8, 4.0)
        run.log(2e8, bad)
    runs = by_key(hp)
    assert runs["nan-final"]["status"] == runs["nan-curve"]["status"] == "diverged"
    assert runs["nan-curve"]["final_loss"] is None


def test_no_loss_at_all_is_failed_not_a_crash(hp: Client) -> None:
    with hp.track("s", run_key="silent", **SCALE):
        pass
    assert by_key(hp)["silent"]["status"] == "failed"


def test_an_unreachable_server_warns_with_the_run_instead_of_raising() -> None:
    hp = Client("http://127.0.0.1:9", retries=0, timeout=1.0)  # nothing listens on the discard port
    with pytest.warns(UserWarning, match="resubmit"), hp.track("s", run_key="lost", **SCALE) as run:
        run.final_loss = 3.0
    hp.close()
    assert run.result is None and run.error is not None


def test_hf_and_lightning_callbacks_submit_once(hp: Client) -> None:
    hf = HpscaleTrainerCallback(hp, "s", run_key="hf", tokens_per_step=1e6, **SCALE)
    args = control = SimpleNamespace()
    for step in (10, 20):
        hf.on_log(args, SimpleNamespace(global_step=step, num_input_tokens_seen=0), control, logs={"loss": 3.5})
    hf.on_evaluate(args, SimpleNamespace(global_step=20), control, metrics={"eval_loss": 3.4})
    hf.on_train_end(args, SimpleNamespace(global_step=20), control)
    hf.on_train_end(args, SimpleNamespace(global_step=20), control)  # a second end submits nothing more

    lit = HpscaleLightningCallback(hp, "s", run_key="lit", tokens_per_step=1e6, **SCALE)
    trainer = SimpleNamespace(global_step=5, callback_metrics={"train_loss": 3.9})
    lit.on_train_batch_end(trainer, None, None, None, 0)
    lit.on_exception(trainer, None, ValueError("loss exploded"))
    runs = by_key(hp)
    assert runs["hf"]["status"] == "completed" and runs["hf"]["final_loss"] == 3.4
    assert runs["hf"]["loss_curve"] == [[1e7, 3.5], [2e7, 3.5]]
    assert runs["lit"]["status"] == "failed" and runs["lit"]["loss_curve"] == [[5e6, 3.9]]
    assert len(runs) == 2


def test_client_exclusion_undo_and_pinning(client: TestClient) -> None:
    first = make_study(client)
    with Client("http://testserver", client.headers["Authorization"].split()[1], transport=client._transport) as hp:
        answer = hp.recommend("s", **TARGET)
        run_id = first["ids"][0]
        assert hp.exclude("s", run_id, "bad node")["excluded"] is True
        assert [r["id"] for r in hp.runs("s", excluded=True)] == [run_id]
        assert hp.include("s", run_id)["excluded"] is False
        assert hp.recommend("s", fit_id=answer["fit_id"], **TARGET) == answer
        late = hp.submit("s", [{**SCALE, "final_loss": 3.0, "run_key": "late"}])
        assert hp.delete_submission("s", late["submission_ids"][0]) == 1
        hp.delete_study("s")
        assert hp.studies() == []

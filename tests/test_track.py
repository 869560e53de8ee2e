"""The training-loop hook (`Client.track`), a requeued job's retry, the dry-run check, and the
client's exclusion/undo/pinning calls, against the real app (in-process transport). The HF and
Lightning callbacks built on `track` are tested with the real libraries in test_integrations.py."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from hpscale.client import Client, HpscaleError
from tests.conftest import api_client
from tests.test_undo_pins import TARGET, make_study

SCALE = {"n_params": 1.2e8, "tokens": 2.4e9, "learning_rate": 3e-3, "batch_size": 256, "width": 768, "depth": 12}


@pytest.fixture
def hp(client: TestClient) -> Iterator[Client]:
    """The Python client talking to the test app in-process (admin token), study 's' created."""
    assert client.post("/v1/studies", json={"name": "s"}).status_code == 201
    with api_client(client) as c:
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


def test_client_exclusion_undo_and_pinning(client: TestClient) -> None:
    first = make_study(client)
    with api_client(client) as hp:
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


# --- a requeued job: its retry under the same run_key supersedes a failed attempt ---------------


def test_a_retry_replaces_a_failed_attempt_but_never_a_completed_run(hp: Client, client: TestClient) -> None:
    with pytest.raises(RuntimeError), hp.track("s", run_key="job-7", **SCALE) as first:
        first.log(1e8, 4.0)
        raise RuntimeError("node lost")
    failed = by_key(hp)["job-7"]
    assert failed["status"] == "failed"
    version = hp.study("s")["data_version"]
    with hp.track("s", run_key="job-7", **SCALE) as retry:  # the requeued job completes
        retry.log(2e8, 3.5)
        retry.final_loss = 3.4
    assert retry.result is not None
    assert (retry.result["inserted"], retry.result["replaced"], retry.result["duplicates"]) == (0, 1, 0)
    assert retry.result["ids"] == [failed["id"]]
    stored = hp.runs("s")
    [run] = list(stored)
    assert run["id"] == failed["id"] and run["status"] == "completed" and run["final_loss"] == 3.4
    assert run["loss_curve"] == [[2e8, 3.5]] and "error" not in (run["extra"] or {})
    assert run["submission_id"] == retry.result["submission_id"] != failed["submission_id"]
    assert hp.study("s")["data_version"] > version  # the fits see the change
    [audit] = [a for a in client.get("/v1/studies/s/audit").json()["items"] if a["action"] != "submit"]
    assert audit["action"] == "superseded" and audit["run_id"] == run["id"]
    assert audit["submission_id"] == retry.result["submission_id"]
    assert "job-7" in audit["reason"] and "RuntimeError: node lost" in audit["reason"]
    assert str(failed["submission_id"]) in audit["reason"]

    # A completed run is final: neither another completion nor a failure replaces it.
    for status, loss in (("completed", 9.9), ("diverged", None), ("failed", None)):
        with hp.track("s", run_key="job-7", **SCALE) as again:
            again.final_loss = loss
            again.status = status
        assert again.result is not None and again.result["duplicates"] == 1 and again.result["replaced"] == 0
    assert by_key(hp)["job-7"]["final_loss"] == 3.4
    # audited: the first attempt's and the retry's submissions and the replacement (duplicates change nothing)
    assert [a["action"] for a in client.get("/v1/studies/s/audit").json()["items"]] == [
        "submit",
        "superseded",
        "submit",
    ]


def test_a_failed_retry_keeps_the_first_failure_and_a_divergence_replaces_it(hp: Client) -> None:
    base = {**SCALE, "run_key": "job-8", "status": "failed", "extra": {"error": "first"}}
    first = hp.submit("s", [base])
    again = hp.submit("s", [{**base, "extra": {"error": "second"}}])
    assert again["duplicates"] == 1 and again["replaced"] == 0
    assert by_key(hp)["job-8"]["extra"] == {"error": "first"}
    # In one batch, the first run of a key decides; a diverged retry is an outcome too.
    both = hp.submit("s", [{**SCALE, "run_key": "job-8", "status": "diverged"}, {**base}])
    assert both["replaced"] == 1 and both["duplicates"] == 1 and both["ids"] == first["ids"] * 2
    assert by_key(hp)["job-8"]["status"] == "diverged"


def test_a_dry_run_checks_everything_and_stores_nothing(hp: Client, client: TestClient, tokens: dict) -> None:
    run = {**SCALE, "run_key": "dry", "final_loss": 3.0}
    answer = client.post("/v1/studies/s/runs?dry_run=true", json={"runs": [run, {**run, "run_key": "dry2"}]})
    assert answer.status_code == 200 and answer.json() == {"dry_run": True, "valid": 2}
    assert by_key(hp) == {} and hp.study("s")["run_count"] == 0
    bad = client.post("/v1/studies/s/runs?dry_run=true", json={**run, "learning_rate": 50})
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "learning_rate"
    negative = client.post("/v1/studies/s/runs?dry_run=true", json={**run, "final_loss": -1})
    assert negative.status_code == 422 and "loss_can_be_negative" in negative.json()["error"]["message"]
    assert client.post("/v1/studies/nope/runs?dry_run=true", json=run).status_code == 404
    read_only = {"Authorization": f"Bearer {tokens['read']}"}
    assert client.post("/v1/studies/s/runs?dry_run=true", json=run, headers=read_only).status_code == 403
    # the client's check() says the same before training starts
    hp.check("s", [run])
    with pytest.raises(HpscaleError) as missing:
        hp.check("nope")
    assert missing.value.status_code == 404
    with api_client(client, tokens["read"]) as reader, pytest.raises(HpscaleError) as refused:
        reader.check("s", [run])
    assert refused.value.status_code == 403


def test_track_quotes_the_study_name(hp: Client, client: TestClient) -> None:
    assert client.post("/v1/studies", json={"name": "victim"}).status_code == 201
    for name in ("a/../victim", "victim/runs?x=", "../studies/victim", "victim#"):
        # refused when the block starts (no such study), before any training
        with pytest.raises(HpscaleError) as refused, hp.track(name, **SCALE):
            pytest.fail("the block ran")
        assert refused.value.status_code == 404, name
        with pytest.warns(UserWarning, match="not submitted"), hp.track(name, check=False, **SCALE) as run:
            run.final_loss = 3.0
        assert isinstance(run.error, HpscaleError) and run.error.status_code == 404, name
    assert hp.study("victim")["run_count"] == 0


def test_a_misspelt_field_is_refused_before_training(hp: Client) -> None:
    with pytest.raises(TypeError, match="did you mean 'learning_rate'"):
        hp.track("s", learnig_rate=3e-3)
    with pytest.raises(TypeError, match="did you mean 'weight_decay'"):
        hp.track("s", weight_decy=0.1)
    run = hp.track("s", warmup=100, beta2=0.95)  # other names still go to extra
    assert run.extra == {"warmup": 100, "beta2": 0.95}


def test_a_server_that_never_answers_costs_the_deadline_then_the_run_is_saved(tmp_path, client: TestClient) -> None:
    import socket
    import time

    from hpscale.cli import main as cli

    with socket.socket() as silent:  # accepts connections (the backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        hp = Client(f"http://127.0.0.1:{port}", "t", submit_deadline=1.5, spool_dir=tmp_path / "unsent")
        started = time.monotonic()
        with pytest.warns(UserWarning, match="hpscale submit") as warned, hp.track("s", run_key="late", **SCALE) as run:
            run.final_loss = 3.25
        elapsed = time.monotonic() - started
        hp.close()
    assert elapsed < 15  # 1.5 s deadline; generous for a loaded machine, far below 5 tries × 120 s
    assert run.saved_to is not None and run.saved_to.parent == tmp_path / "unsent"
    # the check at the start warned that the server could not be reached; the end says where the run went
    assert "cannot reach" in str(warned[0].message)
    assert any(str(run.saved_to) in str(w.message) for w in warned)
    # `hpscale submit` posts the saved file (here into the in-process app through its URL)
    assert client.post("/v1/studies", json={"name": "s"}).status_code == 201
    saved = __import__("json").loads(run.saved_to.read_text())
    assert saved["study"] == "s" and saved["runs"][0]["final_loss"] == 3.25
    with api_client(client) as api:
        assert api.submit(saved["study"], saved["runs"])["inserted"] == 1
    assert cli(["submit", str(tmp_path / "missing.json"), "--url", "http://127.0.0.1:9"]) == 2

"""Fit and recommendation endpoints on the shared real data, over HTTP."""

from __future__ import annotations

import math
import threading

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from fitting import baselines as published
from hpscale.cli import main
from store.models import Fit
from tests.conftest import STEPLAW_CSV, bearer, count_rows, steplaw_import_argv
from tests.test_service_limits import assert_minimises_loss_on_the_budget

TARGET_7B = {"n_params": 7e9, "tokens": 1.4e12, "width": 4096, "depth": 32}


@pytest.fixture
def steplaw(client: TestClient, database_url: str) -> TestClient:
    """The client, with the Step Law sweep imported as study 'steplaw' (seq_len 2048)."""
    assert main(steplaw_import_argv(database_url)) == 0
    return client


def one_more_run(run_key: str) -> dict[str, object]:
    """A plausible extra run at the smallest Step Law scale (changes the study's data version)."""
    return {
        "n_params": 2.1e8,
        "tokens": 4e9,
        "width": 960,
        "depth": 7,
        "learning_rate": 1e-3,
        "batch_size": 128,
        "final_loss": 3.0,
        "run_key": run_key,
    }


def assert_interval(interval: dict) -> None:
    assert interval["low"] <= interval["value"] <= interval["high"], interval
    assert all(math.isfinite(interval[k]) for k in ("low", "value", "high"))


@pytest.mark.slow
def test_fit_object_follows_the_contract(steplaw: TestClient) -> None:
    response = steplaw.post("/v1/studies/steplaw/fits", json={"bootstrap": 50})
    assert response.status_code == 201, response.text
    fit = response.json()
    assert fit["n_runs"] == 1746 and isinstance(fit["data_version"], str)
    assert len(fit["optima"]) == 15
    for optimum in fit["optima"]:
        assert set(optimum["scale"]) >= {"n_params", "tokens", "width", "depth"}
        assert_interval(optimum["learning_rate"])
        assert_interval(optimum["batch_size"])
        assert optimum["n_runs"] > 0 and math.isfinite(optimum["loss"])
    for name in ("learning_rate", "batch_size"):
        law = fit["laws"][name]
        assert law["form"].startswith("log") and law["variables"]
        assert set(law["exponents"]) == set(law["variables"])
        for exponent in law["exponents"].values():
            assert_interval(exponent)
    assert "weight_decay" not in fit["laws"]  # never varied in this sweep…
    assert any("weight" in w for w in fit["warnings"])  # …and the fit says so
    assert fit["loss_law"] is None and any("irreducible loss" in w for w in fit["warnings"])
    assert steplaw.get("/v1/studies/steplaw/fits/latest").json()["id"] == fit["id"]
    assert (
        steplaw.get(f"/v1/studies/steplaw/fits/{fit['id']}").json()
        == steplaw.get("/v1/studies/steplaw/fits/latest").json()
    )
    assert steplaw.get("/v1/studies/steplaw").json()["latest_fit_id"] == fit["id"]


@pytest.mark.slow
def test_fit_is_reused_until_the_data_change(steplaw: TestClient, engine: Engine) -> None:
    first = steplaw.post("/v1/studies/steplaw/fits", json={"bootstrap": 20}).json()
    again = steplaw.post("/v1/studies/steplaw/fits", json={"bootstrap": 20}).json()
    assert again["id"] == first["id"] and count_rows(engine, Fit) == 1
    run = one_more_run("extra-run")
    assert steplaw.post("/v1/studies/steplaw/runs", json=run).status_code == 201
    third = steplaw.post("/v1/studies/steplaw/fits", json={"bootstrap": 20}).json()
    assert third["id"] != first["id"] and third["data_version"] != first["data_version"]
    assert third["n_runs"] == 1747


def test_fit_errors(client: TestClient, tokens: dict[str, str]) -> None:
    assert client.post("/v1/studies/none/fits").status_code == 404
    client.post("/v1/studies", json={"name": "empty"})
    response = client.post("/v1/studies/empty/fits")
    assert response.status_code == 409 and response.json()["error"]["code"] == "insufficient_data"
    assert client.get("/v1/studies/empty/fits/latest").status_code == 404
    assert client.get("/v1/studies/empty/fits/99").status_code == 404
    assert client.get("/v1/studies/empty/fits/abc").status_code == 422
    assert client.post("/v1/studies/empty/fits", json={"bootstrap": -1}).status_code == 422
    assert client.post("/v1/studies/empty/fits", headers=bearer(tokens["read"])).status_code == 403


@pytest.mark.slow
def test_concurrent_recommendations_on_stale_data_fit_once(steplaw: TestClient, engine: Engine) -> None:
    barrier = threading.Barrier(20)
    statuses: list[int] = []
    fit_ids: set[int] = set()

    def ask() -> None:
        barrier.wait()
        response = steplaw.get("/v1/studies/steplaw/recommendation", params=TARGET_7B)
        statuses.append(response.status_code)
        if response.status_code == 200:
            fit_ids.add(response.json()["fit_id"])

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 20
    assert count_rows(engine, Fit) == 1 and len(fit_ids) == 1


def recommend(client: TestClient, study: str = "steplaw", **params: object):
    return client.get(f"/v1/studies/{study}/recommendation", params={**TARGET_7B, **params})


@pytest.mark.slow
def test_recommendation_at_7b_on_step_law(steplaw: TestClient) -> None:
    response = recommend(steplaw)
    assert response.status_code == 200, response.text
    rec = response.json()
    for field in ("learning_rate", "batch_size"):
        assert_interval(rec[field])
    assert rec["weight_decay"] is None and rec["per_layer"] is None
    # These sweeps never show the loss levelling off: no loss law, so no predicted loss.
    assert rec["predicted_loss"] is None
    assert rec["extrapolation"]["level"] in ("extrapolation", "far") and rec["extrapolation"]["factor"] > 1
    assert any("outside" in w for w in rec["warnings"])
    published_lr = published.step_law_lr(7e9, 1.4e12)
    deepseek_lr = rec["baselines"]["deepseek_llm"]["learning_rate"]
    # The two published laws disagree by 2× at 7B (Step Law 9.4e-4, DeepSeek 4.4e-4); the
    # study's own sizes make the size exponent a little steeper than Step Law's -0.71, so the
    # answer lies between them and within 2.5× of either.
    lr = rec["learning_rate"]["value"]
    assert min(published_lr, deepseek_lr) / 1.25 <= lr <= max(published_lr, deepseek_lr) * 1.25
    assert published_lr / 2.5 <= lr <= published_lr * 2.5 and deepseek_lr / 2.5 <= lr <= deepseek_lr * 2.5
    assert rec["batch_tokens"] == pytest.approx(rec["batch_size"]["value"] * 2048)
    step = rec["baselines"]["step_law"]
    assert step["available"] and step["learning_rate"] == pytest.approx(published_lr)
    assert rec["baselines"]["deepseek_llm"]["available"]
    assert rec["fit_id"] == steplaw.get("/v1/studies/steplaw").json()["latest_fit_id"]


@pytest.mark.slow
def test_learning_rate_follows_the_lr_batch_valley(steplaw: TestClient) -> None:
    """In the Step Law sweeps the best lr grows with the batch: conditioning must follow."""
    lrs = [recommend(steplaw, batch_size=b).json()["learning_rate"]["value"] for b in (128, 512, 2048)]
    assert lrs[0] < lrs[1] < lrs[2]
    free = recommend(steplaw).json()
    at_free_batch = recommend(steplaw, batch_size=free["batch_size"]["value"]).json()
    assert at_free_batch["learning_rate"]["value"] == pytest.approx(free["learning_rate"]["value"], rel=0.02)


@pytest.mark.slow
def test_batch_multiple_rounds_and_reconditions(steplaw: TestClient) -> None:
    free = recommend(steplaw).json()
    rounded = recommend(steplaw, batch_multiple=384).json()
    batch = rounded["batch_size"]["value"]
    assert batch % 384 == 0 and abs(math.log(batch / free["batch_size"]["value"])) <= math.log(2)
    assert_interval(rounded["batch_size"])
    conditioned = recommend(steplaw, batch_size=batch).json()
    assert rounded["learning_rate"]["value"] == pytest.approx(conditioned["learning_rate"]["value"], rel=1e-9)
    assert any("rounded" in w for w in rounded["warnings"])


@pytest.mark.slow
def test_recommendation_errors(steplaw: TestClient, client: TestClient) -> None:
    response = steplaw.get("/v1/studies/steplaw/recommendation", params={"n_params": 7e9, "width": 4096})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "tokens"
    for bad in ({"n_params": -1}, {"n_params": "lots"}, {"batch_size": 0}, {"batch_multiple": 0}):
        response = recommend(steplaw, **bad)
        assert response.status_code == 422, (bad, response.text)
    assert recommend(steplaw, compute=1e22).status_code == 422  # with n_params and tokens too
    assert client.get("/v1/studies/nope/recommendation", params=TARGET_7B).status_code == 404
    client.post("/v1/studies", json={"name": "flat"})
    runs = [
        {
            "n_params": n,
            "tokens": 2e10,
            "learning_rate": 1e-3,
            "batch_size": 64,
            "final_loss": 3 - n / 1e9,
            "run_key": str(n),
        }
        for n in (1e8, 2e8, 4e8)
    ]
    client.post("/v1/studies/flat/runs", json={"runs": runs})
    response = client.get("/v1/studies/flat/recommendation", params=TARGET_7B)
    assert response.status_code == 409, response.text[:800]
    assert response.json()["error"]["code"] == "insufficient_data"
    assert "learning rate" in response.json()["error"]["message"]


@pytest.mark.slow
def test_suggestions_plan_the_next_sweep(steplaw: TestClient) -> None:
    response = steplaw.get("/v1/studies/steplaw/suggestions", params={"count": 3, **TARGET_7B})
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert len(items) == 3
    largest_proxy = max(
        6 * o["scale"]["n_params"] * o["scale"]["tokens"]
        for o in steplaw.get("/v1/studies/steplaw/fits/latest").json()["optima"]
    )
    shrinks = [item["cumulative_shrink"]["learning_rate"] for item in items]
    assert 0 < shrinks[0] <= shrinks[1] <= shrinks[2] < 1  # each adds information
    for item in items:
        assert item["reason"].endswith(".") and "learning rate" in item["reason"]
        assert item["flops"] <= 16 * largest_proxy * 1.01 or item["flops"] <= 0.01 * 6 * 7e9 * 1.4e12
        assert item["sweep"]["learning_rate"][0] < item["learning_rate"] < item["sweep"]["learning_rate"][-1]
    bad = steplaw.get("/v1/studies/steplaw/suggestions", params={"count": 0, **TARGET_7B})
    assert bad.status_code == 422
    missing = steplaw.get("/v1/studies/steplaw/suggestions", params={"n_params": 7e9})
    assert missing.status_code == 422 and missing.json()["error"]["details"][0]["field"] == "tokens"


def test_mup_study_returns_per_layer_multipliers(client: TestClient) -> None:
    """A μP sweep over width (lr* constant, as μP promises): per-layer rules at a 16× wider target."""
    client.post("/v1/studies", json={"name": "mup", "parameterization": "mup", "base_width": 256, "base_depth": 8})
    rng = __import__("random").Random(3)
    runs = []
    for width in (256, 512, 1024):
        n = 12 * 8 * width**2
        for tokens in (20 * n, 60 * n):
            for k in range(9):
                lr = 0.01 * 2 ** (k - 4 + rng.uniform(-0.3, 0.3))
                loss = (1.8 + 300 / n**0.3 + 300 / tokens**0.3) * (1 + 0.02 * math.log(lr / 0.01) ** 2)
                runs.append(
                    {
                        "run_key": f"{width}-{tokens}-{k}",
                        "n_params": n,
                        "tokens": tokens,
                        "width": width,
                        "depth": 8,
                        "learning_rate": lr,
                        "batch_size": 256,
                        "final_loss": loss,
                    }
                )
    assert client.post("/v1/studies/mup/runs", json={"runs": runs}).status_code == 201
    response = client.get(
        "/v1/studies/mup/recommendation",
        params={"n_params": 12 * 8 * 4096**2, "tokens": 20 * 12 * 8 * 4096**2, "width": 4096, "depth": 8},
    )
    assert response.status_code == 200, response.text
    rec = response.json()
    assert rec["learning_rate"]["value"] == pytest.approx(0.01, rel=0.3)
    layers = rec["per_layer"]
    assert layers["width_multiplier"] == 16
    m = 16.0
    hidden, output, vector = (layers["classes"][c] for c in ("hidden", "output", "vector_like"))
    # RULES.md §1, Adam: hidden LR η/m and init σ/√m; output forward 1/m; vector-like unchanged.
    assert hidden["lr_multiplier"] == pytest.approx(1 / m)
    assert hidden["init_std_multiplier"] == pytest.approx(m**-0.5)
    assert output["forward_multiplier"] == pytest.approx(1 / m) and output["lr_multiplier"] == 1
    assert vector["lr_multiplier"] == 1 and vector["init_std_multiplier"] == 1
    assert hidden["learning_rate"] == pytest.approx(rec["learning_rate"]["value"] / m)


def test_chinchilla_study_gives_loss_law_and_compute_optimal(client: TestClient) -> None:
    import csv

    with (STEPLAW_CSV.parent / "chinchilla_epoch.csv").open() as handle:
        points = [(float(r["Model Size"]), float(r["Training FLOP"]), float(r["loss"])) for r in csv.DictReader(handle)]
    points = sorted(points, key=lambda p: p[2])[:-5]  # Epoch drops the 5 highest-loss points
    client.post("/v1/studies", json={"name": "chinchilla"})
    runs = [
        {
            "run_key": f"c{i}",
            "n_params": n,
            "tokens": c / (6 * n),
            "learning_rate": 2e-4,
            "batch_size": 512,
            "final_loss": loss,
        }
        for i, (n, c, loss) in enumerate(points)
    ]
    assert client.post("/v1/studies/chinchilla/runs", json={"runs": runs}).status_code == 201
    fit = client.post("/v1/studies/chinchilla/fits").json()
    params = fit["loss_law"]["params"]
    assert fit["loss_law"]["form"] == "L = E + A/N^alpha + B/D^beta"
    assert params["alpha"]["value"] == pytest.approx(0.3478, abs=0.01)
    assert params["beta"]["value"] == pytest.approx(0.3658, abs=0.01)
    assert params["E"]["value"] == pytest.approx(1.817, abs=0.03)
    response = client.get("/v1/studies/chinchilla/compute-optimal", params={"compute": 5.76e23})
    assert response.status_code == 200, response.text
    allocation = response.json()
    n_opt, d_opt = allocation["n_params"]["value"], allocation["tokens"]["value"]
    assert_minimises_loss_on_the_budget(allocation["loss_law"]["params"], n_opt, d_opt)
    assert 2e10 < n_opt < 2e11 and 5 < d_opt / n_opt < 60
    assert_interval(allocation["predicted_loss"])
    # Intervals, not raw bootstrap samples (those only on request).
    assert "bootstrap_samples" not in allocation["loss_law"] and len(response.content) < 5000
    with_samples = client.get("/v1/studies/chinchilla/compute-optimal", params={"compute": 5.76e23, "samples": True})
    assert len(with_samples.json()["loss_law"]["bootstrap_samples"]["alpha"]) > 10
    # The learning rate was never swept here: the recommendation answers from the loss law alone,
    # the hyperparameters null and each explained (issue 21; it used to be a 409).
    response = client.get("/v1/studies/chinchilla/recommendation", params={"compute": 5.76e23})
    assert response.status_code == 200, response.text[:500]
    answer = response.json()
    assert answer["learning_rate"] is None and answer["predicted_loss"]["value"] == pytest.approx(
        allocation["predicted_loss"]["value"]
    )
    assert any(w.startswith("learning_rate is null: no learning-rate law") for w in answer["warnings"])
    assert client.get("/v1/studies/chinchilla/compute-optimal", params={"compute": -1}).status_code == 422


@pytest.mark.slow
def test_repeated_recommendations_never_outlive_a_commit(
    steplaw: TestClient, engine: Engine, tokens: dict[str, str]
) -> None:
    """Answers are reused for identical requests, but a new run, a revoked token or other
    credentials always go through the full stack (SQLite: until the next commit only)."""
    from store import queries
    from store.db import run_in_transaction

    reader = bearer(tokens["read"])
    first = steplaw.get("/v1/studies/steplaw/recommendation", params=TARGET_7B, headers=reader)
    again = steplaw.get("/v1/studies/steplaw/recommendation", params=TARGET_7B, headers=reader)
    assert first.status_code == again.status_code == 200 and first.content == again.content
    stranger = steplaw.get("/v1/studies/steplaw/recommendation", params=TARGET_7B, headers=bearer("hps_nope"))
    assert stranger.status_code == 401
    run = one_more_run("late-run")
    assert steplaw.post("/v1/studies/steplaw/runs", json=run).status_code == 201
    # At once from the previous fit, now saying that a refit is running (issue 11) ...
    after = steplaw.get("/v1/studies/steplaw/recommendation", params=TARGET_7B, headers=reader).json()
    assert after["fit_id"] == first.json()["fit_id"]
    assert any("a refit is running" in w for w in after["warnings"])
    # ... and, asked for a fit of the current runs, from that one.
    params = {**TARGET_7B, "fresh": "true"}
    fresh = steplaw.get("/v1/studies/steplaw/recommendation", params=params, headers=reader).json()
    assert fresh["data_version"] != first.json()["data_version"]
    assert fresh["data_version"] == steplaw.get("/v1/studies/steplaw").json()["data_version"]
    run_in_transaction(engine, lambda conn: queries.revoke_token(conn, "test-read"))
    revoked = steplaw.get("/v1/studies/steplaw/recommendation", params=TARGET_7B, headers=reader)
    assert revoked.status_code == 401

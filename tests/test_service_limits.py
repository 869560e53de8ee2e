"""Contract 1.1 limits (one set for submission and targets), study priors and negative
losses, unknown query parameters, the stale-fit takeover and a `compute=` recommendation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from hpscale.cli import main
from store.models import Fit
from tests.conftest import assert_error, count_rows, make_run

# --- run submission ----------------------------------------------------------------------

OUT_OF_LIMITS = [
    ("final_loss", -1.5),
    ("final_loss", 0),
    ("n_params", 1e300),
    ("n_params", 2e15),
    ("tokens", 2e16),
    ("width", 2_000_000),
    ("depth", 200_000),
    ("batch_size", 200_000_000),
    ("seq_len", 20_000_000),
    ("learning_rate", 11),
    ("learning_rate", 0),
    ("weight_decay", 101),
    ("weight_decay", -0.1),
]


@pytest.mark.parametrize("field, value", OUT_OF_LIMITS, ids=[f"{f}={v}" for f, v in OUT_OF_LIMITS])
def test_a_run_outside_the_limits_is_refused_naming_field_and_index(
    client: TestClient, engine: Engine, field: str, value: float
) -> None:
    assert client.post("/v1/studies", json={"name": "limits"}).status_code == 201
    error = assert_error(
        client.post("/v1/studies/limits/runs", json=make_run(0, **{field: value})), 422, "validation_error"
    )
    assert [d["field"] for d in error["details"]] == [field] and error["details"][0]["index"] is None
    batch = {"runs": [make_run(0), make_run(1, **{field: value}), make_run(2)]}
    error = assert_error(client.post("/v1/studies/limits/runs", json=batch), 422, "validation_error")
    assert [(d["field"], d["index"]) for d in error["details"]] == [(field, 1)]
    assert field in error["message"]
    assert count_rows(engine) == 0


def test_values_at_the_limits_are_accepted(client: TestClient) -> None:
    client.post("/v1/studies", json={"name": "edge"})
    run = make_run(
        0,
        n_params=1e15,
        tokens=1e16,
        width=1_000_000,
        depth=100_000,
        batch_size=100_000_000,
        seq_len=10_000_000,
        learning_rate=10,
        weight_decay=100,
        final_loss=1e-9,
    )
    assert client.post("/v1/studies/edge/runs", json=run).status_code == 201


def test_a_study_with_loss_can_be_negative_accepts_negative_losses(client: TestClient, engine: Engine) -> None:
    response = client.post("/v1/studies", json={"name": "negative", "loss_can_be_negative": True, "priors": "none"})
    assert response.status_code == 201, response.text
    study = response.json()
    assert study["loss_can_be_negative"] is True and study["priors"] == "none"
    response = client.post(
        "/v1/studies/negative/runs", json={"runs": [make_run(0, final_loss=-1.5), make_run(1, final_loss=0)]}
    )
    assert response.status_code == 201, response.text
    assert [r["final_loss"] for r in client.get("/v1/studies/negative/runs").json()["items"]] == [-1.5, 0]
    # Other limits still hold there.
    assert_error(client.post("/v1/studies/negative/runs", json=make_run(2, learning_rate=11)), 422, "validation_error")
    assert count_rows(engine) == 2


def test_study_defaults_and_refused_values(client: TestClient) -> None:
    study = client.post("/v1/studies", json={"name": "plain"}).json()
    assert study["priors"] == "published" and study["loss_can_be_negative"] is False
    assert client.get("/v1/studies/plain").json()["priors"] == "published"
    assert client.get("/v1/studies").json()["items"][0]["loss_can_be_negative"] is False
    error = assert_error(client.post("/v1/studies", json={"name": "bad", "priors": "mine"}), 422, "validation_error")
    assert error["details"][0]["field"] == "priors"


def test_cli_import_applies_the_same_limits(database_url: str, engine: Engine, tmp_path: Path, capsys) -> None:
    path = tmp_path / "runs.csv"
    path.write_text(
        "n_params,tokens,learning_rate,batch_size,final_loss\n"
        "1e8,1e9,0.001,32,3.1\n"
        "1e8,1e9,0.001,32,-1.5\n"
        "1e300,1e9,11,32,3.0\n"
    )
    assert main(["import", str(path), "--study", "s", "--create", "--database-url", database_url, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "line 3: final_loss" in err and "line 4: n_params" in err and "line 4: learning_rate" in err
    assert count_rows(engine) == 0


# --- query parameters ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/studies",
        "/v1/studies/q",
        "/v1/studies/q/runs",
        "/v1/studies/q/recommendation",
        "/v1/studies/q/fits/latest",
        "/v1/studies/q/suggestions",
    ],
)
def test_an_unknown_query_parameter_is_refused_naming_it(client: TestClient, engine: Engine, path: str) -> None:
    client.post("/v1/studies", json={"name": "q"})
    error = assert_error(client.get(path, params={"batch_multple": "64"}), 422, "validation_error")
    assert [d["field"] for d in error["details"]] == ["batch_multple"]
    assert "batch_multple" in error["message"]
    assert count_rows(engine, Fit) == 0  # refused before any fit was made


TARGETS_OUT_OF_LIMITS = [
    ("n_params", 1e300),
    ("n_params", 2e15),
    ("tokens", 2e16),
    ("width", 2e6),
    ("depth", 2e5),
    ("batch_size", 2e8),
    ("seq_len", 20_000_000),
    ("n_params", 0.5),
    ("compute", 1e40),
    ("learning_rate", 11),
]


@pytest.mark.parametrize("field, value", TARGETS_OUT_OF_LIMITS, ids=[f"{f}={v}" for f, v in TARGETS_OUT_OF_LIMITS])
def test_a_target_outside_the_limits_is_refused_naming_it(
    client: TestClient, engine: Engine, field: str, value: float
) -> None:
    client.post("/v1/studies", json={"name": "t"})
    for endpoint in ("recommendation", "suggestions"):
        if endpoint == "suggestions" and field in ("batch_size", "seq_len", "compute"):
            continue
        params = {"n_params": 1e9, "tokens": 2e10, field: value}
        if field == "compute":
            params = {"compute": value}
        error = assert_error(client.get(f"/v1/studies/t/{endpoint}", params=params), 422, "validation_error")
        assert [d["field"] for d in error["details"]] == [field], (endpoint, error)
    assert count_rows(engine, Fit) == 0  # nothing fitted for a refused target


# --- fits: the stale-fit takeover and compute= --------------------------------------------


def loss_law_sweep() -> list[dict[str, float | str]]:
    """Runs drawn from a known loss surface: L = E + A/N^a + B/D^b plus a bowl in log lr
    around lr*(N) = 3e-3·(N/1e8)^-0.3; four N by three D, seven learning rates each."""
    runs = []
    for n in (2e7, 6e7, 2e8, 6e8):
        for tokens_per_param in (10, 30, 100):
            d = n * tokens_per_param
            lr_opt = 3e-3 * (n / 1e8) ** -0.3
            floor = 1.8 + 400 / n**0.34 + 410 / d**0.28
            for step in range(-3, 4):
                lr = lr_opt * 2.0**step
                runs.append(
                    {
                        "run_key": f"n{n:g}-d{d:g}-lr{step}",
                        "n_params": n,
                        "tokens": d,
                        "learning_rate": lr,
                        "batch_size": 256,
                        "final_loss": floor + 0.02 * math.log(lr / lr_opt) ** 2,
                    }
                )
    return runs


def assert_minimises_loss_on_the_budget(params: dict, n: float, d: float) -> None:
    """(n, d) gives a lower loss law value than moving along its compute budget (N·k, D/k)."""
    p = {name: params[name]["value"] for name in ("E", "A", "B", "alpha", "beta")}

    def loss(n_: float, d_: float) -> float:
        return p["E"] + p["A"] / n_ ** p["alpha"] + p["B"] / d_ ** p["beta"]

    for k in (1.25, 2.0, 4.0):
        assert loss(n, d) < loss(n * k, d / k) and loss(n, d) < loss(n / k, d * k), k


@pytest.fixture
def loss_law_study(client: TestClient) -> TestClient:
    assert client.post("/v1/studies", json={"name": "surface", "seq_len": 2048}).status_code == 201
    assert client.post("/v1/studies/surface/runs", json={"runs": loss_law_sweep()}).status_code == 201
    return client


def test_a_recommendation_for_a_compute_budget(loss_law_study: TestClient) -> None:
    response = loss_law_study.get("/v1/studies/surface/recommendation", params={"compute": 1e21})
    assert response.status_code == 200, response.text
    rec = response.json()
    n, d = rec["target"]["n_params"], rec["target"]["tokens"]
    assert rec["compute_optimal"]["n_params"]["value"] == pytest.approx(n)
    # The allocation minimises the fitted loss law on the budget's curve 6·N·D = 1e21.
    law = loss_law_study.get(f"/v1/studies/surface/fits/{rec['fit_id']}").json()["loss_law"]["params"]
    assert_minimises_loss_on_the_budget(law, n, d)
    lr = rec["learning_rate"]
    assert 0 < lr["low"] <= lr["value"] <= lr["high"]
    # The surface's lr*(N) at the allocated N, within the interval's spread.
    assert lr["value"] == pytest.approx(3e-3 * (n / 1e8) ** -0.3, rel=0.5)
    assert rec["predicted_loss"] is not None and rec["fit_id"] >= 1


def test_a_fit_left_running_by_a_dead_process_is_taken_over(loss_law_study: TestClient, engine: Engine) -> None:
    from tests.test_fit_availability import dead_claim

    version = int(loss_law_study.get("/v1/studies/surface").json()["data_version"])
    study_id = loss_law_study.get("/v1/studies/surface").json()["id"]
    fit_id = dead_claim(engine, study_id, version, 40)
    response = loss_law_study.post("/v1/studies/surface/fits", json={"bootstrap": 40})
    assert response.status_code == 201, response.text
    fit = response.json()
    assert fit["id"] == fit_id and fit["created_by"] == "test-admin" and fit["data_version"] == str(version)
    assert count_rows(engine, Fit) == 1

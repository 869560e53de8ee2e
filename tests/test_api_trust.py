"""Issue 10 through the HTTP contract: an absurd run is named and harmless, laws carry their
priors and forward error, and the recommendation explains what it left out."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from hpscale.cli import main
from tests.conftest import bearer, steplaw_import_argv

TARGET_7B = {"n_params": 7e9, "tokens": 1.4e12, "width": 4096, "depth": 32}


@pytest.fixture
def steplaw(client: TestClient, database_url: str) -> TestClient:
    assert main(steplaw_import_argv(database_url)) == 0
    return client


@pytest.mark.slow
def test_absurd_run_is_named_and_moves_nothing_over_http(steplaw: TestClient, tokens: dict[str, str]) -> None:
    write = bearer(tokens["write"])
    before = steplaw.get("/v1/studies/steplaw/recommendation", params=TARGET_7B, headers=write).json()
    absurd = {
        "run_key": "absurd-loss",
        "n_params": 214663680,
        "tokens": 4e9,
        "width": 960,
        "depth": 7,
        "learning_rate": 0.00390625,
        "batch_size": 352,
        "final_loss": 0.5,
    }
    posted = steplaw.post("/v1/studies/steplaw/runs", json=absurd, headers=write)
    assert posted.status_code == 201, posted.text
    run_id = posted.json()["ids"][0]

    fit = steplaw.post("/v1/studies/steplaw/fits", json={"bootstrap": 50}, headers=write).json()
    assert {"run_id": run_id, "run_key": "absurd-loss"}.items() <= fit["outliers"][0].items()
    assert fit["outliers"][0]["reason"]
    assert any("absurd-loss" in w for w in fit["warnings"])
    for law in fit["laws"].values():
        assert law["forward_error"] is None or law["forward_error"] > 0
        assert law["variables"] == ["n_params", "tokens", "aspect"]
        assert all("prior" in e and "prior_source" in e for e in law["exponents"].values())
    e = fit["laws"]["learning_rate"]["exponents"]["n_params"]
    assert (e["prior"]["mean"], e["prior"]["sd"], e["prior"]["tail_weight"]) == (-0.71, 0.35, 0.2)
    assert e["followed"] in ("data", "published prior") and "conflict" in e

    after = steplaw.get("/v1/studies/steplaw/recommendation", params={**TARGET_7B, "fresh": "true"}, headers=write)
    after = (
        after.json()
        if after.status_code == 200
        else steplaw.get("/v1/studies/steplaw/recommendation", params=TARGET_7B, headers=write).json()
    )
    assert after["fit_id"] != before["fit_id"]
    for field in ("learning_rate", "batch_size"):
        assert abs(after[field]["value"] / before[field]["value"] - 1) < 0.02, field
    assert any("absurd-loss" in w for w in after["warnings"])
    # Every null field says why (contract 1.1).
    for field in ("weight_decay", "predicted_loss", "per_layer"):
        assert after[field] is None
        assert any(w.startswith(f"{field} is null") for w in after["warnings"]), field

"""Contract 1.2 over HTTP (SQLite and PostgreSQL): the transfer check, the expected loss penalty and the
loss-tolerance batch of a recommendation, budget-aware suggestions, and their 4xx refusals."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fitting.runs import RunTable
from fitting.synthetic import random_study
from tests.conftest import api_client, assert_error


def runs_of(table: RunTable, prefix: str) -> list[dict[str, Any]]:
    out = []
    for i in range(len(table)):
        run: dict[str, Any] = {
            "run_key": f"{prefix}-{i}",
            "n_params": float(table.n_params[i]),
            "tokens": float(table.tokens[i]),
            "width": round(float(table.width[i])),
            "depth": round(float(table.depth[i])),
            "seq_len": int(table.seq_len[i]),
            "learning_rate": float(table.learning_rate[i]),
            "batch_size": round(float(table.batch_size[i])),
            "weight_decay": float(table.weight_decay[i]),
            "status": str(table.status[i]),
        }
        if math.isfinite(table.final_loss[i]):
            run["final_loss"] = float(table.final_loss[i])
        out.append(run)
    return out


@pytest.fixture
def studies(client: TestClient) -> TestClient:
    """An SP study with LR × batch × wd grids and a μP study whose batch never varies."""
    for name, kind, options in (("sp", "sp", {}), ("mu", "mup", {"parameterization": "mup", "base_width": 256})):
        table, _ = random_study(1, kind=kind, outliers=False)
        assert client.post("/v1/studies", json={"name": name, **options}).status_code == 201
        r = client.post(f"/v1/studies/{name}/runs", json={"runs": runs_of(table, name)})
        assert r.status_code == 201, r.text
        assert client.post(f"/v1/studies/{name}/fits", json={"bootstrap": 20}).status_code == 201
    return client


SP_TARGET = {"n_params": 2e9, "tokens": 4e10, "width": 2048, "depth": 24}


def test_recommendation_carries_penalties_and_the_tolerance_batch(studies: TestClient) -> None:
    r = studies.get("/v1/studies/sp/recommendation", params={**SP_TARGET, "max_loss_increase": 0.005, "seq_len": 1024})
    assert r.status_code == 200, r.text
    rec = r.json()
    pen = rec["expected_loss_penalty"]
    assert 0 <= pen["low"] <= pen["value"] <= pen["high"]
    assert rec["penalty_model"]["form"].startswith("E[exp(f(")
    assert rec["baselines"]["largest_proxy"]["expected_loss_penalty"]["value"] > pen["value"]
    tb = rec["tolerance_batch"]
    assert tb["available"] and tb["batch_size"]["value"] > rec["batch_size"]["value"]
    assert tb["steps"]["value"] == pytest.approx(SP_TARGET["tokens"] / (tb["batch_size"]["value"] * 1024))
    # Without the parameter the answer has no tolerance batch (and is cached separately).
    plain = studies.get("/v1/studies/sp/recommendation", params=SP_TARGET).json()
    assert "tolerance_batch" not in plain and plain["expected_loss_penalty"] == pen


@pytest.mark.parametrize("bad", ["0", "-0.01", "0.5", "nan"])
def test_max_loss_increase_outside_what_the_bowls_describe_is_a_422_naming_it(studies: TestClient, bad: str) -> None:
    r = studies.get("/v1/studies/sp/recommendation", params={**SP_TARGET, "max_loss_increase": bad})
    error = assert_error(r, 422, "validation_error")
    assert "max_loss_increase" in str(error)


def test_transfer_check_over_http_and_the_client(studies: TestClient) -> None:
    r = studies.get("/v1/studies/mu/transfer-check")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["parameterization"] == "mup" and body["tolerance"] == 0.1 and body["fit_id"] >= 1
    width = [c for c in body["checks"] if c["axis"] == "width"]
    assert width and all(c["verdict"] in ("transfers", "drifts", "undetermined") for c in width)
    e = width[0]["exponent"]
    assert e["low"] <= e["value"] <= e["high"] and width[0]["model"]
    assert body["reuse_base"] is None  # no target named
    with api_client(studies) as hp:
        got = hp.transfer_check("mu", n_params=1.2e9, tokens=2.4e10, width=4096, depth=8, tolerance=0.2)
    assert got["tolerance"] == 0.2
    reuse = got["reuse_base"]
    assert reuse["available"] and reuse["chosen_as"].startswith("the proxy nearest the study's base_width")
    assert reuse["base_scale"]["width"] == 256


def test_transfer_check_refusals(studies: TestClient) -> None:
    assert_error(studies.get("/v1/studies/mu/transfer-check", params={"tolerance": 0}), 422, "validation_error")
    assert_error(studies.get("/v1/studies/mu/transfer-check", params={"n_params": 1e9}), 422, "validation_error")
    assert_error(studies.get("/v1/studies/mu/transfer-check", params={"widht": 4096}), 422, "validation_error")
    assert_error(studies.get("/v1/studies/nope/transfer-check"), 404, "not_found")
    read = studies.get("/v1/studies/mu/transfer-check", headers={"Authorization": "Bearer nope"})
    assert_error(read, 401, "unauthorized")


def test_budget_suggestions(studies: TestClient) -> None:
    q = {**SP_TARGET, "budget_flops": 3e18, "max_n_params": 3e8}
    r = studies.get("/v1/studies/sp/suggestions", params=q)
    assert r.status_code == 200, r.text
    body = r.json()
    items, budget = body["items"], body["budget"]
    assert items and sum(it["flops"] for it in items) <= 3e18 * 1.001
    assert budget["criterion"] and budget["expected_loss_penalty"]["after"] < budget["expected_loss_penalty"]["before"]
    for it in items:
        assert it["scale"]["n_params"] <= 3e8 and it["runs"] and it["reason"]
        assert {"learning_rate", "batch_size"} <= set(it["runs"][0])
    # Without a budget: today's suggestions, unchanged in shape.
    old = studies.get("/v1/studies/sp/suggestions", params={**SP_TARGET, "count": 2}).json()
    assert len(old["items"]) == 2 and "budget" not in old
    assert_error(
        studies.get("/v1/studies/sp/suggestions", params={**SP_TARGET, "max_tokens": 1e9}), 422, "validation_error"
    )
    assert_error(
        studies.get("/v1/studies/sp/suggestions", params={**SP_TARGET, "budget_flops": -1}), 422, "validation_error"
    )
    np.testing.assert_allclose(
        [it["flops_per_run"] for it in items],
        [6 * it["scale"]["n_params"] * it["scale"]["tokens"] for it in items],
        rtol=0.01,
    )

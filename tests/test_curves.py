"""fitting/curves.py and GET .../fits/{id}/curves, .../run-states: the plotted numbers are the service's."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fitting import curves
from fitting.runs import DIVERGED
from fitting.study_fit import StudyResult, fit_study, predict
from tests.conftest import assert_error
from tests.fitting_data import synthetic_sweep


@pytest.fixture(scope="module")
def fit() -> StudyResult:
    return fit_study(synthetic_sweep(1), bootstrap=20, seed=0)


@pytest.mark.parametrize("x_var", ["n_params", "tokens"])
def test_band_is_the_recommendation_interval(fit: StudyResult, x_var: str) -> None:
    for axis in fit.laws:
        c = curves.law_curve(fit, axis, x_var, points=12)
        assert len(c["x"]) == len(c["value"]) == len(c["low"]) == len(c["high"]) == 12
        assert all(lo <= v <= hi for lo, v, hi in zip(c["low"], c["value"], c["high"]))
        for i in (2, 9):  # two x values: the band's edges are the recommendation's interval there
            iv = getattr(predict(fit, {**c["fixed"], x_var: c["x"][i]}), axis)
            assert (c["value"][i], c["low"][i], c["high"][i]) == (iv.value, iv.low, iv.high), (axis, i)


def test_prior_line_has_the_published_slope_and_is_anchored_at_the_centre(fit: StudyResult) -> None:
    law = fit.laws["learning_rate"]
    prior = law.priors.get("n_params")
    c = curves.law_curve(fit, "learning_rate", "n_params", points=10)
    if prior is None or not prior.published:
        assert c["prior"] is None or "n_params" not in c["prior"]["exponents"]
        return
    p = c["prior"]
    slope = (math.log(p["value"][-1]) - math.log(p["value"][0])) / (math.log(c["x"][-1]) - math.log(c["x"][0]))
    assert slope == pytest.approx(prior.mean, rel=1e-9)
    # at the law's own centre the prior line is the fitted law's mean
    centre = dict(zip(law.variables, np.exp(law.log_centre)))
    line = curves._prior_line(fit, "learning_rate", [{**c["fixed"], **centre}])
    assert line is not None and line["value"][0] == pytest.approx(math.exp(law.coef[0]), rel=1e-9)


def test_bowls_sit_on_the_scale_optimum(fit: StudyResult) -> None:
    bowls = curves.scale_bowls(fit, points=50)  # even: no grid point sits exactly on the optimum
    assert len(bowls) == sum(1 for o in fit.optima if "learning_rate" in o.optimum)
    H, K, axes = fit.shape.hessian, fit.shape.kappa, fit.shape.axes
    il, ib = axes.index("learning_rate"), axes.index("batch_size")
    for b in bowls:
        i = int(np.argmin(b["loss"]))
        assert b["loss"][i] == pytest.approx(b["floor"], rel=1e-3)  # the lowest point is next to the optimum
        assert b["learning_rate"][i] == pytest.approx(b["optimum"]["learning_rate"]["value"], rel=0.07)
        # both sides of the bowl are drawn (at least a third of ±BOWL_HALF_WIDTH each way)
        log_span = np.log(np.array(b["learning_rate"]) / b["optimum"]["learning_rate"]["value"])
        assert log_span[0] < -curves.BOWL_HALF_WIDTH / 3 and log_span[-1] > curves.BOWL_HALF_WIDTH / 3
        assert np.all(np.diff(b["loss"][: i + 1]) <= 0) and np.all(np.diff(b["loss"][i:]) >= 0)  # one bowl
        for contour in b["contours"]:
            pts = [(lr, bs) for lr, bs in zip(contour["learning_rate"], contour["batch_size"]) if math.isfinite(lr)]
            assert len(pts) > 10 and contour["closed"] == (len(pts) == curves.CONTOUR_RAYS)
            for lr, bs in pts:
                z = np.array(
                    [
                        math.log(lr / b["optimum"]["learning_rate"]["value"]),
                        math.log(bs / b["optimum"]["batch_size"]["value"]),
                    ]
                )
                h = H[np.ix_([il, ib], [il, ib])]
                f = 0.5 * z @ h @ z + K[il] * z[0] ** 3 + K[ib] * z[1] ** 3
                assert f == pytest.approx(math.log1p(contour["level"]), rel=1e-6)


def test_loss_law_curves_one_per_model_size(fit: StudyResult) -> None:
    ll = curves.loss_law_curves(fit, points=9)
    if fit.loss_law is None:
        assert ll == []
        return
    assert [c["n_params"] for c in ll] == sorted({o.scale.n_params for o in fit.optima})
    p = fit.loss_law.predict(ll[0]["n_params"], ll[0]["tokens"][3]).interval()
    assert (ll[0]["value"][3], ll[0]["low"][3], ll[0]["high"][3]) == pytest.approx((p.value, p.low, p.high))


def test_run_states_follow_the_fit(fit: StudyResult) -> None:
    o = fit.optima[0]
    sc = o.scale.to_dict()
    runs = [
        {"id": 1, "status": "completed", "final_loss": o.loss, **sc},
        {"id": 2, "status": "completed", "final_loss": o.loss * 1.05, **sc},
        {"id": 3, "status": "completed", "final_loss": o.loss * 1.5, **sc},
        {"id": 4, "status": DIVERGED, "final_loss": None, **sc},
        {"id": 5, "status": "completed", "final_loss": o.loss, "excluded": True, **sc},
        {"id": 6, "status": "completed", "final_loss": o.loss, **{**sc, "n_params": 1.2345}},
        {"id": 7, "status": "failed", "final_loss": None, **sc},
    ]
    with_outlier = StudyResult(**{**fit.__dict__, "outliers": ({"run_id": 2, "run_key": None, "reason": "x"},)})
    assert curves.run_states(fit, runs) == {
        1: "near_optimal",
        2: "used",
        3: "diverged",
        4: "diverged",
        5: "excluded",
        6: "failed",
        7: "failed",
    }
    assert curves.run_states(with_outlier, runs)[2] == "outlier"


def test_curve_arguments_are_checked(fit: StudyResult) -> None:
    with pytest.raises(ValueError, match="x must be"):
        curves.law_curve(fit, "learning_rate", "seq_len")
    with pytest.raises(ValueError, match="points"):
        curves.law_curve(fit, "learning_rate", "n_params", points=1)
    with pytest.raises(KeyError):
        curves.law_curve(fit.__class__(**{**fit.__dict__, "laws": {}}), "learning_rate", "n_params")


@pytest.mark.slow  # a study of ~150 runs imported and fitted over HTTP
def test_curves_endpoint(client: TestClient) -> None:
    assert client.post("/v1/studies", json={"name": "syn", "seq_len": 1024}).status_code == 201
    table = synthetic_sweep(2, keep=0.5)
    rows = []
    for i in range(len(table)):
        r = {
            k: float(getattr(table, k)[i])
            for k in ("n_params", "tokens", "width", "depth", "learning_rate", "batch_size", "weight_decay")
        }
        r["batch_size"] = round(r["batch_size"])
        r["width"], r["depth"] = int(r["width"]), int(r["depth"])
        loss = float(table.final_loss[i])
        r["status"] = str(table.status[i])
        if math.isfinite(loss):
            r["final_loss"] = loss
        rows.append(r)
    assert client.post("/v1/studies/syn/runs", json={"runs": rows}).status_code in (200, 201)
    assert_error(client.get("/v1/studies/syn/fits/latest/curves"), 404, "not_found")
    assert client.post("/v1/studies/syn/fits", json={"bootstrap": 10}).status_code == 201
    body = client.get("/v1/studies/syn/fits/latest/curves", params={"x": "tokens", "points": 7}).json()
    assert body["x_variable"] == "tokens" and body["fit_id"] >= 1
    lr = body["laws"]["learning_rate"]
    assert len(lr["x"]) == 7 and lr["fixed"]["n_params"] > 0
    rec = client.get("/v1/studies/syn/recommendation", params={**lr["fixed"], "tokens": lr["x"][3]}).json()
    assert rec["learning_rate"]["low"] == pytest.approx(lr["low"][3], rel=1e-12)
    assert rec["learning_rate"]["high"] == pytest.approx(lr["high"][3], rel=1e-12)
    assert len(body["bowls"]) >= 1
    one = client.get(f"/v1/studies/syn/fits/{body['fit_id']}/curves", params={"law": "batch_size", "points": 3})
    assert list(one.json()["laws"]) == ["batch_size"]
    states = client.get("/v1/studies/syn/fits/latest/run-states").json()
    assert sum(states["counts"].values()) == len(rows) == len(states["states"])
    assert states["counts"]["near_optimal"] >= 1
    assert_error(client.get("/v1/studies/nope/fits/latest/curves"), 404, "not_found")
    assert_error(client.get("/v1/studies/syn/fits/latest/curves", params={"law": "momentum"}), 422, "validation_error")
    assert_error(client.get("/v1/studies/syn/fits/latest/curves", params={"points": 1000}), 422, "validation_error")
    assert_error(client.get("/v1/studies/syn/fits/latest/curves", params={"n_params": -1}), 422, "validation_error")
    assert_error(client.get("/v1/studies/syn/fits/latest/curves", params={"bogus": 1}), 422, "validation_error")
    assert_error(client.get("/v1/studies/syn/fits/abc/curves"), 422, "validation_error")

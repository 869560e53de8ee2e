"""Loss law on the real Chinchilla points, μP-family multipliers, published baselines."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize, minimize_scalar
from scipy.special import huber, logsumexp

from fitting.baselines import baselines, deepseek_compute_optimal
from fitting.common import InsufficientData
from fitting.loss_law import (
    LossLaw,
    compute_optimal,
    fit_loss_law,
    initial_grid,
)
from fitting.published import FLOPS_PER_PARAM_TOKEN
from fitting.transfer import per_layer_multipliers

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EPOCH = {"E": 1.817, "A": 482.0, "B": 2085.0, "alpha": 0.3478, "beta": 0.3658}
CHINCHILLA_FLOPS = 5.76e23


@pytest.fixture(scope="module")
def chinchilla() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with open(DATA / "chinchilla_epoch.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    n = np.array([float(r["Model Size"]) for r in rows])
    c = np.array([float(r["Training FLOP"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    keep = np.argsort(loss, kind="stable")[:-5]  # Epoch drops the 5 highest-loss points
    return n[keep], c[keep] / (FLOPS_PER_PARAM_TOKEN * n[keep]), loss[keep]


@pytest.fixture(scope="module")
def chinchilla_fit(chinchilla) -> tuple[LossLaw, float]:
    t0 = time.perf_counter()
    fit = fit_loss_law(*chinchilla, bootstrap=200, seed=1)
    return fit, time.perf_counter() - t0


def _reference_objective(theta: np.ndarray, log_n, log_d, log_l) -> float:
    """RULES.md §5 objective written independently with scipy's huber/logsumexp."""
    a, b, e, alpha, beta = theta
    z = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    return float(huber(1e-3, logsumexp(z, axis=0) - log_l).sum())


def test_chinchilla_matches_epoch(chinchilla, chinchilla_fit):
    fit, seconds = chinchilla_fit
    p = fit.point()
    print(f"\nChinchilla loss law ({fit.n_points} points, {fit.n_bootstrap} bootstraps, {seconds:.2f} s):")
    for name, iv in fit.params.items():
        print(f"  {name:5s} = {iv.value:10.4f}  90% [{iv.low:10.4f}, {iv.high:10.4f}]   Epoch {EPOCH[name]}")
    assert fit.n_points == 240
    assert abs(p["alpha"] - EPOCH["alpha"]) < 0.01
    assert abs(p["beta"] - EPOCH["beta"]) < 0.01
    assert abs(p["E"] - EPOCH["E"]) < 0.03
    assert 0.6 < p["A"] / EPOCH["A"] < 1.6
    assert 0.5 < p["B"] / EPOCH["B"] < 2.0
    for iv in fit.params.values():
        assert iv.low <= iv.value <= iv.high
        assert iv.low < iv.high  # a real bootstrap spreads
    # Epoch's 95% intervals are wider than a 90% interval but of the same order.
    assert fit.params["alpha"].high - fit.params["alpha"].low < 0.1
    assert fit.params["E"].low > 1.6 and fit.params["E"].high < 2.0
    assert fit.warnings == ()
    log_n, log_d, log_l = (np.log(x) for x in chinchilla)
    theta = [math.log(p["A"]), math.log(p["B"]), math.log(p["E"]), p["alpha"], p["beta"]]
    assert _reference_objective(np.array(theta), log_n, log_d, log_l) == pytest.approx(fit.objective, rel=1e-9)


@pytest.mark.slow  # ~2.5 s: 30 independent BFGS fits from random grid starts
def test_top_starts_polish_is_not_beaten_by_other_grid_starts(chinchilla, chinchilla_fit):
    fit, _ = chinchilla_fit
    log_n, log_d, log_l = (np.log(x) for x in chinchilla)
    grid = initial_grid()
    assert grid.shape == (4500, 5)
    rng = np.random.default_rng(7)
    found = []
    # a different optimizer (BFGS) on an independently written objective
    for theta0 in grid[rng.choice(len(grid), size=30, replace=False)]:
        found.append(minimize(_reference_objective, theta0, args=(log_n, log_d, log_l), method="BFGS").fun)
    assert min(found) >= fit.objective * (1 - 1e-6)
    assert min(found) <= fit.objective * (1 + 1e-5)  # some random start does reach the same optimum


def test_newton_bootstrap_matches_lbfgs_bootstrap(chinchilla):
    """The batched Newton refits reproduce per-resample L-BFGS-B refits (the previous method)."""
    from fitting.loss_law import _polish

    boot, seed = 100, 2
    fit = fit_loss_law(*chinchilla, bootstrap=boot, seed=seed)
    log_n, log_d, log_l = (np.log(x) for x in chinchilla)
    p = fit.point()
    theta = np.array([math.log(p["A"]), math.log(p["B"]), math.log(p["E"]), p["alpha"], p["beta"]])
    # the point estimate is the one L-BFGS-B reaches from the best grid start on its own
    grid = initial_grid()
    z = np.stack(
        [
            grid[:, [0]] - grid[:, [3]] * log_n,
            grid[:, [1]] - grid[:, [4]] * log_d,
            np.broadcast_to(grid[:, [2]], (len(grid), log_n.size)),
        ]
    )
    start = grid[np.argmin(huber(1e-3, logsumexp(z, axis=0) - log_l).sum(axis=1))]
    solo = _polish(start, log_n, log_d, log_l, 1e-3)
    np.testing.assert_allclose(theta, solo.x, rtol=1e-6)
    assert fit.objective <= solo.fun * (1 + 1e-12)

    rng = np.random.default_rng(seed)  # the same resamples fit_loss_law draws
    ref = []
    for _ in range(boot):
        i = rng.integers(0, log_n.size, log_n.size)
        ref.append(_polish(theta, log_n[i], log_d[i], log_l[i], 1e-3).x)
    ref = np.array(ref)
    ref_params = np.column_stack([np.exp(ref[:, 2]), np.exp(ref[:, 0]), np.exp(ref[:, 1]), ref[:, 3], ref[:, 4]])
    assert fit.n_bootstrap == boot and fit.samples.shape == ref_params.shape
    log_cols = {"A", "B"}
    print("\nChinchilla 90% intervals, batched Newton vs L-BFGS-B bootstrap:")
    for j, name in enumerate(("E", "A", "B", "alpha", "beta")):
        lo, hi = np.percentile(ref_params[:, j], [5, 95])
        iv = fit.params[name]
        print(f"  {name:5s} Newton [{iv.low:.6g}, {iv.high:.6g}]  L-BFGS-B [{lo:.6g}, {hi:.6g}]")
        for got, want in ((iv.low, min(lo, iv.value)), (iv.high, max(hi, iv.value))):
            if name in log_cols:
                assert abs(math.log(got / want)) < 0.1
            else:
                assert abs(got / want - 1) < 0.1
    # resample by resample, not just in the percentiles
    rel = np.abs(fit.samples / ref_params - 1)
    assert np.median(rel) < 1e-4 and np.mean(rel.max(axis=1) < 1e-2) >= 0.95


def test_compute_optimal_at_chinchilla_budget(chinchilla_fit):
    fit, _ = chinchilla_fit
    opt = compute_optimal(fit, CHINCHILLA_FLOPS)
    n_opt, d_opt = opt
    print(
        f"\ncompute-optimal at {CHINCHILLA_FLOPS:.3g} FLOPs: N* {n_opt.value:.3g} [{n_opt.low:.3g}, {n_opt.high:.3g}], "
        f"D* {d_opt.value:.3g} [{d_opt.low:.3g}, {d_opt.high:.3g}], D/N {opt.tokens_per_param.value:.1f}"
    )
    assert 1e10 < n_opt.value < 3e11
    assert 5 < opt.tokens_per_param.value < 80
    assert FLOPS_PER_PARAM_TOKEN * n_opt.value * d_opt.value == pytest.approx(CHINCHILLA_FLOPS, rel=1e-9)
    for iv in (n_opt, d_opt, opt.tokens_per_param):
        assert iv.low <= iv.value <= iv.high and iv.low < iv.high
    # the target lies beyond the largest fitted model: the result must say so
    assert any("outside the fitted range" in w for w in opt.warnings)
    # the closed form is the minimum of the fitted law along the iso-FLOP curve
    p = fit.point()

    def loss_at(log_n: float) -> float:
        n = math.exp(log_n)
        return (
            p["E"] + p["A"] / n ** p["alpha"] + p["B"] / (CHINCHILLA_FLOPS / (FLOPS_PER_PARAM_TOKEN * n)) ** p["beta"]
        )

    res = minimize_scalar(loss_at, bounds=(math.log(1e8), math.log(1e13)), method="bounded", options={"xatol": 1e-8})
    assert math.exp(res.x) == pytest.approx(n_opt.value, rel=1e-3)


def test_json_round_trip_keeps_predictions(chinchilla, chinchilla_fit):
    fit, _ = chinchilla_fit
    d = json.loads(json.dumps(fit.to_dict()))
    assert d["form"] == "L = E + A/N^alpha + B/D^beta"
    assert set(d["params"]) == {"E", "A", "B", "alpha", "beta"}
    assert len(d["bootstrap_samples"]["alpha"]) <= 200
    back = LossLaw.from_dict(d)
    n, tokens, loss = chinchilla
    a, b = fit.predict(n, tokens), back.predict(n, tokens)
    np.testing.assert_allclose(a.value, b.value, rtol=1e-12)
    np.testing.assert_allclose(a.low, b.low, rtol=1e-12)
    assert np.all(a.low <= a.value) and np.all(a.value <= a.high) and np.any(a.low < a.high)
    assert np.median(np.abs(a.value / loss - 1)) < 0.02
    assert compute_optimal(back, CHINCHILLA_FLOPS).n_params == compute_optimal(fit, CHINCHILLA_FLOPS).n_params
    single = back.predict(7e10, 1.4e12).to_dict()
    assert single["low"] <= single["value"] <= single["high"]


def test_loss_law_refuses_too_little_data():
    n = np.array([1e8, 2e8, 4e8, 8e8, 1.6e9, 3.2e9])
    d = np.array([2e9, 4e9, 8e9, 1.6e10, 3.2e10, 6.4e10])
    loss = 1.8 + 400 / n**0.34 + 2000 / d**0.36
    with pytest.raises(InsufficientData, match="at least 5"):
        fit_loss_law(n[:4], d[:4], loss[:4], bootstrap=0)
    with pytest.raises(InsufficientData, match="distinct n_params"):
        fit_loss_law(np.full(6, 1e8), d, loss, bootstrap=0)
    with pytest.raises(InsufficientData, match="distinct tokens"):
        fit_loss_law(n, np.full(6, 1e10), loss, bootstrap=0)
    with pytest.raises(InsufficientData, match="vary together"):
        fit_loss_law(n, 20 * n, loss, bootstrap=0)  # every run at 20 tokens/param
    with pytest.raises(ValueError, match="> 0"):
        fit_loss_law(n, d, -loss, bootstrap=0)
    with pytest.raises(ValueError, match="equal lengths"):
        fit_loss_law(n, d[:5], loss, bootstrap=0)


def test_loss_law_refuses_an_unidentified_irreducible_loss():
    """Step Law's 15 per-scale best losses never level off: E runs to 0, so no law is claimed."""
    best: dict[tuple[float, float], float] = {}
    with (DATA / "steplaw_dense_proxy.csv").open() as handle:
        for row in csv.DictReader(handle):
            key = (float(row["N"]), float(row["D"]))
            best[key] = min(best.get(key, math.inf), float(row["smooth loss"]))
    n, d = (np.array(v) for v in zip(*best))
    with pytest.raises(InsufficientData, match="irreducible loss E is not identified"):
        fit_loss_law(n, d, np.array(list(best.values())), bootstrap=0)


def test_loss_law_refuses_a_flat_valley_at_once():
    """Losses that do not depend on tokens (bench/shapes.py's sharp study: 12 per-scale best losses
    of a million runs): B/D^beta can trade B against beta without end. Most bootstrap refits never
    settle; the law is refused saying so, instead of polishing each for thousands of iterations
    (3 s for 12 points) to withhold it anyway."""
    n = np.repeat([3.145728e6, 1.0616832e7, 2.5165824e7, 8.4934656e7, 2.01326592e8, 6.79477248e8], 2)
    d = n * np.tile([10.0, 40.0], 6)
    loss = np.array([4.273221, 4.271809, 3.444886, 3.444666, 3.012579, 3.013059])
    loss = np.concatenate([loss, [2.643656, 2.6437, 2.399223, 2.401734, 2.211964, 2.208296]])
    with pytest.raises(InsufficientData, match="bootstrap refits do not settle") as refused:
        fit_loss_law(n, d, loss, bootstrap=200)
    assert "token budgets" in refused.value.missing
    # The same points with a token term are identified and keep their law.
    law = fit_loss_law(n, d, loss + 2000 / d**0.36, bootstrap=200)
    assert law.unidentified() is None
    assert law.params["beta"].low <= 0.36 <= law.params["beta"].high


def test_synthetic_recovery():
    truth = {"E": 1.7, "A": 350.0, "B": 1500.0, "alpha": 0.32, "beta": 0.29}
    rng = np.random.default_rng(3)
    n, d = np.meshgrid(np.geomspace(2e7, 2e9, 6), np.geomspace(5e8, 1e11, 6))
    n, d = n.ravel(), d.ravel()
    clean = truth["E"] + truth["A"] / n ** truth["alpha"] + truth["B"] / d ** truth["beta"]
    loss = clean * np.exp(rng.normal(0, 0.002, n.size))
    fit = fit_loss_law(n, d, loss, bootstrap=60, seed=0)
    p = fit.point()
    assert abs(p["alpha"] - truth["alpha"]) < 0.03
    assert abs(p["beta"] - truth["beta"]) < 0.03
    assert abs(p["E"] - truth["E"]) < 0.05
    assert 0.5 < p["A"] / truth["A"] < 2 and 0.5 < p["B"] / truth["B"] < 2
    pred = fit.predict(1e10, 2e11).value
    true_far = truth["E"] + truth["A"] / 1e10 ** truth["alpha"] + truth["B"] / 2e11 ** truth["beta"]
    assert abs(pred / true_far - 1) < 0.01


# ---------------------------------------------------------------- transfer

M, M_L = 4, 2
BASE_W, BASE_D = 256, 6


@pytest.mark.parametrize("name,alpha", [("mup", None), ("depth-mup", 0.5), ("completep", 1.0)])
def test_multipliers_match_rules(name, alpha):
    eta, eps = 3e-3, 1e-8
    pl = per_layer_multipliers(name, BASE_W * M, BASE_D * M_L, BASE_W, BASE_D, base_lr=eta, base_eps=eps)
    a = 0.0 if alpha is None else alpha
    ml = 1.0 if alpha is None else M_L  # μP leaves depth alone
    assert pl.width_multiplier == M
    assert pl.residual_branch_multiplier == pytest.approx(ml**-a)
    h = pl.hidden
    assert h.lr_multiplier == pytest.approx((1 / M) * ml ** (a - 1) if alpha is not None else 1 / M)
    assert h.learning_rate == pytest.approx(eta * h.lr_multiplier)
    assert h.init_std_multiplier == pytest.approx(1 / math.sqrt(M))
    assert h.forward_multiplier == 1
    assert h.weight_decay_multiplier == pytest.approx(1 / h.lr_multiplier)  # η·λ invariant
    if alpha is None:
        assert h.adam_eps_multiplier == 1  # the mup package leaves ε alone
        assert pl.vector_like.lr_multiplier == 1
    else:
        assert h.adam_eps_multiplier == pytest.approx(M**-1 * M_L**-alpha)
        assert h.adam_eps == pytest.approx(eps * M**-1 * M_L**-alpha)
        assert pl.vector_like.lr_multiplier == pytest.approx(M_L ** (alpha - 1))
    assert pl.embeddings.lr_multiplier == 1 and pl.embeddings.init_std_multiplier == 1
    assert pl.output.lr_multiplier == 1 and pl.output.forward_multiplier == pytest.approx(1 / M)
    d = json.loads(json.dumps(pl.to_dict()))
    assert d["classes"]["hidden"]["lr_multiplier"] == pytest.approx(h.lr_multiplier)
    assert d["residual_branch_multiplier"] == pytest.approx(pl.residual_branch_multiplier)


def test_completep_hidden_lr_is_depth_invariant_and_depth_mup_is_not():
    cp = [per_layer_multipliers("completep", 512, L, 512, 4).hidden.lr_multiplier for L in (4, 8, 32)]
    dm = [per_layer_multipliers("depth-mup", 512, L, 512, 4).hidden.lr_multiplier for L in (4, 8, 32)]
    assert cp == pytest.approx([1, 1, 1])
    assert dm == pytest.approx([1, 2**-0.5, 8**-0.5])


def test_sgd_and_unscaled_weight_decay():
    pl = per_layer_multipliers("mup", 1024, None, 256, None, optimizer="sgd")
    assert pl.hidden.lr_multiplier == 1 and pl.vector_like.lr_multiplier == 4 and pl.output.lr_multiplier == 4
    assert pl.hidden.adam_eps_multiplier is None
    nano = per_layer_multipliers("mup", 1024, None, 256, None, hidden_wd_scaled=False)
    assert nano.hidden.weight_decay_multiplier == 1


@pytest.mark.parametrize("name", ["mup", "depth-mup", "completep"])
def test_identity_at_base(name):
    d = per_layer_multipliers(name, 384, 12, 384, 12).to_dict()
    assert d["residual_branch_multiplier"] == 1
    for cls in d["classes"].values():
        for key in ("lr_multiplier", "init_std_multiplier", "forward_multiplier", "weight_decay_multiplier"):
            assert cls[key] == 1
        assert cls["adam_eps_multiplier"] in (1, None)


def test_sp_and_bad_inputs():
    assert per_layer_multipliers("sp", 1024, 12, None, None) is None
    bad = [
        (("muP", 512, 8, 256, 4), {}, "unknown parameterization"),
        (("mup", 0, 8, 256, 4), {}, "width"),
        (("mup", 512.5, 8, 256, 4), {}, "width"),
        (("mup", True, 8, 256, 4), {}, "width"),
        (("mup", 512, 8, None, 4), {}, "base_width is required"),
        (("completep", 512, 8, 256, None), {}, "base_depth is required"),
        (("depth-mup", 512, None, 256, 4), {}, "depth is required"),
        (("completep", 512, -8, 256, 4), {}, "depth"),
        (("completep", 512, 8, 256, 4), {"optimizer": "sgd"}, "Adam only"),
        (("mup", 512, 8, 256, 4), {"optimizer": "lion"}, "no μP transfer rules"),
        (("mup", 512, 8, 256, 4), {"base_lr": -1.0}, "base_lr"),
    ]
    for args, kwargs, msg in bad:
        with pytest.raises(ValueError, match=msg):
            per_layer_multipliers(*args, **kwargs)


def test_mup_warns_when_depth_changes():
    pl = per_layer_multipliers("mup", 1024, 24, 256, 12)
    assert pl.residual_branch_multiplier == 1
    assert any("width only" in n for n in pl.notes)


# ---------------------------------------------------------------- baselines


def test_step_law_and_deepseek_baselines():
    n, d, width, depth, seq = 7e9, 1.4e12, 4096, 32, 4096
    out = baselines({"n_params": n, "tokens": d, "width": width, "depth": depth, "seq_len": seq})
    sl = out["step_law"]
    assert sl["available"] and sl["missing"] == []
    assert sl["learning_rate"] == pytest.approx(1.7973 * n**-0.7129 * d**0.3075, rel=1e-12)
    assert sl["batch_tokens"] == pytest.approx(0.5807 * d**0.5709, rel=1e-12)
    assert sl["batch_size"] == pytest.approx(sl["batch_tokens"] / seq)
    assert sl["in_fitted_range"] is False  # 7B is far beyond Step Law's 1.07e9
    ds = out["deepseek_llm"]
    m = 72 * depth * width**2 + 12 * depth * width * seq
    assert ds["flops_per_token"] == pytest.approx(m)
    assert ds["learning_rate"] == pytest.approx(0.3118 * (m * d) ** -0.125, rel=1e-12)
    assert ds["batch_tokens"] == pytest.approx(0.2920 * (m * d) ** 0.3271, rel=1e-12)
    assert ds["batch_size"] == pytest.approx(ds["batch_tokens"] / seq)
    m_opt, d_opt = deepseek_compute_optimal(m * d)
    assert m_opt * d_opt == pytest.approx(m * d, rel=1e-3)  # the two published laws are consistent
    json.dumps(out)


def test_baselines_report_missing_inputs():
    out = baselines({"n_params": 1e9, "tokens": 2e10})
    assert out["step_law"]["available"] and out["step_law"]["batch_size"] is None
    assert out["step_law"]["missing"] == ["seq_len"]
    assert out["deepseek_llm"]["available"] is False
    assert set(out["deepseek_llm"]["missing"]) == {"width", "depth", "seq_len"}
    none = baselines({"width": 1024, "tokens": float("nan")})
    assert none["step_law"]["available"] is False and set(none["step_law"]["missing"]) == {"n_params", "tokens"}
    assert "tokens" in none["deepseek_llm"]["missing"]

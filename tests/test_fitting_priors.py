"""Right on data the engine never saw (issue 17): priors that yield to conflicting data and apply only
where their source does, optima at a sweep's edge as bounds (expectation propagation checked against
exact integrals), intervals that widen with distance in every variable, and answers that say when the
literature, the data or the fit's own diagnostics disagree."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import integrate, stats

from fitting.laws import TAU_GRID, LawObservations, posterior, tilted_moments
from fitting.published import BATCH_FIXED, BATCH_FREE, BATCH_SET, exponent_priors
from fitting.recommend import StudyInfo, recommend
from fitting.runs import RunTable
from fitting.study_fit import MissingTarget, batch_regime, fit_study, law_warnings, predict
from fitting.synthetic import TrueLaw, random_study, random_truth, sample_runs
from tests.fitting_data import load_marin, load_steplaw

AXES = ("learning_rate", "batch_size", "weight_decay")


@pytest.fixture(scope="module")
def steplaw() -> RunTable:
    return load_steplaw()


@pytest.fixture(scope="module")
def steplaw_fit(steplaw: RunTable):
    return fit_study(steplaw, bootstrap=50, loss_law=False)


# --- censored optima: expectation propagation against exact integrals -----------------------
@pytest.mark.parametrize(("lo", "hi"), [(0.5, math.inf), (-math.inf, -0.1), (0.25, 0.45), (-3.0, 3.0)])
def test_ep_with_one_bound_is_the_exact_posterior(lo: float, hi: float) -> None:
    """With a single censored observation EP matches the tilted distribution, so its posterior mean,
    variance and evidence are exact: compare with numerical integration for every τ of the grid."""
    X = np.ones((2, 1))
    obs = LawObservations(
        y=np.array([0.2, np.nan]),
        se=np.array([0.1, 0.05]),
        lo=np.array([np.nan, lo if math.isfinite(lo) else np.nan]),
        hi=np.array([np.nan, hi if math.isfinite(hi) else np.nan]),
    )
    prior_sd = 2.0
    mean, cov, log_ev = posterior(X, obs, np.arange(2), np.array([0.0]), np.array([1 / prior_sd**2]))
    for t, tau in enumerate(TAU_GRID):
        s_meas, s_cens = math.sqrt(0.1**2 + tau**2), math.sqrt(0.05**2 + tau**2)

        def density(c: float, s_meas=s_meas, s_cens=s_cens) -> float:
            p_cens = stats.norm.cdf((hi - c) / s_cens) - stats.norm.cdf((lo - c) / s_cens)
            return stats.norm.pdf(c, 0, prior_sd) * stats.norm.pdf(0.2, c, s_meas) * p_cens

        pts = [0.2, lo if math.isfinite(lo) else -1.0, hi if math.isfinite(hi) else 1.0]
        z = integrate.quad(density, -12, 12, points=pts, limit=400)[0]
        m1 = integrate.quad(lambda c: c * density(c), -12, 12, points=pts, limit=400)[0] / z
        m2 = integrate.quad(lambda c: c * c * density(c), -12, 12, points=pts, limit=400)[0] / z
        assert mean[t, 0] == pytest.approx(m1, abs=1e-4), tau
        assert cov[t, 0, 0] == pytest.approx(m2 - m1 * m1, rel=1e-3), tau
        assert log_ev[t] == pytest.approx(math.log(z), abs=1e-4), tau


def test_tilted_moments_of_a_two_sided_bound_match_integration() -> None:
    mu, var, lo, hi, s2 = 0.3, 0.04, 0.35, 0.8, 0.01
    log_z, m, v = tilted_moments(*(np.array([x]) for x in (mu, var, lo, hi, s2)))

    def dens(f: float) -> float:
        s = math.sqrt(s2)
        return stats.norm.pdf(f, mu, math.sqrt(var)) * (stats.norm.cdf((hi - f) / s) - stats.norm.cdf((lo - f) / s))

    z = integrate.quad(dens, -3, 3)[0]
    m1 = integrate.quad(lambda f: f * dens(f), -3, 3)[0] / z
    m2 = integrate.quad(lambda f: f * f * dens(f), -3, 3)[0] / z
    assert float(log_z[0]) == pytest.approx(math.log(z), abs=1e-8)
    assert float(m[0]) == pytest.approx(m1, abs=1e-8)
    assert float(v[0]) == pytest.approx(m2 - m1 * m1, rel=1e-6)


# --- priors that yield, and only where they apply --------------------------------------------
def _study_with_lr_token_exponent(a_tokens: float, seed: int = 3):
    """An SP study (lr × bs × wd grids, 3 shapes × 3 token budgets 16× apart, low noise) whose true
    learning-rate token exponent is `a_tokens` (Step Law's prior: +0.31 ± 0.20 with the batch free)."""
    base = random_truth(seed, "sp")
    laws = dict(base.laws)
    laws["learning_rate"] = TrueLaw(math.log(3e-3), {"width": -0.9, "depth": -0.3, "tokens": a_tokens})
    truth = dataclasses.replace(
        base, laws=laws, shapes=((384.0, 6.0), (768.0, 12.0), (1280.0, 20.0)), token_multiples=(5.0, 20.0, 80.0)
    )
    return sample_runs(truth, np.random.default_rng(seed), noise=0.001, keep=0.85, outliers=False)


def test_a_study_that_contradicts_a_published_exponent_ends_at_its_own_data() -> None:
    runs, truth = _study_with_lr_token_exponent(-0.35)  # 3.3 prior sds below Step Law's +0.31
    fit = fit_study(runs, bootstrap=50, loss_law=False)
    alone = fit_study(runs, bootstrap=50, loss_law=False, priors="none")
    e = fit.laws["learning_rate"].to_dict()["exponents"]["tokens"]
    assert e["prior"]["mean"] == pytest.approx(0.31) and e["prior"]["tail_weight"] > 0
    assert e["followed"] == "data" and e["conflict"]["tail_share"] > 0.5 and e["conflict"]["conflict"] < -2
    assert e["low"] <= -0.35 <= e["high"] and abs(e["value"] + 0.35) < 0.1
    e_alone = alone.laws["learning_rate"].to_dict()["exponents"]["tokens"]
    assert abs(e["value"] - e_alone["value"]) < 0.05  # the published prior no longer matters
    assert any("contradict the published tokens exponent" in w for w in fit.warnings)
    t = truth.targets((4.0,))[0]
    target = {k: t[k] for k in ("n_params", "tokens", "width", "depth")}
    p = predict(fit, target)
    assert any("contradict the published tokens exponent" in w for w in p.warnings)
    # Within the per-scale optima's own bias on this asymmetric surface (~0.13 in log at every scale).
    assert abs(math.log(p.learning_rate.value / truth.optimum(**target)["learning_rate"])) < 0.2


def test_data_that_agree_with_the_published_exponent_keep_it() -> None:
    runs, _ = _study_with_lr_token_exponent(0.30)
    e = fit_study(runs, bootstrap=50, loss_law=False).laws["learning_rate"].to_dict()["exponents"]["tokens"]
    assert e["followed"] == "published prior" and e["conflict"]["tail_share"] < 0.3
    assert e["low"] <= 0.30 <= e["high"]


def test_published_priors_apply_only_where_their_basis_matches() -> None:
    lr, notes = exponent_priors("learning_rate", "sp", "adamw", batch=BATCH_FREE)
    assert lr["n_params"].mean == pytest.approx(-0.71) and lr["n_params"].sd == pytest.approx(0.35)
    assert lr["tokens"].mean == pytest.approx(0.31) and lr["aspect"].mean == 0.0 and notes == []
    fixed, notes = exponent_priors("learning_rate", "sp", "adamw", batch=BATCH_FIXED)
    assert set(fixed) == {"tokens", "aspect"} and fixed["tokens"].mean == pytest.approx(-0.32)
    assert any("Step Law's N and D exponents" in n for n in notes)
    set_, notes = exponent_priors("learning_rate", "sp", "adamw", batch=BATCH_SET)
    assert set(set_) == {"aspect"} and any("conditional on a chosen batch" in n for n in notes)
    for optimizer in ("muon", "sgd", "lion"):
        for axis in ("learning_rate", "batch_size"):
            got, notes = exponent_priors(axis, "sp", optimizer)
            assert got == {} and any("Adam-type" in n and optimizer in n for n in notes)
    mup, _ = exponent_priors("learning_rate", "mup", "adamw", batch=BATCH_FREE)
    assert set(mup) == {"width"} and mup["width"].mean == 0.0
    assert set(exponent_priors("learning_rate", "completep")[0]) == {"width", "depth"}
    assert exponent_priors("weight_decay", "mup", batch=BATCH_FIXED)[0]["width"].mean == pytest.approx(0.5)
    lso, notes = exponent_priors("learning_rate", "sp", "adamw", exclude_sources=("steplaw",))
    assert lso == {} and any("leave-source-out" in n for n in notes)


def test_the_batch_regime_is_read_from_the_runs(steplaw: RunTable) -> None:
    from fitting.optima import analyse_sweeps

    assert batch_regime(steplaw, analyse_sweeps(steplaw, bootstrap=0)) == BATCH_FREE
    horizon, _ = random_study(0, kind="horizon")
    assert batch_regime(horizon) == BATCH_FIXED
    marin = load_marin("adamw")  # one hyperparameter at a time: lr optima are at a chosen batch
    assert batch_regime(marin, analyse_sweeps(marin, bootstrap=0)) == BATCH_SET


def test_the_fit_says_which_priors_applied_and_why() -> None:
    for seed in range(6):
        runs, truth = random_study(seed, kind="horizon")
        fit = fit_study(runs, bootstrap=20, loss_law=False, **truth.study_options())
        law = fit.laws["learning_rate"].to_dict()
        if truth.optimizer == "muon":
            assert law["exponents"]["tokens"]["prior"] is None
            assert any("priors: no published prior" in w and "'muon'" in w for w in fit.warnings)
        else:
            assert law["exponents"]["tokens"]["prior"]["mean"] == pytest.approx(-0.32)
            assert any("token-horizon prior at a fixed batch does" in w for w in fit.warnings)


def test_leave_source_out_turns_off_every_prior_citing_the_source(steplaw: RunTable) -> None:
    fit = fit_study(steplaw, bootstrap=20, loss_law=False, exclude_prior_sources=("steplaw",))
    for axis in ("learning_rate", "batch_size"):
        assert all(e["prior"] is None for e in fit.laws[axis].to_dict()["exponents"].values())
    assert any("left out (leave-source-out)" in w for w in fit.warnings)


# --- bounds: a scale whose optimum is not bracketed does not pull like a measurement -----------
def _one_d_sweep(centres: dict[tuple[float, float], float], lrs_per_scale: dict, curvature: float = 0.03):
    recs = []
    for (n, d), mu in centres.items():
        for lr in lrs_per_scale[(n, d)]:
            z = math.log(lr) - mu
            loss = 3.0 * math.exp(0.5 * curvature * z * z)
            recs.append(
                {
                    "n_params": n,
                    "tokens": d,
                    "width": 512.0,
                    "depth": 8.0,
                    "learning_rate": lr,
                    "batch_size": 256.0,
                    "final_loss": loss,
                }
            )
    return RunTable.from_records(recs)


def test_an_edge_optimum_is_a_bound_and_is_said_so() -> None:
    """Three token budgets, one batch; the largest budget's best run is at the top of a ×2 sweep."""
    centres = {(1e8, 2e9): math.log(4e-3), (1e8, 4e9): math.log(3.4e-3), (1e8, 8e9): math.log(2.9e-3)}
    grid = {k: [math.exp(v) * f for f in (0.25, 0.5, 1.0, 2.0, 4.0)] for k, v in centres.items()}
    grid[(1e8, 8e9)] = [math.exp(centres[(1e8, 8e9)]) * f for f in (0.06, 0.125, 0.25, 0.5)]  # best at the edge
    fit = fit_study(_one_d_sweep(centres, grid), bootstrap=50, loss_law=False)
    statuses = [o.optimum["learning_rate"].status for o in fit.optima]
    assert statuses[:2] == ["bracketed", "bracketed"] and statuses[2] in ("above_sweep", "best_run")
    law = fit.laws["learning_rate"]
    assert law.n_bounds == 1 and law.n_scales == 3
    p = predict(fit, {"n_params": 1e8, "tokens": 1.6e10, "width": 512, "depth": 8})
    assert any("only a bound or not resolved at 1 of 3" in w and "D=8e+09" in w for w in p.warnings)
    # The bound says "at least the edge's half-way point": the law at that scale respects it.
    edge = math.log(grid[(1e8, 8e9)][-1]) - math.log(2) / 2
    at_edge = predict(fit, {"n_params": 1e8, "tokens": 8e9, "width": 512, "depth": 8}).learning_rate
    assert math.log(at_edge.value) > edge - 0.2


def test_an_unresolved_optimum_has_an_honest_interval_and_a_refusal_names_the_real_reason() -> None:
    """A sweep so sharp that no neighbour of the best run is near-optimal: the optimum is the best run's
    value with an interval half-way to its neighbours (not zero-width); two such scales give no law,
    and the reason says both were swept and why neither counts."""
    centres = {(1e8, 2e9): math.log(4e-3), (1e8, 8e9): math.log(3e-3)}
    grid = {k: [math.exp(v) * f for f in (0.25, 0.5, 1.0, 2.0, 4.0)] for k, v in centres.items()}
    fit = fit_study(_one_d_sweep(centres, grid, curvature=0.5), bootstrap=20, loss_law=False, priors="none")
    for o, (_k, mu) in zip(fit.optima, centres.items()):
        lr = o.optimum["learning_rate"]
        assert lr.status == "best_run"
        assert lr.value.low == pytest.approx(math.exp(mu) / math.sqrt(2), rel=1e-6)
        assert lr.value.high == pytest.approx(math.exp(mu) * math.sqrt(2), rel=1e-6)
    why = fit.missing["learning_rate"]
    assert "swept at 2 scale(s)" in why and "only a bound" in why and "bracketed" in why


# --- intervals that widen with distance, in every variable -------------------------------------
def _log_width(fit, target) -> float:
    iv = predict(fit, target).learning_rate
    return math.log(iv.high / iv.low)


def test_intervals_widen_with_distance_in_every_variable(steplaw_fit) -> None:
    base = {"n_params": 5.37e8, "tokens": 5e10, "width": 1280.0, "depth": 13.0}
    for move in ("n_params", "tokens"):
        w = [_log_width(steplaw_fit, {**base, move: base[move] * k}) for k in (1.0, 4.0, 16.0)]
        assert w[0] < w[1] < w[2], (move, w)
    # aspect: a wider, shallower model of the same size
    w = [_log_width(steplaw_fit, {**base, "width": 1280.0 * k, "depth": 13.0 / k}) for k in (1.0, 2.0, 4.0)]
    assert w[0] < w[1] < w[2], w


def test_a_variable_the_proxies_never_moved_still_widens_the_interval() -> None:
    runs, truth = random_study(1, kind="horizon")  # one model size: n_params never varies
    fit = fit_study(runs, bootstrap=20, loss_law=False, **truth.study_options())
    big = max(truth.proxy_scales(), key=lambda s: s["tokens"])
    w = [_log_width(fit, {**big, "n_params": big["n_params"] * k}) for k in (1.0, 4.0, 16.0)]
    assert w[0] < w[1] < w[2]
    assert w[2] - w[0] > 1.0  # a prior-only exponent over 16×: the spread is honest, not a few percent


# --- answers that say when literature, data and diagnostics disagree ---------------------------
def test_a_published_baseline_outside_the_interval_is_named(steplaw_fit) -> None:
    rec = recommend(
        steplaw_fit, {"n_params": 7e9, "tokens": 1.4e12, "width": 4096, "depth": 32}, StudyInfo(seq_len=2048)
    )
    step = rec.baselines["step_law"]
    for axis, word in (("learning_rate", "learning rate"), ("batch_size", "batch size")):
        iv = getattr(rec.prediction, axis)
        inside = iv.low <= step[axis] <= iv.high
        assert step["within_interval"][axis] is inside
        assert any(w.startswith(f"Step Law's {word}") for w in rec.warnings) is not inside


def test_a_law_worse_than_a_constant_is_named(steplaw_fit) -> None:
    law = dataclasses.replace(steplaw_fit.laws["learning_rate"], r2=-0.4)
    assert any("worse than a constant" in w and "-0.40" in w for w in law_warnings(law))
    assert not any("worse than a constant" in w for w in law_warnings(steplaw_fit.laws["learning_rate"]))


def test_a_target_without_shape_is_answered_at_the_proxies_shape(steplaw_fit) -> None:
    bare = predict(steplaw_fit, {"n_params": 7e9, "tokens": 1.4e12})
    assert any(w.startswith("width and depth not given") for w in bare.warnings)
    shaped = predict(steplaw_fit, {"n_params": 7e9, "tokens": 1.4e12, "width": 4096, "depth": 32})
    assert not any(w.startswith("width and depth not given") for w in shaped.warnings)


def test_a_mup_study_needs_the_targets_width() -> None:
    runs, truth = random_study(0, kind="mup")
    fit = fit_study(runs, bootstrap=20, loss_law=False, **truth.study_options())
    assert fit.laws["learning_rate"].variables == ("width", "depth", "tokens")
    with pytest.raises(MissingTarget, match="width"):
        predict(fit, {"n_params": 1e9, "tokens": 2e10, "depth": 8})


# --- coarse sweeps against the baseline every user has ---------------------------------------
@pytest.mark.slow
def test_coarse_sweeps_extrapolate_no_worse_than_reusing_the_largest_proxy() -> None:
    """open_lm-style studies (×2 grid, 3 points, edge optima, one batch): over 12 random truths the
    law's regret at 4× is below that of reusing the largest proxy's best learning rate."""
    ours, reuse = [], []
    for seed in range(12):
        runs, truth = random_study(seed, kind="coarse")
        fit = fit_study(runs, bootstrap=30, loss_law=False, **truth.study_options())
        t = truth.targets((4.0,))[0]
        target = {k: t[k] for k in ("n_params", "tokens", "width", "depth")}
        ours.append(truth.regret(target, {"learning_rate": predict(fit, target).learning_rate.value}))
        big = max(truth.proxy_scales(), key=lambda s: s["n_params"])
        m = np.flatnonzero((runs.n_params == big["n_params"]) & runs.completed)
        best_lr = runs.learning_rate[m[np.argmin(runs.final_loss[m])]]
        reuse.append(truth.regret(target, {"learning_rate": best_lr}))
    print(f"\ncoarse sweeps at 4×: law {100 * np.mean(ours):.3f}%, reuse the largest proxy {100 * np.mean(reuse):.3f}%")
    assert np.mean(ours) < np.mean(reuse)

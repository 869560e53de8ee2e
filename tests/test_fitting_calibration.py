"""The calibration tools themselves: the synthetic generator's truth is what it claims, and the
shared-data loaders honour HPSCALE_SHARED_DATA. (The engine's calibration is measured by
bench/accuracy.py, not asserted here.)"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize

from fitting import datasets
from fitting.runs import COMPLETED, DIVERGED
from fitting.synthetic import AXES, lr_only_study, random_study, random_truth

ROOT = Path(__file__).resolve().parents[1]
SEEDS = range(6)


def _scales(runs):
    keys = np.stack([runs.n_params, runs.tokens, runs.width, runs.depth], axis=1)
    return np.unique(keys, axis=0)


@pytest.mark.parametrize("seed", SEEDS)
def test_bowl_minimum_is_the_true_optimum(seed):
    """The noise-free loss surface's continuous minimum is the claimed optimum, at every proxy scale and target."""
    truth = random_truth(seed)
    for sc in truth.proxy_scales() + [
        {k: t[k] for k in ("n_params", "tokens", "width", "depth")} for t in truth.targets()
    ]:
        mu = truth.log_optimum(sc["n_params"], sc["tokens"], sc["width"], sc["depth"])

        def f(x, sc=sc):
            return float(truth.loss(sc["n_params"], sc["tokens"], sc["width"], sc["depth"], *np.exp(x)))

        start = mu + np.array([0.8, -0.7, 0.6])
        res = minimize(f, start, method="Nelder-Mead", options={"xatol": 1e-7, "fatol": 1e-12, "maxiter": 4000})
        assert np.allclose(res.x, mu, atol=1e-3), (seed, res.x - mu)
        assert f(mu) == pytest.approx(truth.base_loss(sc["n_params"], sc["tokens"]), rel=1e-12)


def _local_vertex(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Vertex of the quadratic least-squares fit y ≈ c + gᵀx + ½xᵀAx."""
    d = x.shape[1]
    pairs = [(i, j) for i in range(d) for j in range(i, d)]
    X = np.column_stack([np.ones(len(x)), x] + [x[:, i] * x[:, j] * (0.5 if i == j else 1.0) for i, j in pairs])
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    A = np.zeros((d, d))
    for k, (i, j) in enumerate(pairs):
        A[i, j] = A[j, i] = beta[1 + d + k]
    return -np.linalg.solve(A, beta[1 : 1 + d])


@pytest.mark.parametrize("seed", SEEDS)
def test_dense_noise_free_grid_is_lowest_at_the_truth(seed):
    """Zero noise, full dense grid. Grid centred on the truth: the best run is exactly at it.
    Grid off-centre: a quadratic through the runs around the best one has its vertex at the truth."""
    step = 0.1
    for guess_error in (0.0, 0.2):
        runs, truth = random_study(
            seed, noise=0.0, keep=1.0, outliers=False, grid_step=step, grid_points=(25, 21, 21), guess_error=guess_error
        )
        assert truth.outliers == ()
        x_all = np.log(np.column_stack([runs.learning_rate, runs.batch_size, runs.weight_decay]))
        for n, d, w, dp in _scales(runs):
            mu = truth.log_optimum(n, d, w, dp)
            m = (runs.n_params == n) & (runs.tokens == d) & runs.completed
            i = np.flatnonzero(m)[np.argmin(runs.final_loss[m])]
            if guess_error == 0.0:
                assert np.allclose(x_all[i], mu, atol=1e-9), (seed, n, d)
                continue
            near = m & np.all(np.abs(x_all - x_all[i]) <= step + 1e-9, axis=1)
            vertex = _local_vertex(x_all[near] - mu, np.log(runs.final_loss[near]))
            assert np.all(np.abs(vertex) <= 0.02), (seed, n, d, vertex)


@pytest.mark.parametrize("seed", SEEDS)
def test_runs_follow_the_model(seed):
    """Noise-free losses equal truth.loss; runs diverge exactly above divergence_factor × lr*."""
    runs, truth = random_study(seed, noise=0.0, outliers=False)
    assert set(runs.status) <= {COMPLETED, DIVERGED}
    assert 3.0 <= truth.divergence_factor <= 4.0
    for i in range(len(runs)):
        n, d, w, dp = runs.n_params[i], runs.tokens[i], runs.width[i], runs.depth[i]
        lr_star = truth.optimum(n, d, w, dp)["learning_rate"]
        diverged = runs.learning_rate[i] > truth.divergence_factor * lr_star
        assert (runs.status[i] == DIVERGED) == diverged
        if not diverged:
            want = truth.loss(n, d, w, dp, runs.learning_rate[i], runs.batch_size[i], runs.weight_decay[i])
            assert runs.final_loss[i] == pytest.approx(float(want), rel=1e-12)
        assert n == pytest.approx(12.0 * dp * w * w)
    shapes = {(w, dp) for w, dp in zip(runs.width, runs.depth)}
    assert 2 <= len(shapes) <= 4 and 2 <= len(truth.token_multiples) <= 3


def test_noise_and_outliers_are_as_documented():
    with_outliers = 0
    for seed in range(12):
        runs, truth = random_study(seed)
        clean, _ = random_study(seed, noise=0.0, outliers=False)
        ok = runs.completed
        rel = runs.final_loss[ok] / clean.final_loss[ok] - 1.0
        idx = np.flatnonzero(ok)
        is_out = np.isin(idx, truth.outliers)
        assert 0.001 <= truth.noise <= 0.003
        assert np.all(np.abs(rel[~is_out]) < 6 * truth.noise)
        if truth.outliers:
            with_outliers += 1
            assert np.all(runs.status[list(truth.outliers)] == COMPLETED)
            # an outlier is off by 5–20% (plus the run's own noise)
            assert np.all(
                (np.abs(rel[is_out]) > 0.05 - 6 * truth.noise) & (np.abs(rel[is_out]) < 0.2 + 6 * truth.noise)
            )
            assert len(truth.outliers) <= max(1, round(0.03 * ok.sum()))
    assert 3 <= with_outliers <= 11


def test_exponents_in_documented_ranges_and_deterministic():
    for seed in range(20):
        t = random_truth(seed)
        lr, bs, wd = (t.laws[a].exponents for a in AXES)
        assert -1.1 <= lr["width"] <= -0.6 and -0.6 <= lr["depth"] <= -0.1 and -0.3 <= lr["tokens"] <= 0.1
        assert 0.3 <= bs["tokens"] <= 0.6 and -0.2 <= bs["n_params"] <= 0.2
        assert -0.3 <= wd["width"] <= 0.9 and -1.3 <= wd["tokens"] <= -0.2
        assert np.all(np.linalg.eigvalsh(t.hessian) > 0)
        assert t.hessian[0, 1] < 0  # lr optimum rises with batch
        assert random_truth(seed, "horizon").laws["learning_rate"].variables == ("tokens",)
        assert random_truth(seed, "mup").parameterization == "mup"
    a, ta = random_study(7)
    b, tb = random_study(7)
    assert np.array_equal(a.final_loss, b.final_loss, equal_nan=True) and ta.outliers == tb.outliers
    assert random_truth(7).laws == ta.laws


def test_truths_are_drawn_away_from_the_prior_centres():
    """The synthetic truths are not centred on the published priors: over 200 studies the learning
    rate's token exponent (Step Law's prior +0.31 ± 0.20) lies ≥ 2 prior sds away in most of them."""
    from fitting.published import exponent_priors

    prior = exponent_priors("learning_rate", "sp")[0]["tokens"]
    z = np.array([(random_truth(s).exponent("learning_rate", "tokens") - prior.mean) / prior.sd for s in range(200)])
    assert np.mean(np.abs(z) >= 2) > 0.5 and np.abs(np.mean(z)) > 1


@pytest.mark.parametrize("seed", SEEDS)
def test_targets_lie_beyond_the_largest_proxy(seed):
    truth = random_truth(seed)
    scales = truth.proxy_scales()
    n_max = max(s["n_params"] for s in scales)
    d_max = max(s["tokens"] for s in scales)
    t4, t16 = truth.targets((4, 16))
    for t, k in ((t4, 4.0), (t16, 16.0)):
        assert t["factor"] == k
        assert t["n_params"] == pytest.approx(k * n_max)
        assert t["tokens"] == pytest.approx(k * d_max)
        assert 12.0 * t["depth"] * t["width"] ** 2 == pytest.approx(t["n_params"])


def test_lr_only_study_has_three_runs_at_one_scale():
    runs, _ = lr_only_study(0)
    assert len(runs) == 3 and len(_scales(runs)) == 1
    assert len(np.unique(runs.batch_size)) == 1 and len(np.unique(runs.weight_decay)) == 1
    assert np.allclose(np.diff(np.log(runs.learning_rate)), math.log(2.0))


# --- datasets ---------------------------------------------------------------------------------
STEPLAW_HEADER = "h,ffnh,numh,numl,lr,bs,ti,loss,smooth loss,exp_name,D,N,D/N\n"


def test_datasets_honour_hpscale_shared_data(tmp_path, monkeypatch):
    (tmp_path / "steplaw_dense_proxy.csv").write_text(
        STEPLAW_HEADER
        + "960,9368,15,7,0.0003453,736,66342,2.41,2.39,x,100000000000,214663680,465.8\n"
        + "960,9368,15,7,0.0006906,368,66342,2.40,2.38,y,100000000000,214663680,465.8\n"
    )
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path))
    assert datasets.data_dir() == tmp_path
    runs = datasets.load_steplaw()
    assert len(runs) == 2
    assert runs.final_loss.tolist() == [2.39, 2.38]
    assert runs.width.tolist() == [960.0, 960.0] and runs.depth.tolist() == [7.0, 7.0]
    assert np.all(runs.seq_len == datasets.STEPLAW_SEQ_LEN)
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError):
        datasets.load_steplaw()
    monkeypatch.delenv(datasets.ENV_VAR)
    assert datasets.data_dir() == ROOT.parent / "shared" / "data"


def test_tests_helpers_reexport_the_loaders():
    from tests import fitting_data

    assert fitting_data.load_steplaw is datasets.load_steplaw
    assert fitting_data.load_marin is datasets.load_marin


def test_non_test_code_never_imports_tests():
    pattern = re.compile(r"^\s*(from\s+tests[\s.]|import\s+tests\b)", re.MULTILINE)
    offenders = [
        str(p.relative_to(ROOT))
        for d in ("fitting", "bench", "app", "service", "store", "hpscale")
        for p in (ROOT / d).rglob("*.py")
        if pattern.search(p.read_text(encoding="utf-8"))
    ]
    assert offenders == []


@pytest.mark.slow
def test_real_files_load_through_the_module():
    runs = datasets.load_steplaw()
    assert len(runs) == 1746
    marin = datasets.load_marin("adamw")
    assert len(marin) > 0 and np.any(marin.weight_decay > 0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_engine_fits_clean_synthetic_studies(seed):
    """Smoke: a clean synthetic study is accepted by the engine and yields a learning-rate law."""
    from fitting.study_fit import fit_study

    runs, _ = random_study(seed, outliers=False)
    fit = fit_study(runs, bootstrap=20, seed=seed, loss_law=False)
    assert "learning_rate" in fit.laws

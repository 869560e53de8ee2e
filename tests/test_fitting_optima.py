"""The per-scale stages of `fitting.optima.analyse_sweeps`, one focused test each, plus outliers and honest noise."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from fitting import optima
from fitting.optima import (
    LEFT_BASIN,
    LOSS_NOISE,
    MIN_NOISE_DOF,
    analyse_sweeps,
    choose_axes,
    classify_runs,
    divergence_caps,
    find_outliers,
    group_scales,
    interactions,
    keep_modal_values,
    loss_noise,
    replicate_scatter,
    select_rows,
    weight_decay_offset,
)
from fitting.runs import RunTable
from tests.fitting_data import load_steplaw

H = 0.05  # log-loss curvature in log lr and log bs of the toy bowls
FINE_LR = [4e-3 * 1.15**k for k in range(-8, 9)]  # fine grids: many runs within 1% of the best
FINE_BS = [256.0 * 1.15**k for k in range(-4, 5)]


def bowl(
    n_params: float = 1e8,
    tokens: float = 2e9,
    *,
    lrs=None,
    bss=None,
    wd: float = 0.1,
    base: float = 3.0,
    centre=(math.log(4e-3), math.log(256.0)),
    noise: float = 0.0,
    seed: int = 0,
    **extra,
) -> list[dict]:
    """A full lr × bs grid on a quadratic log-loss bowl (optionally noisy)."""
    rng = np.random.default_rng(seed)
    lrs = lrs if lrs is not None else [4e-3 * 2.0**k for k in range(-3, 4)]
    bss = bss if bss is not None else [256.0 * 2.0**k for k in range(-2, 3)]
    out = []
    for lr in lrs:
        for bs in bss:
            z = np.array([math.log(lr) - centre[0], math.log(bs) - centre[1]])
            loss = base * math.exp(0.5 * H * z @ z) * (1 + noise * rng.standard_normal())
            out.append(
                {
                    "n_params": n_params,
                    "tokens": tokens,
                    "learning_rate": lr,
                    "batch_size": bs,
                    "weight_decay": wd,
                    "final_loss": loss,
                    **extra,
                }
            )
    return out


def with_loss(runs: RunTable, i: int, loss: float) -> RunTable:
    fl = runs.final_loss.copy()
    fl[i] = loss
    return dataclasses.replace(runs, final_loss=fl)


@pytest.fixture(scope="module")
def steplaw() -> RunTable:
    return load_steplaw()


# RunTable ---------------------------------------------------------------------------
def test_run_table_keeps_ids_and_keys():
    t = RunTable.from_records([{"n_params": 1, "tokens": 2, "id": 7, "run_key": "a"}, {"n_params": 1, "tokens": 2}])
    assert t.run_id[0] == 7 and math.isnan(t.run_id[1])
    assert list(t.run_key) == ["a", None]
    assert list(t.subset(np.array([False, True])).run_key) == [None]
    assert t.label(0) == "run 'a'" and t.label(1) == "row 1"
    # Built from the columns alone (positionally): ids and keys take their defaults.
    columns = [f.name for f in dataclasses.fields(RunTable) if f.name not in ("run_id", "run_key")]
    assert columns[:2] == ["n_params", "tokens"] and "final_loss" in columns
    bare = RunTable(*(getattr(t, f) for f in columns))
    assert bare.run_id.shape == (2,) and list(bare.run_key) == [None, None]


# Stage 1: outliers ------------------------------------------------------------------
def test_group_scales_orders_by_size_then_tokens():
    t = RunTable.from_records(
        [
            {"n_params": 2e8, "tokens": 1e9},
            {"n_params": 1e8, "tokens": 5e9},
            {"n_params": 1e8, "tokens": 1e9},
            {"n_params": 2e8, "tokens": 1e9},
        ]
    )
    scales, sidx = group_scales(t)
    assert [(s.n_params, s.tokens) for s in scales] == [(1e8, 1e9), (1e8, 5e9), (2e8, 1e9)]
    assert list(sidx) == [2, 1, 0, 2]


def test_low_outlier_is_found_and_named_but_not_a_good_run_beside_a_cliff():
    recs = bowl(noise=0.001)
    recs[12]["final_loss"] = 0.5
    # A divergence cliff: the highest-lr column diverged to ~6.6 except one good run.
    for r in recs:
        if r["learning_rate"] == max(x["learning_rate"] for x in recs) and r["batch_size"] != 256.0:
            r["final_loss"] = 6.6
    for i, r in enumerate(recs):
        r["run_key"] = f"k{i}"
    runs = RunTable.from_records(recs)
    _, sidx = group_scales(runs)
    found = find_outliers(runs, sidx, 1)
    assert [o.index for o in found] == [12]
    assert found[0].run_key == "k12" and "below what its 6 nearest runs at this scale predict" in found[0].reason
    a = analyse_sweeps(runs, bootstrap=20)
    assert [o.index for o in a.outliers] == [12]
    assert any("'k12'" in w and "implausible" in w for w in a.warnings)
    assert a.optima[0].loss > 2.9  # the best loss is the robust one


def test_steplaw_clean_file_has_few_outliers_and_one_bad_run_changes_nothing(steplaw):
    scales, sidx = group_scales(steplaw)
    clean = find_outliers(steplaw, sidx, len(scales))
    assert len(clean) <= 3
    a0 = analyse_sweeps(steplaw, bootstrap=0)
    assert len(a0.outliers) <= 3
    m = np.flatnonzero((sidx == 0) & steplaw.completed)
    i = int(m[np.argsort(steplaw.final_loss[m])[5]])
    a1 = analyse_sweeps(with_loss(steplaw, i, 0.5), bootstrap=0)
    assert i in [o.index for o in a1.outliers]
    assert a1.optima[0].n_diverged == a0.optima[0].n_diverged  # no good run pushed out of the basin
    assert a1.optima[0].loss == pytest.approx(a0.optima[0].loss)
    lr0 = a0.optima[0].optimum["learning_rate"].value.value
    assert a1.optima[0].optimum["learning_rate"].value.value == pytest.approx(lr0, rel=0.02)


def test_bowl_outlier_high_inside_the_band():
    # With the default 1% band a run 3% above its bowl is not in the fit at all; a wide band takes it in.
    runs = RunTable.from_records(bowl(noise=0.0005, seed=3))
    row = int(np.argmin(runs.final_loss))
    bad = with_loss(runs, row, runs.final_loss[row] * 1.045)
    assert not analyse_sweeps(runs, bootstrap=0, band=0.05).outliers
    a = analyse_sweeps(bad, bootstrap=0, band=0.05)
    assert [o.index for o in a.outliers] == [row]
    assert "above the loss bowl fitted to its scale's near-optimal runs" in a.outliers[0].reason
    assert a.optima[0].optimum["learning_rate"].value.value == pytest.approx(4e-3, rel=0.05)


# Stage 2: classes -------------------------------------------------------------------
def test_classify_runs_uses_the_robust_best():
    runs = RunTable.from_records(bowl())
    _, sidx = group_scales(runs)
    low = with_loss(runs, 0, 0.5)
    excluded = np.zeros(len(runs), bool)
    excluded[0] = True
    cl = classify_runs(low, sidx, 1, excluded)
    assert cl.best[0] == pytest.approx(runs.final_loss.min())
    assert not cl.usable[0] and not cl.left.any()
    naive = classify_runs(low, sidx, 1, np.zeros(len(runs), bool))
    assert naive.left.sum() > len(runs) // 2  # what one absurd run did before
    assert np.all(naive.left <= (low.final_loss > (1 + LEFT_BASIN) * 0.5))


# Stage 3: axes ----------------------------------------------------------------------
def test_weight_decay_offset_and_axis_choice():
    wd = np.array([0.0, 0.1, 0.2, 0.4])
    assert weight_decay_offset(wd, np.ones(4, bool)) == pytest.approx(0.05)
    assert weight_decay_offset(wd[1:], np.ones(3, bool)) == 0.0
    hp = {
        "learning_rate": np.array([1e-3, 2e-3, 4e-3, 1e-3]),
        "batch_size": np.array([64.0, 128, 64, 64]),
        "weight_decay": np.full(4, 0.1),
    }
    axes, warnings = choose_axes(hp, np.ones(4, bool), np.zeros(4, int), 1)
    assert axes == ("learning_rate",)
    assert any("batch size takes only 2 values" in w for w in warnings)


def test_keep_modal_values_drops_runs_off_the_modal_value():
    hp = {
        "learning_rate": np.array([1e-3, 2e-3, 4e-3, 8e-3]),
        "batch_size": np.array([64.0, 64, 64, 128]),
        "weight_decay": np.full(4, 0.1),
    }
    usable, warnings = keep_modal_values(hp, np.ones(4, bool), np.zeros(4, int), 1, ("learning_rate",))
    assert list(usable) == [True, True, True, False]
    assert "1 run(s) left out: batch size varies" in warnings[0]


# Stage 4–5: band and interactions ---------------------------------------------------
def test_band_and_interactions():
    runs = RunTable.from_records(bowl())
    hp = {"learning_rate": runs.learning_rate, "batch_size": runs.batch_size, "weight_decay": runs.weight_decay}
    y = np.log(runs.final_loss)
    sidx = np.zeros(len(runs), int)
    in_band, active, n_values = select_rows(
        hp, ("learning_rate", "batch_size"), y, np.ones(len(runs), bool), sidx, 1, 0.01
    )
    assert in_band.sum() >= 6 and np.all(np.exp(y[in_band] - y.min()) - 1 <= 0.05)
    assert active.all() and list(n_values[0]) == [7, 5]
    U = np.column_stack([np.log(runs.learning_rate), np.log(runs.batch_size)])
    assert interactions(U, np.ones(len(runs), bool), sidx, 1)[1, 0]
    star = (runs.learning_rate == 4e-3) | (runs.batch_size == 256.0)
    assert not interactions(U, star, sidx, 1).any()


# Stage 6: convergence ---------------------------------------------------------------
def test_non_converged_bowl_is_a_warning(monkeypatch):
    real = optima.fit_bowl
    monkeypatch.setattr(optima, "fit_bowl", lambda *a, **k: dataclasses.replace(real(*a, **k), success=False))
    a = analyse_sweeps(RunTable.from_records(bowl()), bootstrap=0)
    assert any("did not converge" in w for w in a.warnings)


# Stage 7: noise ---------------------------------------------------------------------
def test_noise_prior_replicates_and_measured():
    prior = loss_noise(None, 0.0, 0)
    assert prior.sigma == pytest.approx(LOSS_NOISE) and prior.assumed and "assumed" in prior.message()
    # Replicates measure the noise: 20 pairs with scatter 0.01 in log loss.
    rng = np.random.default_rng(0)
    y = np.repeat(rng.normal(1.0, 0.1, 60), 2) + rng.normal(0, 0.01, 120)
    hp = {
        "learning_rate": np.repeat(np.arange(1, 61) * 1e-3, 2),
        "batch_size": np.full(120, 64.0),
        "weight_decay": np.zeros(120),
    }
    ss, dof = replicate_scatter(hp, y, np.ones(120, bool), np.zeros(120, int))
    assert dof == 60
    n = loss_noise(None, ss, dof)
    assert not n.assumed and n.replicate_dof == 60
    assert 0.008 < n.measured < 0.012 and 0.008 < n.sigma < 0.012
    # A well-sampled noisy bowl measures its own noise (runs near the optimum: a fine grid).
    a = analyse_sweeps(RunTable.from_records(bowl(noise=0.004, lrs=FINE_LR, bss=FINE_BS)), bootstrap=0)
    assert a.noise.dof >= MIN_NOISE_DOF and not a.noise.assumed
    assert 0.002 < a.noise.measured < 0.006


# Stage 8–9: centres and optima ------------------------------------------------------
def test_three_runs_give_an_honest_interval_and_say_the_noise_was_assumed():
    recs = bowl(lrs=[1e-3, 3e-3, 1e-2], bss=[256.0])
    a = analyse_sweeps(RunTable.from_records(recs), bootstrap=200)
    lr = a.optima[0].optimum["learning_rate"]
    assert lr.status == "bracketed"
    assert lr.value.low < 0.95 * lr.value.value and lr.value.high > 1.05 * lr.value.value
    assert a.noise.assumed
    assert any("noise was assumed" in f for f in a.optima[0].flags)
    assert any("noise was assumed" in w for w in a.warnings)


def test_many_runs_give_a_tight_interval_without_the_flag():
    a = analyse_sweeps(RunTable.from_records(bowl(noise=0.001, lrs=FINE_LR, bss=FINE_BS)), bootstrap=200)
    lr = a.optima[0].optimum["learning_rate"].value
    assert lr.contains(4e-3) and lr.high / lr.low < 1.2
    assert not a.noise.assumed and not any("assumed" in f for f in a.optima[0].flags)


def test_divergence_caps_the_learning_rate():
    # A run diverged at a learning rate below where the completed runs' bowl bottoms out.
    recs = bowl(lrs=[4e-3 * 2.0**k for k in range(-3, 2)], centre=(math.log(1e-2), math.log(256.0)))
    recs.append({**recs[0], "learning_rate": 7e-3, "final_loss": None, "status": "diverged"})
    runs = RunTable.from_records(recs)
    cap = divergence_caps(runs.learning_rate, runs.status == "diverged", np.zeros(len(runs), int), 1)
    assert cap[0] == pytest.approx(math.log(7e-3))
    a = analyse_sweeps(runs, bootstrap=20)
    o = a.optima[0].optimum["learning_rate"]
    assert o.status == "capped" and o.value.value <= 7e-3
    assert any("capped by a diverged run" in f for f in a.optima[0].flags)


def test_a_too_small_learning_rate_does_not_cap_the_optimum():
    """Runs far up the low-lr wall leave the basin (> 20% above the best) but never bound lr from above."""
    recs = bowl(lrs=[1e-2 * 2.0**k for k in range(-9, 2)], centre=(math.log(1e-2), math.log(256.0)))
    a = analyse_sweeps(RunTable.from_records(recs), bootstrap=20)
    assert a.optima[0].n_diverged > 0  # the lowest learning rates left the basin
    o = a.optima[0].optimum["learning_rate"]
    assert o.status == "bracketed" and o.value.contains(1e-2)
    assert not any("capped" in f for f in a.optima[0].flags)


def test_pooled_replicates_fit_the_same_bowl(monkeypatch: pytest.MonkeyPatch) -> None:
    """A very large band is fitted on replicates pooled per grid cell: same centres, same noise scale."""
    recs = [r for seed in range(12) for r in bowl(noise=0.002, seed=seed, lrs=FINE_LR, bss=FINE_BS)]
    recs += [
        r for seed in range(12) for r in bowl(n_params=4e8, noise=0.002, seed=100 + seed, lrs=FINE_LR, bss=FINE_BS)
    ]
    runs = RunTable.from_records(recs)
    by_run = analyse_sweeps(runs, bootstrap=100)
    monkeypatch.setattr(optima, "POOL_REPLICATES_ABOVE", 10)
    pooled = analyse_sweeps(runs, bootstrap=100)
    assert pooled.data is not None and pooled.data.weight is not None
    assert pooled.data.y.size < by_run.data.y.size / 5 and pooled.data.weight.sum() == by_run.data.y.size
    # The robust loss acts on cells instead of runs: the centres agree within their standard error.
    assert np.all(np.abs(pooled.centre - by_run.centre) < 2 * by_run.centre_se)
    ratio = pooled.centre_se / by_run.centre_se
    assert np.all((ratio > 0.33) & (ratio < 3)), ratio
    assert pooled.noise.sigma == pytest.approx(by_run.noise.sigma, rel=0.5)

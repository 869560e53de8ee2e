"""Properties of the fitting engine over any sweep the contract accepts (issue 18).

Any finite sweep within the contract's limits gives a fit or a domain refusal
(`fitting.common.InsufficientData`), never another exception, and never a per-scale optimum
outside the limits; a sweep with no minimum gives bounded, flagged optima, not 1e97 or an
OverflowError; the bowl fit takes a bounded number of steps whatever the data's shape.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import fitting.surface
from fitting.common import InsufficientData, distinct_log_values, distinct_logs, unique_rows
from fitting.optima import MAX_BEYOND_SWEEP, OPTIMUM_LIMITS, analyse_sweeps
from fitting.runs import RunTable
from fitting.study_fit import fit_study
from fitting.surface import linear_bootstrap
from service.limits import RUN_LIMITS

LIMITS = {axis: RUN_LIMITS[axis].high for axis in OPTIMUM_LIMITS}


def test_the_engine_bounds_optima_by_the_contracts_limits() -> None:
    assert OPTIMUM_LIMITS == LIMITS


def no_minimum_sweep(slope: float = 0.01) -> RunTable:
    """Four scales whose loss falls steadily with the learning rate over 1e-4…1e-1 (issue 18's
    odd data: no minimum at any scale), a small bowl in the batch size."""
    records = []
    for n in (1e8, 2e8, 4e8, 8e8):
        for lr in np.geomspace(1e-4, 1e-1, 7):
            for bs in (64, 128, 256):
                loss = 3.0 - slope * math.log(lr) + 0.01 * math.log(bs / 128) ** 2 - 0.1 * math.log(n / 1e8)
                records.append(
                    {"n_params": n, "tokens": 20 * n, "learning_rate": lr, "batch_size": bs, "final_loss": loss}
                )
    return RunTable.from_records(records)


@pytest.mark.parametrize("slope", [0.01, 0.002, 0.05])
def test_a_sweep_without_a_minimum_gives_bounded_flagged_optima(slope: float) -> None:
    analysis = analyse_sweeps(no_minimum_sweep(slope), bootstrap=20)
    for optimum in analysis.optima:
        lr = optimum.optimum["learning_rate"]
        assert lr.status in ("above_sweep", "best_run"), lr
        # never further than MAX_BEYOND_SWEEP past the largest value swept (0.1), never inf
        assert 0 < lr.value.low <= lr.value.value <= lr.value.high <= 0.1 * math.exp(MAX_BEYOND_SWEEP) * (1 + 1e-9)
        assert any("learning rate" in flag for flag in optimum.flags)


def test_the_bowl_fit_takes_a_bounded_number_of_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sharp LR bowl on a coarse replicated grid (the shape whose fit took 23 s at 100k runs)."""
    from bench.shapes import columns

    c = columns("sharp", 5000)
    runs = RunTable(
        **{k: c[k] for k in ("n_params", "tokens", "width", "depth", "learning_rate", "batch_size", "final_loss")},
        seq_len=np.full(5000, 2048.0),
        weight_decay=np.zeros(5000),
        status=np.full(5000, "completed", dtype=object),
    )
    steps: list[int] = []
    real = fitting.surface.least_squares

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        solution = real(*args, **kwargs)
        steps.append(solution.nfev)
        return solution

    monkeypatch.setattr(fitting.surface, "least_squares", counted)
    analysis = analyse_sweeps(runs, bootstrap=10)
    assert steps and len(steps) <= 4 and max(steps) <= fitting.surface.MAX_STEPS
    assert analysis.bowl is not None and analysis.bowl.success
    assert not any("did not converge" in w for w in analysis.warnings)
    # 1–2 learning rates lie within 1% of each scale's best: the bowl is fitted to the runs up
    # to 20% above it, says so, and still places every optimum near the truth.
    assert any("fitted to the runs up to 20%" in w for w in analysis.warnings)
    for scale, optimum in zip(analysis.scales, analysis.optima):
        truth = 3e-3 * (scale.n_params / 1e8) ** -0.3
        assert optimum.optimum["learning_rate"].value.value == pytest.approx(truth, rel=0.2)


AXIS_VALUES = {
    "learning_rate": st.floats(1e-6, 10.0),
    "batch_size": st.integers(1, 100_000_000),
    "weight_decay": st.one_of(st.just(0.0), st.floats(1e-4, 100.0)),
}


@st.composite
def sweeps(draw: st.DrawFn) -> RunTable:
    """1–4 scales within the limits, a small grid of hyperparameters each, losses from a random
    bowl or arbitrary positive numbers, some runs diverged or failed."""
    n_scales = draw(st.integers(1, 4))
    records = []
    shaped = draw(st.booleans())
    centre = [draw(st.floats(-9.0, 2.0)), draw(st.floats(0.0, 15.0))]
    curvature = draw(st.floats(0.0, 1.0))
    for _ in range(n_scales):
        n = draw(st.floats(1e3, 1e15))
        d = draw(st.floats(1.0, 1e16))
        width = draw(st.one_of(st.none(), st.integers(1, 1_000_000)))
        lrs = draw(st.lists(AXIS_VALUES["learning_rate"], min_size=1, max_size=6, unique=True))
        bss = draw(st.lists(AXIS_VALUES["batch_size"], min_size=1, max_size=4, unique=True))
        wd = draw(AXIS_VALUES["weight_decay"])
        for lr in lrs:
            for bs in bss:
                status = draw(st.sampled_from(["completed"] * 8 + ["diverged", "failed"]))
                if shaped:
                    z = (math.log(lr) - centre[0], math.log(bs) - centre[1])
                    loss = 2.0 + curvature * (z[0] ** 2 + 0.1 * z[1] ** 2) + draw(st.floats(-0.01, 0.01))
                else:
                    loss = draw(st.floats(1e-6, 1e6))
                records.append(
                    {
                        "n_params": n,
                        "tokens": d,
                        "width": width,
                        "learning_rate": lr,
                        "batch_size": bs,
                        "weight_decay": wd,
                        "status": status,
                        "final_loss": loss if status == "completed" else None,
                    }
                )
    return RunTable.from_records(records)


# A fixed set of examples (derandomized, no example database): CI runs the same 30 sweeps every
# time; run with more examples locally to search further (it found the laws.py case below).
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(sweeps())
def test_any_sweep_within_the_limits_fits_or_is_refused(runs: RunTable) -> None:
    note(repr({k: getattr(runs, k).tolist() for k in ("n_params", "tokens", "width", "learning_rate", "batch_size")}))
    note(repr({k: getattr(runs, k).tolist() for k in ("weight_decay", "final_loss", "status")}))
    try:
        fit = fit_study(runs, bootstrap=10, seq_len=2048)
    except InsufficientData:
        return  # a domain refusal: the service answers it with 409
    for optimum in fit.optima:
        for axis, found in optimum.optimum.items():
            iv = found.value
            assert all(math.isfinite(v) for v in (iv.value, iv.low, iv.high)), (axis, iv)
            assert 0 <= iv.low <= iv.value <= iv.high <= LIMITS[axis] * (1 + 1e-9), (axis, iv)
            if axis != "weight_decay":
                assert iv.low > 0, (axis, iv)


def test_a_sweep_the_property_search_found_fits_or_is_refused() -> None:
    """One scale of 18 runs at losses 0.5 and 1.0 plus two runs at 1e-6 at another token budget:
    an earlier engine's model average met a -inf evidence and `rng.choice` got NaN probabilities."""
    lrs = [1.0, 3.0, 5.0, 1.9375, 2.0, 9.0]
    losses = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 1.0, 0.5, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5]
    records = [
        {"n_params": 1e3, "tokens": 1.0, "learning_rate": lr, "batch_size": bs, "final_loss": losses[3 * i + k]}
        for i, lr in enumerate(lrs)
        for k, bs in enumerate((1, 176, 32891136))
    ]
    records += [
        {"n_params": 1e3, "tokens": 2.0, "learning_rate": lr, "batch_size": 1, "final_loss": 1e-6}
        for lr in (2.0, 2.125)
    ]
    with contextlib.suppress(InsufficientData):  # a refusal is a fine answer; the ValueError is not
        fit_study(RunTable.from_records(records), bootstrap=10, seq_len=2048)


def test_a_dense_random_sweep_has_many_distinct_values_spanning_it() -> None:
    rng = np.random.default_rng(3)
    lr = np.exp(rng.uniform(math.log(1e-4), math.log(1e-1), 12_500))  # gaps ~0.0006 in log
    logs = distinct_logs(lr)
    assert logs[0] == pytest.approx(math.log(lr.min())) and logs[-1] == pytest.approx(math.log(lr.max()))
    assert np.all(np.diff(logs) > 0.01) and distinct_log_values(lr) > 300  # not the 2 a chain of gaps left
    grid = np.repeat([1e-3, 2e-3, 4e-3], 5) * (1 + 1e-12 * rng.standard_normal(15))  # replicates merge
    assert distinct_log_values(grid) == 3


def test_a_random_search_of_many_runs_per_scale_fits_its_laws() -> None:
    """Optuna-style random search: every run draws its own lr and batch (no two alike). With
    10,000 per scale (log gaps ~0.0007, below the 1% that tells values apart), each scale's optimum
    is bracketed and both laws are fitted near the truth."""
    rng = np.random.default_rng(7)
    records = []
    for n_params, tokens in ((2e7, 4e8), (1e8, 2e9), (6e8, 1.2e10)):
        lr_star, bs_star = 3e-3 * (n_params / 1e8) ** -0.3, 256 * (tokens / 2e9) ** 0.3
        lr = np.exp(rng.uniform(math.log(1e-4), math.log(1e-1), 10_000))
        bs = np.round(np.exp(rng.uniform(math.log(16.0), math.log(2048.0), 10_000)))
        loss = 2.0 + 0.05 * np.log(lr / lr_star) ** 2 + 0.02 * np.log(bs / bs_star) ** 2
        loss *= 1 + 0.002 * rng.standard_normal(lr.size)
        records += [
            {"n_params": n_params, "tokens": tokens, "learning_rate": a, "batch_size": b, "final_loss": c}
            for a, b, c in zip(lr.tolist(), bs.tolist(), loss.tolist())
        ]
    fit = fit_study(RunTable.from_records(records), bootstrap=10, seq_len=2048)
    assert {"learning_rate", "batch_size"} <= set(fit.laws)
    for optimum in fit.optima:
        lr_star = 3e-3 * (optimum.scale.n_params / 1e8) ** -0.3
        found = optimum.optimum["learning_rate"]
        assert found.status == "bracketed" and abs(math.log(found.value.value / lr_star)) < 0.1


def greedy_distinct_logs(x: np.ndarray, rel_tol: float) -> np.ndarray:
    """The definition `distinct_logs` implements by bisection: one pass over every sorted value."""
    u = np.unique(np.log(x[np.isfinite(x) & (x > 0)]))
    if u.size < 2 or np.all(np.diff(u) > rel_tol):
        return u
    kept = [float(u[0])]
    for value in u[1:].tolist():
        if value - kept[-1] > rel_tol:
            kept.append(value)
    if u[-1] > kept[-1]:
        kept[-1] = float(u[-1])
    return np.array(kept)


@settings(max_examples=300, deadline=None)
@given(
    logs=st.lists(st.floats(-12.0, 2.0), min_size=1, max_size=200),
    step=st.sampled_from([0.0, 0.005, 0.01]),
    rel_tol=st.sampled_from([0.01, 0.005, 1e-6]),
)
def test_distinct_logs_by_bisection_equals_the_greedy_pass(logs: list[float], step: float, rel_tol: float) -> None:
    # step > 0 snaps the values to multiples of it: gaps exactly at the tolerance, where rounding decides.
    v = np.array(logs)
    x = np.exp(np.round(v / step) * step if step else v)
    assert np.array_equal(distinct_logs(x, rel_tol), greedy_distinct_logs(x, rel_tol))


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 300),
    d=st.integers(1, 5),
    spread=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_unique_rows_equals_numpys_unique_over_rows(n: int, d: int, spread: int, seed: int) -> None:
    key = np.round(np.random.default_rng(seed).normal(size=(n, d)) * spread)
    first, inverse, counts = unique_rows(key)
    if n == 0:
        assert first.size == inverse.size == counts.size == 0
        return
    _, first_np, inverse_np, counts_np = np.unique(
        key, axis=0, return_index=True, return_inverse=True, return_counts=True
    )
    assert np.array_equal(first, first_np)
    assert np.array_equal(inverse, inverse_np.ravel())
    assert np.array_equal(counts, counts_np)


@pytest.mark.parametrize("n_groups", [8, 500])  # one matrix product per group / reduceat over many groups
def test_linear_bootstrap_sums_each_group_like_an_unbuffered_add(n_groups: int) -> None:
    rng = np.random.default_rng(n_groups)
    n, P, B = 2_000, 5, 30
    J, w, resid, base = rng.normal(size=(n, P)), rng.uniform(0.5, 2.0, n), rng.normal(size=n), rng.normal(size=P)
    groups = rng.integers(0, n_groups, n)
    groups[groups == 3] = 4  # a group no row belongs to
    counts = rng.poisson(1.0, size=(B, n_groups)).astype(float)
    A, g = np.zeros((n_groups, P, P)), np.zeros((n_groups, P))
    np.add.at(A, groups, (J * w[:, None])[:, :, None] * J[:, None, :])
    np.add.at(g, groups, (J * w[:, None]) * resid[:, None])
    Ab = np.einsum("bg,gij->bij", counts, A)
    Ab = Ab + (1e-9 * np.maximum(np.einsum("bii->bi", Ab).max(axis=1), 1e-12))[:, None, None] * np.eye(P)
    expected = base[None, :] - np.linalg.solve(Ab, (counts @ g)[:, :, None])[:, :, 0]
    np.testing.assert_allclose(linear_bootstrap(J, w, resid, base, groups, counts), expected, rtol=1e-9, atol=1e-12)

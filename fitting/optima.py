"""Per-scale optima of the swept hyperparameters (lr, batch size, weight decay).

Runs are grouped by scale (n_params, tokens, width, depth). The bottom of every scale's
loss bowl is fitted jointly (`fitting.surface`: a free centre per scale, one curvature and
asymmetry shared by all scales) in log space; the centre is the optimum. Each centre gets
a 90% interval from a bootstrap over the scale's runs (shape held fixed), never narrower
than the loss noise implies, and flags when it is not bracketed by the sweep, when
divergence caps it, when only two values bracket it, when the sweep is coordinate-wise
(each optimum bracketed along one axis only) or when the loss noise had to be assumed.

`analyse_sweeps` runs named stages, each a pure function of arrays:
  1. `find_outliers`      runs whose loss is implausible next to their neighbours;
  2. `classify_runs`      robust best per scale, runs that left the basin, usable runs;
  3. `weight_decay_offset`, `choose_axes`, `keep_modal_values`: the modelled axes;
  4. `select_rows`        the band of near-optimal runs per scale and where each axis is active;
  5. `interactions`       which axis pairs vary together (identified cross terms);
  6. `fit_scale_bowls`    the joint bowl fit; `bowl_outliers` re-checks runs against it;
  7. `loss_noise`         honest residual noise (measured, replicate and prior pooled);
  8. `bootstrap_centres`  per-scale centres with standard errors and bootstrap samples;
  9. `scale_optimum`      each scale's contract entry with its status and flags.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fitting.common import (
    AXES,
    AXIS_LABEL,
    InsufficientData,
    Interval,
    distinct_log_values,
    distinct_logs,
    scale_variables,
    spans_two_values,
    unique_rows,
)
from fitting.neighbours import fill_crowded_points, grid_neighbours, kdtree_neighbours
from fitting.published import STEP_LAW_NEAR_OPTIMAL
from fitting.runs import DIVERGED, RunTable
from fitting.surface import DEFAULT_BAND, BowlData, BowlSolution, fit_bowl, linear_bootstrap, select_band

# A completed run within this share of its scale's best loss is near-optimal: Step Law's band.
NEAR_OPTIMAL = STEP_LAW_NEAR_OPTIMAL
# A completed run more than 20% above its scale's (robust) best loss has left the basin (a
# loss spike or silent divergence); it bounds the optimum like a diverged run.
LEFT_BASIN = 0.20
_TOL = 0.01  # relative difference below which two hyperparameter values are the same

# Outliers. A run is implausible for its scale when its log loss is further than
# OUTLIER_Z robust standard deviations AND more than OUTLIER_MIN_DEV (relative) from what
# its OUTLIER_NEIGHBOURS nearest runs at the same scale predict (their median), in
# (log lr, log bs, log wd) measured in grid steps. The standard deviation is the larger of
# the study-wide robust scale (1.4826·MAD) of such residuals, the neighbours' own spread
# (large on a bowl wall, where neighbours differ a lot) and LOSS_NOISE. A run must also lie
# beyond its second-nearest-in-loss neighbour by the same margin, so that one good run
# beside a divergence cliff (neighbours split between ~2.6 and ~6.6) is not flagged. Runs
# far above the scale's lower quartile (by LEFT_BASIN) are not neighbours: they left the
# basin and are handled as diverged. After the bowl fit, runs in the band whose residual
# exceeds the same thresholds are left out too (`bowl_outliers`) and the fit is redone once.
OUTLIER_Z = 8.0
OUTLIER_MIN_DEV = 0.03
OUTLIER_NEIGHBOURS = 6
_MIN_NEIGHBOURS = 3  # a scale needs ≥ 4 completed runs before its runs can be judged
_MAX_NAMED = 5  # outliers named in the study warning
_MAX_LOG_DEV = 20.0
# A per-scale optimum is never reported further than this (log) beyond the values swept
# (10×), nor beyond the contract's limits on the hyperparameter (service/limits.py; a test
# checks they agree): past that the bowl says only "beyond the sweep".
MAX_BEYOND_SWEEP = math.log(10.0)
OPTIMUM_LIMITS = {"learning_rate": 10.0, "batch_size": 1e8, "weight_decay": 100.0}

# Loss noise. σ0 = 0.3% relative (0.003 in log loss) is the typical seed-to-seed scatter of
# a final LM loss at proxy scale (Step Law's smoothed losses scatter by ~0.1–0.5% around
# their bowls; seed replicates in published sweeps differ by a few thousandths). It enters
# as a scaled-inverse-χ² prior with NOISE_PRIOR_DOF pseudo-observations:
#   σ² = (Σ wᵢrᵢ² + SS_replicates + ν0·σ0²) / (dof_fit + dof_replicates + ν0).
# With fewer than MIN_NOISE_DOF measured degrees of freedom the noise is called assumed.
LOSS_NOISE = 0.003
NOISE_PRIOR_DOF = 5.0
MIN_NOISE_DOF = 6


@dataclass(frozen=True)
class Scale:
    """One proxy scale; NaN for an unknown width or depth."""

    n_params: float
    tokens: float
    width: float
    depth: float

    def variables(self) -> dict[str, float]:
        return scale_variables(self.n_params, self.tokens, self.width, self.depth)

    def to_dict(self) -> dict[str, float | None]:
        return {
            k: (None if not math.isfinite(v) else v)
            for k, v in {
                "n_params": self.n_params,
                "tokens": self.tokens,
                "width": self.width,
                "depth": self.depth,
            }.items()
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Scale:
        return cls(*(math.nan if d.get(k) is None else float(d[k]) for k in ("n_params", "tokens", "width", "depth")))


@dataclass(frozen=True)
class AxisOptimum:
    """Optimum of one hyperparameter at one scale.

    `status`: "bracketed" (inside the swept range), "above_sweep"/"below_sweep" (the
    estimate lies beyond the largest/smallest value swept: only a bound), "capped" (a
    diverged run caps it from above), "not_swept" (one value only: the value used, not an
    optimum), "best_run" (no bowl could be fitted: the best run's value).
    """

    value: Interval
    log_se: float
    n_values: int
    status: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.value.to_dict(), "log_se": self.log_se, "n_values": self.n_values, "status": self.status}


@dataclass(frozen=True)
class ScaleOptimum:
    """The estimated optimum at one scale (contract `optima` entry plus evidence)."""

    scale: Scale
    n_runs: int
    n_diverged: int
    loss: float
    optimum: Mapping[str, AxisOptimum]
    near_optimal: Mapping[str, tuple[float, float]]
    n_near_optimal: int
    flags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scale": self.scale.to_dict(), "n_runs": self.n_runs}
        for axis in AXES:
            o = self.optimum.get(axis)
            out[axis] = None if o is None else o.to_dict()
        out.update(
            loss=self.loss,
            n_diverged=self.n_diverged,
            near_optimal={"n_runs": self.n_near_optimal, **{a: list(v) for a, v in self.near_optimal.items()}},
            flags=list(self.flags),
        )
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScaleOptimum:
        opt = {}
        for a in AXES:
            o = d.get(a)
            if o is not None:
                opt[a] = AxisOptimum(
                    Interval.from_dict(o),
                    float(o.get("log_se", math.nan)),
                    int(o.get("n_values", 0)),
                    str(o.get("status", "")),
                )
        near = dict(d.get("near_optimal") or {})
        n_near = int(near.pop("n_runs", 0))
        return cls(
            Scale.from_dict(d["scale"]),
            int(d["n_runs"]),
            int(d.get("n_diverged", 0)),
            float(d["loss"]),
            opt,
            {a: (float(v[0]), float(v[1])) for a, v in near.items()},
            n_near,
            tuple(d.get("flags", ())),
        )


@dataclass(frozen=True)
class Outlier:
    """A run left out as implausible for its scale: its row in the RunTable, its names, why."""

    index: int
    run_id: int | None
    run_key: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "run_id": self.run_id, "run_key": self.run_key, "reason": self.reason}


@dataclass(frozen=True)
class NoiseEstimate:
    """Residual noise of log loss: pooled `sigma`, its measured part and degrees of freedom."""

    sigma: float  # pooled (what the intervals use)
    measured: float  # from the bowl residuals and replicates alone (NaN when dof = 0)
    dof: int  # measured degrees of freedom (bowl residual + replicate)
    replicate_dof: int
    assumed: bool  # dof < MIN_NOISE_DOF: the prior σ0 dominates

    def message(self) -> str:
        return (
            f"loss noise was assumed ({100 * LOSS_NOISE:.2g}% relative), not measured: "
            f"{self.dof} residual degree(s) of freedom; need ≥ {MIN_NOISE_DOF} more runs near the optimum "
            "than the bowl has parameters, or seed replicates (same scale and hyperparameters)"
        )


@dataclass(frozen=True, eq=False)
class SweepAnalysis:
    """Everything the law fits need from the per-scale stage (internal, not serialised)."""

    scales: tuple[Scale, ...]
    axes: tuple[str, ...]  # the modelled (swept) axes, order of the bowl's columns
    data: BowlData | None
    bowl: BowlSolution | None
    centre: np.ndarray  # (S, d) log optimum, NaN where the axis is not active
    centre_se: np.ndarray  # (S, d)
    optima: tuple[ScaleOptimum, ...]
    coordinate_wise: bool
    warnings: tuple[str, ...]
    n_runs: int
    log_lr_cap: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (S,) log lr of first divergence
    wd_offset: float = 0.0  # wd coordinate is log(wd + wd_offset)
    outliers: tuple[Outlier, ...] = ()
    noise: NoiseEstimate | None = None
    # (S, d, 2) log bounds (low, high) of optima that are bounds, not measurements: the best run at
    # the sweep's edge, a divergence cap, or an axis swept at the scale but not resolved by the bowl.
    # NaN where the optimum is measured (or the axis is not swept there); an open side is NaN too.
    bounds: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 2)))
    bound_softness: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (S, d) log sd of each bound
    # (S, d) how far (in grid steps of its own sweep) each bowl centre lies beyond the values swept
    # at its scale: 0 inside; NaN where the axis is not swept there or has no centre.
    overshoot: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))


def group_scales(runs: RunTable) -> tuple[tuple[Scale, ...], np.ndarray]:
    """Distinct scales and each run's scale index (NaN width/depth compare equal)."""
    cols = np.stack([runs.n_params, runs.tokens, runs.width, runs.depth], axis=1)
    key = np.where(np.isfinite(cols), np.round(np.log(np.where(cols > 0, cols, 1.0)), 9), -1e9)
    first_rows, inv, _ = unique_rows(key)
    first = [int(i) for i in first_rows]
    scales = tuple(Scale(*(float(cols[i, j]) for j in range(4))) for i in first)
    order = sorted(
        range(len(scales)), key=lambda s: (scales[s].n_params, scales[s].tokens, scales[s].width, scales[s].depth)
    )
    remap = np.empty(len(scales), dtype=int)
    remap[order] = np.arange(len(scales))
    return tuple(scales[i] for i in order), remap[inv]


def _modal(x: np.ndarray) -> float:
    v, c = np.unique(np.round(x, 6), return_counts=True)
    return float(v[np.argmax(c)])


def _log_loss(runs: RunTable) -> np.ndarray:
    """log final loss where it is a positive finite number, NaN elsewhere."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(runs.completed & (runs.final_loss > 0), np.log(np.abs(runs.final_loss)), np.nan)


# Stage 1: outliers against neighbours --------------------------------------------------
def _grid_coordinates(runs: RunTable, idx: np.ndarray) -> np.ndarray:
    """(n, k) log lr, log bs, log wd of rows `idx` in units of each axis's median grid step.

    Axes with a single value are dropped; wd = 0 sits half the smallest positive value below.
    """
    wd = runs.weight_decay[idx]
    pos = wd[wd > 0]
    wd_x = wd + 0.5 * pos.min() if pos.size else np.ones_like(wd)
    cols = []
    for x in (runs.learning_rate[idx], runs.batch_size[idx], wd_x):
        lx = np.log(x)
        steps = np.diff(np.unique(np.round(lx, 6)))
        steps = steps[steps > _TOL]
        if steps.size:
            cols.append(lx / float(np.median(steps)))
    return np.column_stack(cols) if cols else np.zeros((idx.size, 1))


# Up to _DENSE_ROWS runs per scale the all-pairs distance matrix is sorted outright. Beyond,
# runs on few distinct grid points (up to _GRID_POINTS, or up to _DENSE_NEIGHBOURS with ≥ 4
# runs each) get their neighbours from distances between the points; the rest from a k-d tree.
_DENSE_ROWS = 256
_GRID_POINTS = 256
_DENSE_NEIGHBOURS = 2000


def nearest_neighbours(Z: np.ndarray, kk: int) -> np.ndarray:
    """(n, kk) positions of each row's kk nearest other rows of `Z` (Euclidean).

    Ties are broken by position, as a stable argsort of the full distance matrix would;
    callers use only the set of neighbours. Small inputs do exactly that; a sweep is a grid,
    so rows on few distinct points get their neighbours from distances between the points;
    many distinct points go to a k-d tree (`fitting.neighbours`): sorting all-pairs distances
    took 30 s at 12.5k distinct runs per scale and 0.7 s per scale of 2,000; the points'
    loop 0.8 s for 2,000 points of one run each.
    """
    n = Z.shape[0]
    if n <= _DENSE_ROWS:
        D = np.sqrt(((Z[:, None, :] - Z[None, :, :]) ** 2).sum(-1))
        np.fill_diagonal(D, np.inf)
        return np.argsort(D, axis=1, kind="stable")[:, :kk]
    first, inverse, counts = unique_rows(Z)
    points = Z[first]
    n_points = points.shape[0]
    if n_points <= _GRID_POINTS or (n_points <= _DENSE_NEIGHBOURS and 4 * n_points <= n):
        return _grid_neighbours(points, inverse, counts, kk)
    if 4 * n_points <= n:  # runs repeated on too many points for their distance matrix
        return grid_neighbours(points, inverse, counts, kk)
    return kdtree_neighbours(Z, kk)


def _grid_neighbours(points: np.ndarray, inverse: np.ndarray, counts: np.ndarray, kk: int) -> np.ndarray:
    """`nearest_neighbours` of rows that sit on few distinct `points` (row i is points[inverse[i]])."""
    n = inverse.size
    by_point = np.argsort(inverse, kind="stable")
    members = np.split(by_point, np.cumsum(counts)[:-1])  # by position
    DP = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
    out = np.empty((n, kk), dtype=np.intp)
    crowded = fill_crowded_points(by_point, inverse, counts, kk, out)  # points with > kk runs: each other
    for p in np.flatnonzero(~crowded).tolist():
        own = members[p]
        others = counts.copy()
        others[p] -= 1
        order = np.argsort(DP[p], kind="stable")
        reached = np.cumsum(others[order])
        t = DP[p][order[np.searchsorted(reached, kk)]]
        inner = np.concatenate([members[q] for q in np.flatnonzero(DP[p] < t)])  # holds `own`
        at_t = np.sort(np.concatenate([members[q] for q in np.flatnonzero(DP[p] == t)]))
        tied = at_t[: kk - (inner.size - 1)]
        for i in own:
            out[i] = np.concatenate([inner[inner != i], tied])
    return out


def neighbour_predictions(
    runs: RunTable, sidx: np.ndarray, n_scales: int, k: int = OUTLIER_NEIGHBOURS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per run: median, 2nd-lowest and robust spread of the log losses of its k nearest runs at its scale.

    Neighbours are completed runs of the same scale within LEFT_BASIN of the scale's lower
    quartile (runs that left the basin are no guide to the basin). Returns (pred, second,
    spread, n_neighbours), NaN / 0 where a run has fewer than _MIN_NEIGHBOURS neighbours.
    """
    y = _log_loss(runs)
    ok = np.isfinite(y) & (runs.learning_rate > 0) & (runs.batch_size > 0)
    pred, second, spread = (np.full(len(runs), np.nan) for _ in range(3))
    n_nb = np.zeros(len(runs), dtype=int)
    for s in range(n_scales):
        idx = np.flatnonzero(ok & (sidx == s))
        if idx.size == 0:
            continue
        idx = idx[y[idx] <= np.percentile(y[idx], 25) + math.log1p(LEFT_BASIN)]
        if idx.size < _MIN_NEIGHBOURS + 1:
            continue
        Z = _grid_coordinates(runs, idx)
        kk = min(k, idx.size - 1)
        yn = y[idx][nearest_neighbours(Z, kk)]
        med = np.median(yn, axis=1)
        pred[idx] = med
        second[idx] = np.sort(yn, axis=1)[:, 1]
        spread[idx] = 1.4826 * np.median(np.abs(yn - med[:, None]), axis=1)
        n_nb[idx] = kk
    return pred, second, spread, n_nb


def find_outliers(runs: RunTable, sidx: np.ndarray, n_scales: int) -> tuple[Outlier, ...]:
    """Runs whose loss is implausibly far below what their neighbours at the scale predict.

    Low losses are the dangerous ones: one would become the scale's best and push good
    runs out of the basin. High losses inside the band are checked against the fitted
    bowl (`bowl_outliers`); higher ones are handled as having left the basin.
    """
    y = _log_loss(runs)
    pred, second, spread, n_nb = neighbour_predictions(runs, sidx, n_scales)
    r = y - pred
    seen = np.isfinite(r)
    if not np.any(seen):
        return ()
    sigma = max(1.4826 * float(np.median(np.abs(r[seen] - np.median(r[seen])))), LOSS_NOISE)
    with np.errstate(invalid="ignore"):
        th = np.maximum(OUTLIER_Z * np.maximum(sigma, spread), math.log1p(OUTLIER_MIN_DEV))
        low = seen & (r < -th) & (y - second < -th)
    out = []
    for i in np.flatnonzero(low):
        p = math.exp(pred[i])
        out.append(
            _outlier(
                runs,
                int(i),
                f"loss {runs.final_loss[i]:.4g} is {100 * (1 - runs.final_loss[i] / p):.0f}% "
                f"below what its {n_nb[i]} nearest runs at this scale predict ({p:.4g})",
            )
        )
    return tuple(out)


def _outlier(runs: RunTable, i: int, reason: str) -> Outlier:
    rid = runs.run_id[i]
    return Outlier(i, int(rid) if np.isfinite(rid) else None, runs.run_key[i], reason)


def outlier_warning(runs: RunTable, outliers: tuple[Outlier, ...]) -> str | None:
    if not outliers:
        return None
    named = ", ".join(runs.label(o.index) for o in outliers[:_MAX_NAMED])
    more = f" and {len(outliers) - _MAX_NAMED} more" if len(outliers) > _MAX_NAMED else ""
    return (
        f"{len(outliers)} run(s) left out as implausible for their scale (loss far from what neighbouring runs "
        f"or the fitted bowl predict): {named}{more}; check them (e.g. {outliers[0].reason})"
    )


# Stage 2: classify runs --------------------------------------------------------------
@dataclass(frozen=True)
class RunClasses:
    """Masks over the RunTable rows, and each scale's best loss among plausible runs."""

    best: np.ndarray  # (S,) best completed loss, outliers excluded
    left: np.ndarray  # completed but > LEFT_BASIN above the best
    diverged: np.ndarray  # status diverged, or left the basin
    usable: np.ndarray  # completed, plausible, in the basin, lr and bs positive
    excluded: np.ndarray  # outliers


def classify_runs(runs: RunTable, sidx: np.ndarray, n_scales: int, excluded: np.ndarray) -> RunClasses:
    """Best loss per scale (outliers left out), runs that left the basin, and usable runs."""
    ok = np.isfinite(_log_loss(runs)) & ~excluded
    best = np.full(n_scales, np.inf)
    np.minimum.at(best, sidx[ok], runs.final_loss[ok])
    with np.errstate(invalid="ignore"):
        left = ok & (runs.final_loss > (1 + LEFT_BASIN) * best[sidx])
    diverged = (runs.status == DIVERGED) | left
    usable = ok & ~left & (runs.learning_rate > 0) & (runs.batch_size > 0)
    return RunClasses(best, left, diverged, usable, excluded)


# Stage 3: modelled axes --------------------------------------------------------------
def weight_decay_offset(weight_decay: np.ndarray, usable: np.ndarray) -> float:
    """wd0 such that the wd coordinate is log(wd + wd0): half the smallest positive wd when 0 is swept, else 0.

    Weight decay 0 (no decay) is a legitimate, often-swept value that log space cannot hold;
    the offset puts wd = 0 one grid step below the sweep and leaves large wd in log scale.
    """
    pos = weight_decay[usable & (weight_decay > 0)]
    return 0.5 * float(pos.min()) if pos.size and np.any(usable & (weight_decay == 0)) else 0.0


def choose_axes(
    hp: Mapping[str, np.ndarray], usable: np.ndarray, sidx: np.ndarray, n_scales: int
) -> tuple[tuple[str, ...], list[str]]:
    """An axis is modelled if some scale sweeps it over ≥ 3 values (else its curvature is unknown)."""
    axes, warnings = [], []
    for a in AXES:
        ok = usable & (hp[a] > 0)
        n = max((distinct_log_values(hp[a][ok & (sidx == s)], _TOL) for s in range(n_scales)), default=0)
        if n >= 3:
            axes.append(a)
        elif n == 2:
            warnings.append(
                f"{AXIS_LABEL[a]} takes only 2 values at any scale; need ≥ 3 at one scale to locate its optimum"
            )
    return tuple(axes), warnings


def keep_modal_values(
    hp: Mapping[str, np.ndarray], usable: np.ndarray, sidx: np.ndarray, n_scales: int, axes: tuple[str, ...]
) -> tuple[np.ndarray, list[str]]:
    """Hyperparameters that are not modelled must not vary inside a scale: keep each scale's modal value."""
    warnings = []
    for a in AXES:
        if a in axes:
            continue
        keep = np.zeros_like(usable)
        for s in range(n_scales):
            m = usable & (sidx == s)
            if np.any(m):
                mode = _modal(hp[a][m])
                keep |= m & (np.abs(np.round(hp[a], 6) - mode) <= _TOL * abs(mode))
        dropped = int(np.count_nonzero(usable & ~keep))
        if dropped:
            warnings.append(f"{dropped} run(s) left out: {AXIS_LABEL[a]} varies within a scale but too little to model")
        usable = keep
    return usable, warnings


# Stage 4–5: band, active axes, interactions ------------------------------------------
def select_rows(
    hp: Mapping[str, np.ndarray],
    axes: tuple[str, ...],
    y: np.ndarray,
    usable: np.ndarray,
    sidx: np.ndarray,
    n_scales: int,
    band: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(in_band mask, active (S, d), n_values (S, d)): the band of each scale and where each axis varies in it."""
    idx = np.flatnonzero(usable)
    in_band = np.zeros(y.shape[0], dtype=bool)
    in_band[idx[select_band(y[idx], sidx[idx], n_scales, band)]] = True
    d = len(axes)
    active = np.zeros((n_scales, d), dtype=bool)
    n_values = np.zeros((n_scales, d), dtype=int)
    for s in range(n_scales):
        m = usable & (sidx == s)
        for j, a in enumerate(axes):
            n_values[s, j] = distinct_log_values(hp[a][m], _TOL)
            active[s, j] = spans_two_values(hp[a][in_band & (sidx == s)], _TOL)
    return in_band, active, n_values


def interactions(U: np.ndarray, usable: np.ndarray, sidx: np.ndarray, n_scales: int) -> np.ndarray:
    """(d, d) lower-triangular pairs that ≥ 3 runs at one scale move together away from the modal values."""
    d = U.shape[1]
    cross = np.zeros((d, d), dtype=bool)
    for s in range(n_scales):
        m = usable & (sidx == s)
        if not np.any(m):
            continue
        # Moves are measured from each axis's most common value (a coordinate-wise study's baseline).
        b = np.array([_modal(U[m][:, j]) for j in range(d)])
        moved = np.abs(np.round(U[m], 6) - b) > _TOL
        for j in range(d):
            for k in range(j):
                if np.count_nonzero(moved[:, j] & moved[:, k]) >= 3:
                    cross[j, k] = True
    return cross


# Stage 6: the joint bowl, and outliers against it ------------------------------------
# A band with more runs than this is fitted on its replicates pooled per grid cell (at 20,000,
# 40 scales' 8,000 band runs made each least-squares step a 0.2 s SVD).
POOL_REPLICATES_ABOVE = 5_000


def fit_scale_bowls(
    U: np.ndarray,
    y: np.ndarray,
    in_band: np.ndarray,
    sidx: np.ndarray,
    active: np.ndarray,
    cross: np.ndarray,
    axes: tuple[str, ...] = (),
) -> tuple[BowlData, BowlSolution | None, np.ndarray, list[str]]:
    """Fit the bowl with a free centre per scale to the band's runs; warn when it fails or does not converge.

    The cubic asymmetry is fitted only when the band has MIN_NOISE_DOF distinct points (scale
    and hyperparameters; replicates count once) more than the model with it has parameters;
    otherwise κ = 0 (a handful of points cannot identify it). An axis that no scale sweeps
    over ≥ 3 values inside its band has no identified curvature: its centres would be any
    point of a flat valley (a sharp bowl seen at 2 learning rates per scale), so it is left
    out of the bowl and its optima are the best runs' values.
    """
    S, d = active.shape
    rows = np.flatnonzero(in_band)
    warnings: list[str] = []
    levels = np.zeros((S, d), dtype=int)
    for s in np.unique(sidx[rows]):
        at = rows[sidx[rows] == s]
        for j in range(d):
            levels[s, j] = distinct_log_values(np.exp(U[at, j]), _TOL)
    flat = active.any(axis=0) & (levels.max(axis=0, initial=0) < 3)
    if flat.any():
        active = active & ~flat
        warnings += [
            f"{AXIS_LABEL.get(axes[j], axes[j]) if axes else f'axis {j}'}: no scale has ≥ 3 distinct values within "
            "its band of near-optimal runs, so the bowl's curvature along it is not identified; its optima are "
            "the best runs' values (sweep more finely around the optimum)"
            for j in np.flatnonzero(flat)
        ]
    if rows.size > POOL_REPLICATES_ABOVE:
        data = pooled_replicates(U[rows], y[rows], sidx[rows], active, cross)
    else:
        data = BowlData(u=U[rows], y=y[rows], scale=sidx[rows], active=active, cross=cross, n_scales=S)
    designs, col_of = _one_hot(active)
    beta0 = tuple(np.array([_band_centroid(data, s, j) for s in range(S) if active[s, j]]) for j in range(d))
    n_quad = np.unique(data.scale).size + int(active.sum()) + d + int(np.count_nonzero(np.tril(cross, -1)))
    n_points = unique_rows(np.column_stack([data.scale, np.round(data.u / _TOL)]))[0].size if rows.size else 0
    cubic = n_points - n_quad - d >= MIN_NOISE_DOF
    try:
        fit = fit_bowl(data, designs, beta0, cubic=cubic)
    except (np.linalg.LinAlgError, ValueError) as e:  # pragma: no cover - defensive
        warnings.append(f"the loss-surface fit failed ({e}); per-scale optima fall back to the best run")
        return data, None, col_of, warnings
    if not fit.success:
        warnings.append(
            "the per-scale loss-surface fit did not converge (least squares stopped on its step "
            "budget): the optima and their intervals may be inaccurate"
        )
    return data, fit, col_of, warnings


def pooled_replicates(
    u: np.ndarray, y: np.ndarray, scale: np.ndarray, active: np.ndarray, cross: np.ndarray
) -> BowlData:
    """The band's runs with replicates (same scale, same hyperparameters within _TOL) pooled into
    one row each: mean log loss, weight = number of runs. Least squares on these rows equals
    least squares on the runs up to a constant, at a cost set by the grid, not the run count."""
    key = np.column_stack([scale, np.round(u / _TOL)])
    first, g, n = unique_rows(key)
    mean_y = np.bincount(g, weights=y) / n
    return BowlData(u[first], mean_y, scale[first], active, cross, active.shape[0], weight=n.astype(float))


def bowl_outliers(runs: RunTable, fit: BowlSolution, data: BowlData, rows: np.ndarray) -> tuple[Outlier, ...]:
    """Band runs whose loss is further from the fitted bowl than OUTLIER_Z·σ and OUTLIER_MIN_DEV.

    σ is the fit's robust residual scale, floored at LOSS_NOISE; only scales with more band
    runs than _MIN_NEIGHBOURS are judged (with fewer, the bowl is forced through each run).
    With replicates pooled (a very large study) rows are grid cells, not runs: a single
    run is then judged against its neighbours only (`find_outliers`).
    """
    if data.weight is not None:
        return ()
    sigma = max(fit.noise, LOSS_NOISE)
    th = max(OUTLIER_Z * sigma, math.log1p(OUTLIER_MIN_DEV))
    counts = np.bincount(data.scale, minlength=data.n_scales)
    out = []
    for r_i in np.flatnonzero((np.abs(fit.resid) > th) & (counts[data.scale] > _MIN_NEIGHBOURS)):
        i = int(rows[r_i])
        p = math.exp(data.y[r_i] + fit.resid[r_i])
        side = "above" if fit.resid[r_i] < 0 else "below"
        out.append(
            _outlier(
                runs,
                i,
                f"loss {runs.final_loss[i]:.4g} is {100 * abs(runs.final_loss[i] / p - 1):.0f}% "
                f"{side} the loss bowl fitted to its scale's near-optimal runs ({p:.4g})",
            )
        )
    return tuple(out)


# Stage 7: noise ----------------------------------------------------------------------
def replicate_scatter(
    hp: Mapping[str, np.ndarray], y: np.ndarray, usable: np.ndarray, sidx: np.ndarray
) -> tuple[float, int]:
    """(Σ squared deviations from group means, dof) over groups of usable runs at the same scale and hyperparameters."""
    idx = np.flatnonzero(usable)
    if idx.size < 2:
        return 0.0, 0
    key = np.column_stack([sidx[idx]] + [np.round(np.log(np.maximum(hp[a][idx], 1e-300)) / _TOL) for a in AXES])
    _, g, _ = unique_rows(key)
    n = np.bincount(g)
    mean = np.bincount(g, weights=y[idx]) / n
    ss = float(np.sum((y[idx] - mean[g]) ** 2))
    return ss, int(np.sum(n - 1))


def loss_noise(fit: BowlSolution | None, replicate_ss: float, replicate_dof: int) -> NoiseEstimate:
    """Residual noise of log loss pooled with the LOSS_NOISE prior (scaled-inverse-χ², NOISE_PRIOR_DOF).

    The bowl contributes n·σ̂² with σ̂ its robust (MAD) residual scale, i.e. dof·σ² with the
    MAD's shrinkage by the fitted parameters undone; replicates contribute their scatter.
    """
    dof_fit = fit.dof if fit is not None else 0
    ss_fit = fit.resid.size * fit.noise**2 if fit is not None and dof_fit > 0 else 0.0
    dof = dof_fit + replicate_dof
    ss = ss_fit + replicate_ss
    sigma = math.sqrt((ss + NOISE_PRIOR_DOF * LOSS_NOISE**2) / (dof + NOISE_PRIOR_DOF))
    measured = math.sqrt(ss / dof) if dof > 0 else math.nan
    return NoiseEstimate(sigma, measured, dof, replicate_dof, dof < MIN_NOISE_DOF)


# Stage 8: per-scale centres ----------------------------------------------------------
def bootstrap_centres(
    fit: BowlSolution, data: BowlData, col_of: np.ndarray, sigma: float, bootstrap: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre (S, d), centre_se (S, d), samples (B, S, d)): each scale's bowl centre and its uncertainty.

    A bootstrap over the scale's runs (one Gauss–Newton step, shape held fixed) gives the
    samples; the Gauss–Newton standard error σ·√diag((JᵀWJ)⁻¹) with the pooled noise σ is a
    floor, so a resample that drops one of only two or three runs along an axis (and pins
    the centre) or a near-perfect fit to a handful of runs cannot give a falsely narrow interval.
    """
    S, d = data.active.shape
    centre = np.full((S, d), np.nan)
    centre_se = np.full((S, d), np.nan)
    boot = np.full((max(bootstrap, 0), S, d), np.nan)
    offs = np.cumsum([0] + [b.size for b in fit.beta])
    for s in range(S):
        js = [j for j in range(d) if data.active[s, j]]
        for j in js:
            centre[s, j] = fit.beta[j][col_of[s, j]]
        rs = np.flatnonzero(data.scale == s)
        if not js or bootstrap <= 0 or rs.size < 2:
            continue
        cols = np.array([s] + [S + offs[j] + col_of[s, j] for j in js])
        if data.weight is None:
            counts = rng.multinomial(rs.size, np.full(rs.size, 1.0 / rs.size), size=bootstrap).astype(float)
        else:  # pooled replicates: resample runs, each pooled row scaled by the share of its runs drawn
            n_c = data.weight[rs]
            counts = rng.multinomial(int(n_c.sum()), n_c / n_c.sum(), size=bootstrap) / n_c
        samp = linear_bootstrap(
            fit.jac[np.ix_(rs, cols)], fit.weights[rs], fit.resid[rs], fit.params[cols], np.arange(rs.size), counts
        )
        Js = fit.jac[np.ix_(rs, cols)] * np.sqrt(fit.weights[rs])[:, None]
        floor = sigma * np.sqrt(np.diag(np.linalg.pinv(Js.T @ Js)))
        for c, j in enumerate(js):
            col = samp[:, 1 + c]
            sd_boot = float(np.std(col))
            se = max(sd_boot, float(floor[1 + c]))
            if se > sd_boot:  # the floor decides: its (normal) distribution, not a rescaled degenerate resample
                col = centre[s, j] + se * rng.standard_normal(bootstrap)
            boot[:, s, j] = col
            centre_se[s, j] = se
    return centre, centre_se, boot


def divergence_caps(learning_rate: np.ndarray, diverged: np.ndarray, sidx: np.ndarray, n_scales: int) -> np.ndarray:
    """(S,) log of the smallest learning rate that diverged (or left the basin) at each scale; +inf if none."""
    cap = np.full(n_scales, np.inf)
    ok = diverged & (learning_rate > 0)
    np.minimum.at(cap, sidx[ok], np.log(learning_rate[ok]))
    return cap


def _caps_learning_rate(runs: RunTable, cl: RunClasses, sidx: np.ndarray, n_scales: int) -> np.ndarray:
    """Runs that bound the learning rate from above: diverged ones, and runs that left the basin at a
    learning rate above their scale's best run (a too-small learning rate only trains slowly)."""
    best_lr = np.full(n_scales, np.inf)
    loss = np.where(cl.usable, runs.final_loss, np.inf)
    for s in range(n_scales):
        m = np.flatnonzero(sidx == s)
        if m.size and np.isfinite(loss[m]).any():
            best_lr[s] = runs.learning_rate[m[np.argmin(loss[m])]]
    caps: np.ndarray = (runs.status == DIVERGED) | (cl.left & (runs.learning_rate > best_lr[sidx]))
    return caps


# Stage 9: per-scale optima -----------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _Evidence:
    """What `scale_optimum` reads: the runs' classes and the fitted centres."""

    runs: RunTable
    sidx: np.ndarray
    classes: RunClasses
    usable: np.ndarray  # after the axis filters
    hp: Mapping[str, np.ndarray]  # wd shifted by wd_offset
    axes: tuple[str, ...]
    wd_offset: float
    centre: np.ndarray
    centre_se: np.ndarray
    boot: np.ndarray
    log_lr_cap: np.ndarray
    coordinate_wise: bool
    noise: NoiseEstimate


def scale_optimum(ev: _Evidence, s: int, scale: Scale) -> ScaleOptimum:
    """Scale s's optimum per axis (bowl centre, or the best run's value when no bowl applies), near-optimal ranges, flags."""
    runs, cl = ev.runs, ev.classes
    m_all = ev.sidx == s
    m = ev.usable & m_all
    flags: list[str] = []
    best = float(cl.best[s]) if np.isfinite(cl.best[s]) else math.nan
    near = runs.completed & m_all & ~cl.left & ~cl.excluded & (runs.final_loss <= (1 + NEAR_OPTIMAL) * cl.best[s])
    raw = {"learning_rate": runs.learning_rate, "batch_size": runs.batch_size, "weight_decay": runs.weight_decay}
    near_rng = {a: (float(raw[a][near].min()), float(raw[a][near].max())) for a in AXES if np.any(near)}
    opt: dict[str, AxisOptimum] = {}
    if not np.any(m):
        flags.append("no completed runs at this scale")
    else:
        ib = np.flatnonzero(m)[np.argmin(runs.final_loss[m])]
        for a in AXES:
            j = ev.axes.index(a) if a in ev.axes else -1
            if j >= 0 and np.isfinite(ev.centre[s, j]):
                opt[a] = _centre_optimum(ev, s, j, m, flags)
            elif not (a == "weight_decay" and np.all(ev.hp[a][m] == 0)):
                opt[a] = _best_run_optimum(ev, a, m, ib, near_rng, flags)
        if ev.noise.assumed and any(np.isfinite(ev.centre[s])):
            flags.append(ev.noise.message())
    n_out = int(np.count_nonzero(cl.excluded & m_all))
    if n_out:
        flags.append(f"{n_out} run(s) at this scale left out as implausible outliers")
    if ev.coordinate_wise:
        flags.append("bracketed along one axis at a time only (coordinate-wise ablations)")
    return ScaleOptimum(
        scale, int(m_all.sum()), int((cl.diverged & m_all).sum()), best, opt, near_rng, int(near.sum()), tuple(flags)
    )


def _centre_optimum(ev: _Evidence, s: int, j: int, m: np.ndarray, flags: list[str]) -> AxisOptimum:
    """The bowl centre of axis j at scale s with its bootstrap interval and status (bracketed, beyond, capped).

    The centre is bounded like its samples: at most MAX_BEYOND_SWEEP (10×) past the values
    swept and never past the contract's limits (OPTIMUM_LIMITS). A bowl the runs barely
    curve (loss still falling at the edge of the sweep) has its centre anywhere beyond it:
    that is reported as the bound, with a flag, never as 1e97 (or an overflow).
    """
    a = ev.axes[j]
    vals = ev.hp[a][m]
    nv = distinct_log_values(vals, _TOL)
    lv = float(ev.centre[s, j])
    lo_sw, hi_sw = np.log(vals.min()), np.log(vals.max())
    offset = ev.wd_offset if a == "weight_decay" else 0.0
    lo_bound = lo_sw - MAX_BEYOND_SWEEP
    hi_bound = min(hi_sw + MAX_BEYOND_SWEEP, math.log(OPTIMUM_LIMITS[a] + offset))
    status = "bracketed"
    if lv > hi_bound:
        lv, status = hi_bound, "above_sweep"
        flags.append(
            f"{AXIS_LABEL[a]} optimum lies far above the largest value swept (the loss still falls there): "
            f"reported at {math.exp(hi_bound) - offset:.3g}, a lower bound only; extend the sweep"
        )
    elif lv < lo_bound:
        lv, status = lo_bound, "below_sweep"
        flags.append(
            f"{AXIS_LABEL[a]} optimum lies far below the smallest value swept (the loss still falls there): "
            f"reported at {math.exp(lo_bound) - offset:.3g}, an upper bound only; extend the sweep"
        )
    elif lv > hi_sw + _TOL:
        status = "above_sweep"
        flags.append(
            f"{AXIS_LABEL[a]} optimum lies above the largest value swept: only a lower bound; extend the sweep"
        )
    elif lv < lo_sw - _TOL:
        status = "below_sweep"
        flags.append(
            f"{AXIS_LABEL[a]} optimum lies below the smallest value swept: only an upper bound; extend the sweep"
        )
    samples = ev.boot[:, s, j]
    cap = ev.log_lr_cap[s]
    if a == "learning_rate" and lv >= cap:
        status = "capped"
        ok_lr = np.log(vals[vals < np.exp(cap)])
        lv = float(ok_lr.max()) if ok_lr.size else lo_sw
        samples = np.minimum(samples, cap)
        flags.append(f"learning-rate optimum capped by a diverged run at lr={np.exp(cap):.3g}")
    if nv == 2:
        flags.append(
            f"{AXIS_LABEL[a]} swept at 2 values only: the optimum relies on the curvature shared with other scales"
        )
    # An unidentified centre can have a huge standard error; ±_MAX_LOG_DEV (a factor of
    # ~5e8) is "unbounded" for any hyperparameter and keeps exp() finite; the limits hold too.
    low, high = max(lv - _MAX_LOG_DEV, lo_bound), min(lv + _MAX_LOG_DEV, max(hi_bound, lv))
    iv = Interval.exp_of(lv, np.clip(samples, low, high))
    if a == "weight_decay" and ev.wd_offset > 0:
        iv = Interval(*(max(v - ev.wd_offset, 0.0) for v in (iv.value, iv.low, iv.high)))
        if iv.value == 0.0:
            status = "below_sweep"
            flags.append("weight-decay optimum is at 0 (no decay beats the swept values)")
    return AxisOptimum(iv, float(ev.centre_se[s, j]), nv, status)


def _best_run_optimum(
    ev: _Evidence, a: str, m: np.ndarray, ib: int, near_rng: Mapping[str, tuple[float, float]], flags: list[str]
) -> AxisOptimum:
    """An axis without a bowl centre: the value used (one value swept) or the best run's value (unresolved)."""
    nv = distinct_log_values(ev.hp[a][m], _TOL)
    v = float(ev.hp[a][ib]) - (ev.wd_offset if a == "weight_decay" else 0.0)
    if nv <= 1:
        return AxisOptimum(Interval(v, v, v), math.nan, nv, "not_swept")
    line = _line_through(ev, a, m, ib)
    if not spans_two_values(ev.hp[a][line], _TOL):
        flags.append(
            f"{AXIS_LABEL[a]} optimum not resolved at this scale: the best run's value (no run varies "
            f"{AXIS_LABEL[a]} alone around it); interval = the near-optimal runs' range"
        )
        lo_n, hi_n = near_rng.get(a, (v, v))
        return AxisOptimum(Interval(v, min(lo_n, v), max(hi_n, v)), math.nan, nv, "best_run")
    cap = float(ev.log_lr_cap[ev.sidx[ib]]) if a == "learning_rate" else math.inf
    lo, hi, edge = _bracket(ev.hp[a][line], float(ev.hp[a][ib]), cap)
    off = ev.wd_offset if a == "weight_decay" else 0.0
    lo_v = max(math.exp(lo) - off, 0.0) if math.isfinite(lo) else float(ev.hp[a][line].min()) - off
    hi_v = math.exp(hi) - off if math.isfinite(hi) else float(ev.hp[a][line].max()) - off
    flags.append(
        f"{AXIS_LABEL[a]} optimum not resolved at this scale: the best run's value; "
        + (
            "it is at the sweep's edge, so the optimum may lie beyond it (only a bound): extend the sweep"
            if edge
            else "the interval runs half-way to the neighbouring values swept"
        )
    )
    return AxisOptimum(Interval(v, min(lo_v, v), max(hi_v, v)), math.nan, nv, "best_run")


def _line_through(ev: _Evidence, a: str, m: np.ndarray, ib: int) -> np.ndarray:
    """Runs of mask `m` on the line through run `ib` along axis `a`: every other modelled axis at ib's value.

    Only along such a line does the best run bracket the optimum of `a` between its neighbours
    (in a multi-axis grid the best run's value of one axis depends on the others).
    """
    line = m.copy()
    for b in ev.axes:
        if b != a:
            line &= np.abs(np.log(ev.hp[b] / ev.hp[b][ib])) <= _TOL
    return line


def _distinct_logs(values: np.ndarray) -> np.ndarray:
    """Sorted logs of the positive `values`, values within _TOL (log) of the last kept one merged."""
    return distinct_logs(values, _TOL)


def _bracket(values: np.ndarray, best: float, log_cap: float) -> tuple[float, float, bool]:
    """(low, high, at_edge): log bounds half-way from `best` to its neighbouring distinct `values`.

    An end of the sweep leaves that side open (−inf / +inf; a learning rate is still bounded by
    its divergence cap `log_cap`), and `at_edge` says so.
    """
    uniq = _distinct_logs(values)
    lb = math.log(best)
    i = int(np.argmin(np.abs(uniq - lb)))
    lo = (uniq[i - 1] + uniq[i]) / 2 if i > 0 else -math.inf
    hi = (uniq[i] + uniq[i + 1]) / 2 if i + 1 < uniq.size else log_cap
    return float(lo), float(hi), i == 0 or i + 1 == uniq.size


# A bound's softness: a fraction of the local grid step (noise can make a neighbour of the true best look best).
BOUND_SOFTNESS = 0.3


def optimum_bounds(ev: _Evidence, optima: tuple[ScaleOptimum, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(S, d, 2) log bounds and (S, d) softness of every optimum that is a bound rather than a measurement.

    Bounds come from the runs, not from an extrapolated bowl: "above_sweep" / "below_sweep"
    (the bowl's centre beyond the sweep) is a bound only when the scale's best run sits at that
    edge: the optimum lies beyond the half-way point between the edge value and its neighbour (a
    learning rate also below its divergence cap). "capped": below the cap, and above the
    half-way point under the largest learning rate that trained when the best run is there.
    "best_run" (swept, no bowl centre): half-way to the neighbouring values. All of these only
    where the scale varies this axis alone (a one-dimensional sweep, or a coordinate-wise study's
    line through its best run): in a grid over several coupled axes the best run's value of one
    axis is the optimum at its values of the others, not a bound on the joint optimum. Anything
    else (measured optima, unswept axes, a bowl centre beyond a sweep whose best run is inside it,
    multi-axis scales) stays NaN: neither a measurement nor a bound.
    """
    S, d = len(optima), len(ev.axes)
    bounds = np.full((S, d, 2), np.nan)
    soft = np.full((S, d), np.nan)
    for s, opt in enumerate(optima):
        m = ev.usable & (ev.sidx == s)
        if not np.any(m):
            continue
        ib = int(np.flatnonzero(m)[np.argmin(ev.runs.final_loss[m])])
        for j, a in enumerate(ev.axes):
            o = opt.optimum.get(a)
            vals = ev.hp[a][m]
            if o is None or o.status in ("bracketed", "not_swept") or not spans_two_values(vals, _TOL):
                continue
            cap = float(ev.log_lr_cap[s]) if a == "learning_rate" else math.inf
            u = _distinct_logs(vals)
            if not (ev.coordinate_wise or _one_axis_swept(ev, a, m)):
                # In a grid over several coupled axes the best run's value of one axis is the optimum
                # *at its values of the others* (e.g. along the LR–batch valley): no bound on the
                # joint optimum. Such a scale is left out of the law unless its bowl centre is inside.
                continue
            best = math.log(float(ev.hp[a][ib]))
            at_top, at_bottom = best >= u[-1] - _TOL, best <= u[0] + _TOL
            if o.status == "above_sweep" and at_top:
                lo, hi, step = (u[-1] + u[-2]) / 2, cap, u[-1] - u[-2]
            elif o.status == "below_sweep" and at_bottom:
                lo, hi, step = -math.inf, (u[0] + u[1]) / 2, u[1] - u[0]
            elif o.status == "capped":
                ok = u[u < cap]
                step = (ok[-1] - ok[-2]) if ok.size >= 2 else (u[1] - u[0])
                lo = ok[-1] - step / 2 if ok.size and best >= ok[-1] - _TOL else -math.inf
                hi = cap
            elif o.status == "best_run":
                line = _line_through(ev, a, m, ib)
                if not spans_two_values(ev.hp[a][line], _TOL):
                    continue
                lo, hi, _ = _bracket(ev.hp[a][line], float(ev.hp[a][ib]), cap)
                step = float(np.median(np.diff(u)))
            else:
                continue
            if math.isfinite(hi) and hi <= lo:  # a cap below the edge's half-way point: keep the edge's side
                hi = lo + step
            if not (math.isfinite(lo) or math.isfinite(hi)):
                continue
            bounds[s, j] = (lo if math.isfinite(lo) else np.nan, hi if math.isfinite(hi) else np.nan)
            soft[s, j] = BOUND_SOFTNESS * step
    return bounds, soft


def _one_axis_swept(ev: _Evidence, a: str, m: np.ndarray) -> bool:
    """Whether the runs `m` vary no modelled axis but `a` (a one-dimensional sweep)."""
    return not any(spans_two_values(ev.hp[b][m], _TOL) for b in ev.axes if b != a)


# The pipeline ------------------------------------------------------------------------
def analyse_sweeps(runs: RunTable, *, bootstrap: int = 200, seed: int = 0, band: float = DEFAULT_BAND) -> SweepAnalysis:
    """Per-scale optima of lr, bs, wd in log space with 90% intervals and flags.

    log loss = l0_s + ½ zᵀHz + Σκ z³, z = log h − log h*_s (shared H, κ; h*_s per scale).
    """
    if len(runs) == 0:
        raise InsufficientData("no runs: need completed runs with a final loss")
    if np.any(~np.isfinite(runs.n_params) | ~np.isfinite(runs.tokens)):
        raise InsufficientData("every run needs n_params and tokens")
    if not np.any(runs.completed):
        raise InsufficientData("no completed runs with a final loss")
    scales, sidx = group_scales(runs)
    S = len(scales)
    outliers = find_outliers(runs, sidx, S)
    for _ in range(2):  # a second pass when the bowl exposes further outliers
        excluded = np.zeros(len(runs), dtype=bool)
        excluded[[o.index for o in outliers]] = True
        st = _fit_stages(runs, sidx, S, excluded, band)
        if st.fit is None or st.data is None:
            break
        extra = bowl_outliers(runs, st.fit, st.data, np.flatnonzero(st.in_band))
        if not extra:
            break
        outliers = outliers + extra
    cl, axes, fit, data = st.classes, st.axes, st.fit, st.data
    warnings = [w for w in (outlier_warning(runs, outliers),) if w] + st.warnings
    noise = loss_noise(fit, *replicate_scatter(st.hp, st.y, st.usable, sidx))
    if noise.assumed and fit is not None:
        warnings.append(noise.message())
    S_d = (S, len(axes))
    centre, centre_se, boot = np.full(S_d, np.nan), np.full(S_d, np.nan), np.full((max(bootstrap, 0), *S_d), np.nan)
    if fit is not None and data is not None:
        centre, centre_se, boot = bootstrap_centres(
            fit, data, st.col_of, noise.sigma, bootstrap, np.random.default_rng(seed)
        )
    log_lr_cap = divergence_caps(runs.learning_rate, _caps_learning_rate(runs, cl, sidx, S), sidx, S)
    ev = _Evidence(
        runs,
        sidx,
        cl,
        st.usable,
        st.hp,
        axes,
        st.wd0,
        centre,
        centre_se,
        boot,
        log_lr_cap,
        st.coordinate_wise,
        noise,
    )
    optima = tuple(scale_optimum(ev, s, scales[s]) for s in range(S))
    bounds, softness = optimum_bounds(ev, optima)
    return SweepAnalysis(
        scales,
        axes,
        data,
        fit,
        centre,
        centre_se,
        optima,
        st.coordinate_wise,
        tuple(warnings),
        len(runs),
        log_lr_cap,
        st.wd0,
        tuple(outliers),
        noise,
        bounds,
        softness,
        centre_overshoot(ev),
    )


def centre_overshoot(ev: _Evidence) -> np.ndarray:
    """(S, d) distance of each bowl centre beyond its scale's swept values, in that sweep's grid steps."""
    S, d = ev.centre.shape
    out = np.full((S, d), np.nan)
    for s in range(S):
        m = ev.usable & (ev.sidx == s)
        for j, a in enumerate(ev.axes):
            c = ev.centre[s, j]
            vals = ev.hp[a][m]
            if not np.isfinite(c) or not spans_two_values(vals, _TOL):
                continue
            u = _distinct_logs(vals)
            step = float(np.median(np.diff(u)))
            out[s, j] = max(0.0, u[0] - c, c - u[-1]) / step
    return out


@dataclass(frozen=True, eq=False)
class _Stages:
    """What stages 2–6 (`_fit_stages`) give `analyse_sweeps` for one set of excluded runs."""

    classes: RunClasses
    axes: tuple[str, ...]  # the modelled axes, order of the bowl's columns
    hp: Mapping[str, np.ndarray]  # lr, bs, wd + wd0
    wd0: float  # the weight-decay axis is log(wd + wd0)
    usable: np.ndarray  # after the axis filters
    y: np.ndarray  # log loss (0 where not usable)
    in_band: np.ndarray  # rows of the bowl fit
    coordinate_wise: bool
    data: BowlData | None
    fit: BowlSolution | None
    col_of: np.ndarray  # (S, d) column of each active centre in the bowl's design
    warnings: list[str]


def _fit_stages(runs: RunTable, sidx: np.ndarray, S: int, excluded: np.ndarray, band: float) -> _Stages:
    """Stages 2–6 for a given set of excluded runs: classes, axes, band, interactions, bowl fit."""
    cl = classify_runs(runs, sidx, S, excluded)
    warnings: list[str] = []
    if np.any(cl.left):
        warnings.append(
            f"{int(cl.left.sum())} completed run(s) ended > {LEFT_BASIN:.0%} above their scale's best "
            "loss; treated as diverged"
        )
    n_bad = int(np.count_nonzero(runs.completed & ~(runs.final_loss > 0)))
    if n_bad:
        warnings.append(f"{n_bad} completed run(s) with a final loss ≤ 0 left out: losses are modelled in log space")
    wd0 = weight_decay_offset(runs.weight_decay, cl.usable)
    hp = {"learning_rate": runs.learning_rate, "batch_size": runs.batch_size, "weight_decay": runs.weight_decay + wd0}
    axes, w = choose_axes(hp, cl.usable, sidx, S)
    warnings += w
    usable = cl.usable
    if "weight_decay" in axes:
        if wd0 > 0:
            warnings.append(
                f"weight decay 0 was swept: the weight-decay axis is log(wd + {wd0:.3g}) "
                "(half the smallest positive value), so runs without decay bound the optimum from below"
            )
        usable = usable & (hp["weight_decay"] > 0)
    usable, w = keep_modal_values(hp, usable, sidx, S, axes)
    warnings += w
    d = len(axes)
    U = np.stack([np.log(hp[a]) for a in axes], axis=1) if d else np.zeros((len(runs), 0))
    y = np.log(np.where(usable, runs.final_loss, 1.0))
    in_band, active, _ = select_rows(hp, axes, y, usable, sidx, S, band)
    flat = [a for j, a in enumerate(axes) if active[:, j].any() and _max_levels(hp[a], in_band, sidx, S) < 3]
    cross = interactions(U, usable, sidx, S)
    coordinate_wise = d >= 2 and not cross.any()
    if coordinate_wise:
        warnings.append(
            "coordinate-wise sweep: no runs vary two of "
            + ", ".join(AXIS_LABEL[a] for a in axes)
            + " together, so each optimum is bracketed along one axis at a time only and their "
            "interactions (e.g. the LR–batch valley) are not identified"
        )
    data, fit, col_of = None, None, np.zeros((S, 0), dtype=int)
    if d and flat:
        # A sharp bowl on a coarse grid: at no scale do 3 values of an axis lie within the band,
        # so the band cannot identify its curvature. The runs up to LEFT_BASIN above each scale's
        # best can, if the bowl still describes them: a fit that converges with the axis's
        # centres within reach of its runs is kept (with a warning that it is approximate);
        # otherwise the band's own fit leaves the axis out (`fit_scale_bowls`).
        wide, wide_active, _ = select_rows(hp, axes, y, usable, sidx, S, LEFT_BASIN)
        data, fit, col_of, w = fit_scale_bowls(U, y, wide, sidx, wide_active, cross, axes)
        widened = [axes.index(a) for a in flat]
        if fit is not None and fit.success and not _centres_out_of_reach(fit, data, col_of)[:, widened].any():
            in_band = wide
            warnings += w
            warnings.append(
                f"{', '.join(AXIS_LABEL[a] for a in flat)}: fewer than 3 values within {band:.0%} of the best loss "
                f"at every scale; the loss bowl was fitted to the runs up to {LEFT_BASIN:.0%} above it, so its shape "
                "and optima are approximate (sweep more finely around the optimum)"
            )
        else:
            data, fit = None, None
    if d and fit is None:
        data, fit, col_of, w = fit_scale_bowls(U, y, in_band, sidx, active, cross, axes)
        warnings += w
    return _Stages(cl, axes, hp, wd0, usable, y, in_band, coordinate_wise, data, fit, col_of, warnings)


def _centres_out_of_reach(fit: BowlSolution, data: BowlData, col_of: np.ndarray) -> np.ndarray:
    """(S, d) bool: active centres more than MAX_BEYOND_SWEEP (log) beyond their scale's rows."""
    out = np.zeros(data.active.shape, dtype=bool)
    for s, j in zip(*np.nonzero(data.active)):
        u = data.u[data.scale == s, j]
        c = fit.beta[j][col_of[s, j]]
        out[s, j] = u.size > 0 and not (u.min() - MAX_BEYOND_SWEEP <= c <= u.max() + MAX_BEYOND_SWEEP)
    return out


def _max_levels(values: np.ndarray, rows: np.ndarray, sidx: np.ndarray, n_scales: int) -> int:
    """The most distinct values (1% apart) of `values` among `rows` at any one scale."""
    return max((distinct_log_values(values[rows & (sidx == s)], _TOL) for s in range(n_scales)), default=0)


def _one_hot(active: np.ndarray) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    S, d = active.shape
    col_of = np.full((S, d), -1)
    designs = []
    for j in range(d):
        ss = np.flatnonzero(active[:, j])
        X = np.zeros((S, ss.size))
        X[ss, np.arange(ss.size)] = 1.0
        col_of[ss, j] = np.arange(ss.size)
        designs.append(X)
    return tuple(designs), col_of


def _band_centroid(data: BowlData, s: int, j: int) -> float:
    m = data.scale == s
    y = data.y[m]
    near = y <= y.min() + np.log1p(NEAR_OPTIMAL)
    return float(data.u[m][near, j].mean())

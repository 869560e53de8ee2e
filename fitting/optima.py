"""Per-scale optima of the swept hyperparameters (lr, batch size, weight decay).

Runs are grouped by scale (n_params, tokens, width, depth). The bottom of every scale's
loss bowl is fitted jointly (`fitting.surface`: a free centre per scale, one curvature and
asymmetry shared by all scales) in log space; the centre is the optimum. Each centre gets
a 90% interval from a bootstrap over the scale's runs (shape held fixed), and flags when
it is not bracketed by the sweep, when divergence caps it, when only two values bracket it
or when the sweep is coordinate-wise (each optimum bracketed along one axis only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fitting.common import AXES, AXIS_LABEL, InsufficientData, Interval, distinct_log_values, scale_variables
from fitting.runs import DIVERGED, RunTable
from fitting.surface import DEFAULT_BAND, BowlData, BowlFit, fit_bowl, linear_bootstrap, select_band

NEAR_OPTIMAL = 0.0025
# A completed run more than 20% above its scale's best loss has left the basin (a loss
# spike or silent divergence); it bounds the optimum like a diverged run.
LEFT_BASIN = 0.20
_TOL = 0.01  # relative difference below which two hyperparameter values are the same


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
        return {k: (None if not math.isfinite(v) else v) for k, v in
                {"n_params": self.n_params, "tokens": self.tokens, "width": self.width, "depth": self.depth}.items()}

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
                opt[a] = AxisOptimum(Interval.from_dict(o), float(o.get("log_se", math.nan)), int(o.get("n_values", 0)), str(o.get("status", "")))
        near = dict(d.get("near_optimal") or {})
        n_near = int(near.pop("n_runs", 0))
        return cls(Scale.from_dict(d["scale"]), int(d["n_runs"]), int(d.get("n_diverged", 0)), float(d["loss"]), opt,
                   {a: (float(v[0]), float(v[1])) for a, v in near.items()}, n_near, tuple(d.get("flags", ())))


@dataclass(frozen=True, eq=False)
class SweepAnalysis:
    """Everything the law fits need from the per-scale stage (internal, not serialised)."""

    scales: tuple[Scale, ...]
    axes: tuple[str, ...]  # the modelled (swept) axes, order of the bowl's columns
    data: BowlData | None
    fit: BowlFit | None
    centre: np.ndarray  # (S, d) log optimum, NaN where the axis is not active
    centre_se: np.ndarray  # (S, d)
    optima: tuple[ScaleOptimum, ...]
    coordinate_wise: bool
    warnings: tuple[str, ...]
    n_runs: int
    log_lr_cap: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (S,) log lr of first divergence
    wd_offset: float = 0.0  # wd coordinate is log(wd + wd_offset)


def group_scales(runs: RunTable) -> tuple[tuple[Scale, ...], np.ndarray]:
    """Distinct scales and each run's scale index (NaN width/depth compare equal)."""
    cols = np.stack([runs.n_params, runs.tokens, runs.width, runs.depth], axis=1)
    key = np.where(np.isfinite(cols), np.round(np.log(np.where(cols > 0, cols, 1.0)), 9), -1e9)
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    first = [int(np.flatnonzero(inv == s)[0]) for s in range(len(uniq))]
    scales = tuple(Scale(*(float(cols[i, j]) for j in range(4))) for i in first)
    order = np.argsort([(s.n_params, s.tokens) for s in scales], axis=0)[:, 0] if scales else np.zeros(0, int)
    order = sorted(range(len(scales)), key=lambda s: (scales[s].n_params, scales[s].tokens, scales[s].width, scales[s].depth))
    remap = np.empty(len(scales), dtype=int)
    remap[order] = np.arange(len(scales))
    return tuple(scales[i] for i in order), remap[inv.ravel()]


def _modal(x: np.ndarray) -> float:
    v, c = np.unique(np.round(x, 6), return_counts=True)
    return float(v[np.argmax(c)])


def analyse_sweeps(
    runs: RunTable, *, bootstrap: int = 200, seed: int = 0, band: float = DEFAULT_BAND
) -> SweepAnalysis:
    """Per-scale optima of lr, bs, wd in log space with 90% intervals and flags.

    log loss = l0_s + ½ zᵀHz + Σκ z³, z = log h − log h*_s (shared H, κ; h*_s per scale).
    """
    if len(runs) == 0:
        raise InsufficientData("no runs: need completed runs with a final loss")
    if np.any(~np.isfinite(runs.n_params) | ~np.isfinite(runs.tokens)):
        raise InsufficientData("every run needs n_params and tokens")
    scales, sidx = group_scales(runs)
    S = len(scales)
    completed = runs.completed
    if not np.any(completed):
        raise InsufficientData("no completed runs with a final loss")
    best = np.full(S, np.inf)
    np.minimum.at(best, sidx[completed], runs.final_loss[completed])
    with np.errstate(invalid="ignore"):
        left = completed & (runs.final_loss > (1 + LEFT_BASIN) * best[sidx])
    diverged = (runs.status == DIVERGED) | left
    usable = completed & ~left & (runs.learning_rate > 0) & (runs.batch_size > 0)
    warnings: list[str] = []
    if np.any(left):
        warnings.append(f"{int(left.sum())} completed run(s) ended > {LEFT_BASIN:.0%} above their scale's best loss; treated as diverged")

    # Weight decay 0 (no decay) is a legitimate, often-swept value that log space cannot
    # hold; the wd coordinate is log(wd + wd0) with wd0 half the smallest positive value
    # swept, which puts wd = 0 one grid step below the sweep and leaves large wd in log scale.
    pos = runs.weight_decay[usable & (runs.weight_decay > 0)]
    wd0 = 0.5 * float(pos.min()) if pos.size and np.any(usable & (runs.weight_decay == 0)) else 0.0
    hp = {"learning_rate": runs.learning_rate, "batch_size": runs.batch_size, "weight_decay": runs.weight_decay + wd0}
    positive_wd = hp["weight_decay"] > 0
    # An axis is modelled if some scale sweeps it over ≥ 3 values (else its curvature is unknown).
    axes: list[str] = []
    for a in AXES:
        ok = usable & (positive_wd if a == "weight_decay" else True)
        counts = [distinct_log_values(hp[a][ok & (sidx == s)], _TOL) for s in range(S)]
        if max(counts, default=0) >= 3:
            axes.append(a)
        elif max(counts, default=0) == 2:
            warnings.append(f"{AXIS_LABEL[a]} takes only 2 values at any scale; need ≥ 3 at one scale to locate its optimum")
    if "weight_decay" in axes:
        if wd0 > 0:
            warnings.append(f"weight decay 0 was swept: the weight-decay axis is log(wd + {wd0:.3g}) "
                            "(half the smallest positive value), so runs without decay bound the optimum from below")
        usable = usable & positive_wd
    # Hyperparameters that are not modelled must not vary inside a scale: keep each scale's modal value.
    for a in AXES:
        if a in axes:
            continue
        keep = np.zeros_like(usable)
        for s in range(S):
            m = usable & (sidx == s)
            if np.any(m):
                keep |= m & (np.abs(np.round(hp[a], 6) - _modal(hp[a][m])) <= _TOL * np.abs(_modal(hp[a][m])))
        dropped = int(np.count_nonzero(usable & ~keep))
        if dropped:
            warnings.append(f"{dropped} run(s) left out: {AXIS_LABEL[a]} varies within a scale but too little to model")
        usable = keep

    d = len(axes)
    U = np.stack([np.log(hp[a]) for a in axes], axis=1) if d else np.zeros((len(runs), 0))
    y = np.log(np.where(usable, runs.final_loss, 1.0))
    idx_use = np.flatnonzero(usable)
    in_band = np.zeros(len(runs), dtype=bool)
    in_band[idx_use[select_band(y[idx_use], sidx[idx_use], S, band)]] = True

    active = np.zeros((S, d), dtype=bool)
    n_values = np.zeros((S, d), dtype=int)
    for s in range(S):
        m = usable & (sidx == s)
        for j, a in enumerate(axes):
            n_values[s, j] = distinct_log_values(hp[a][m], _TOL)
            active[s, j] = distinct_log_values(hp[a][in_band & (sidx == s)], _TOL) >= 2

    cross = np.zeros((d, d), dtype=bool)
    for s in range(S):
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
    coordinate_wise = d >= 2 and not cross.any()
    if coordinate_wise:
        warnings.append("coordinate-wise sweep: no runs vary two of " + ", ".join(AXIS_LABEL[a] for a in axes)
                        + " together, so each optimum is bracketed along one axis at a time only and their "
                        "interactions (e.g. the LR–batch valley) are not identified")

    fit = None
    data = None
    centre = np.full((S, d), np.nan)
    centre_se = np.full((S, d), np.nan)
    boot_centre = np.full((max(bootstrap, 0), S, d), np.nan)
    if d:
        rows = np.flatnonzero(in_band)
        data = BowlData(u=U[rows], y=y[rows], scale=sidx[rows], active=active, cross=cross, n_scales=S)
        designs, col_of = _one_hot(active)
        beta0 = tuple(np.array([_band_centroid(data, s, j) for s in range(S) if active[s, j]]) for j in range(d))
        try:
            fit = fit_bowl(data, designs, beta0)
        except (np.linalg.LinAlgError, ValueError) as e:  # pragma: no cover - defensive
            warnings.append(f"the loss-surface fit failed ({e}); per-scale optima fall back to the best run")
            fit = None
    rng = np.random.default_rng(seed)
    if fit is not None:
        for s in range(S):
            js = [j for j in range(d) if active[s, j]]
            if not js:
                continue
            for j in js:
                centre[s, j] = fit.beta[j][col_of[s, j]]
            rs = np.flatnonzero(data.scale == s)
            if bootstrap > 0 and rs.size >= 2:
                P0 = S
                offs = np.cumsum([0] + [b.size for b in fit.beta])
                cols = np.array([s] + [P0 + offs[j] + col_of[s, j] for j in js])
                counts = rng.multinomial(rs.size, np.full(rs.size, 1.0 / rs.size), size=bootstrap).astype(float)
                samp = linear_bootstrap(fit.jac[np.ix_(rs, cols)], fit.weights[rs], fit.resid[rs], fit.params[cols],
                                        np.arange(rs.size), counts)
                # A resample that drops one of only two or three runs along an axis leaves the
                # centre pinned at the estimate; the Gauss–Newton standard error (σ²(JᵀWJ)⁻¹)
                # is the floor so such optima do not get falsely narrow intervals.
                Js = fit.jac[np.ix_(rs, cols)] * np.sqrt(fit.weights[rs])[:, None]
                asym = fit.noise * np.sqrt(np.diag(np.linalg.pinv(Js.T @ Js)))
                for c, j in enumerate(js):
                    sd_boot = float(np.std(samp[:, 1 + c]))
                    se = max(sd_boot, float(asym[1 + c]))
                    col = samp[:, 1 + c]
                    if se > sd_boot:
                        col = centre[s, j] + (col - col.mean()) * (se / max(sd_boot, 1e-12)) if sd_boot > 1e-9 * se else centre[s, j] + se * rng.standard_normal(bootstrap)
                    boot_centre[:, s, j] = col
                    centre_se[s, j] = se

    log_lr_cap = np.full(S, np.inf)
    optima = []
    for s in range(S):
        m_all = sidx == s
        m = usable & m_all
        comp = completed & m_all
        flags: list[str] = []
        bl = float(best[s]) if np.isfinite(best[s]) else math.nan
        if np.any(diverged & m_all):
            log_lr_cap[s] = float(np.log(runs.learning_rate[diverged & m_all].min()))
        near = comp & ~left & (runs.final_loss <= (1 + NEAR_OPTIMAL) * best[s])
        raw = {"learning_rate": runs.learning_rate, "batch_size": runs.batch_size, "weight_decay": runs.weight_decay}
        near_rng = {a: (float(raw[a][near].min()), float(raw[a][near].max())) for a in AXES if np.any(near)}
        opt: dict[str, AxisOptimum] = {}
        if not np.any(m):
            flags.append("no completed runs at this scale")
        else:
            ib = np.flatnonzero(m)[np.argmin(runs.final_loss[m])]
            for a in AXES:
                j = axes.index(a) if a in axes else -1
                vals = hp[a][m]
                nv = distinct_log_values(vals, _TOL)
                if j >= 0 and np.isfinite(centre[s, j]):
                    lv = centre[s, j]
                    lo_sw, hi_sw = np.log(vals.min()), np.log(vals.max())
                    status = "bracketed"
                    if lv > hi_sw + _TOL:
                        status = "above_sweep"
                        flags.append(f"{AXIS_LABEL[a]} optimum lies above the largest value swept: only a lower bound; extend the sweep")
                    elif lv < lo_sw - _TOL:
                        status = "below_sweep"
                        flags.append(f"{AXIS_LABEL[a]} optimum lies below the smallest value swept: only an upper bound; extend the sweep")
                    samples = boot_centre[:, s, j]
                    if a == "learning_rate" and lv >= log_lr_cap[s]:
                        status = "capped"
                        ok_lr = np.log(vals[vals < np.exp(log_lr_cap[s])])
                        lv = float(ok_lr.max()) if ok_lr.size else lo_sw
                        samples = np.minimum(samples, log_lr_cap[s])
                        flags.append(f"learning-rate optimum capped by a diverged run at lr={np.exp(log_lr_cap[s]):.3g}")
                    if nv == 2:
                        flags.append(f"{AXIS_LABEL[a]} swept at 2 values only: the optimum relies on the curvature shared with other scales")
                    iv = Interval.exp_of(lv, samples)
                    if a == "weight_decay" and wd0 > 0:
                        iv = Interval(*(max(v - wd0, 0.0) for v in (iv.value, iv.low, iv.high)))
                        if iv.value == 0.0:
                            status = "below_sweep"
                            flags.append("weight-decay optimum is at 0 (no decay beats the swept values)")
                    opt[a] = AxisOptimum(iv, float(centre_se[s, j]), nv, status)
                elif a == "weight_decay" and np.all(hp[a][m] == 0):
                    continue
                elif a == "batch_size" or a == "weight_decay" or a == "learning_rate":
                    v = float(hp[a][ib]) - (wd0 if a == "weight_decay" else 0.0)
                    st = "not_swept" if nv <= 1 else "best_run"
                    if nv > 1:
                        flags.append(f"{AXIS_LABEL[a]} optimum not resolved at this scale: best run's value, interval = near-optimal runs")
                        lo, hi = near_rng.get(a, (v, v))
                        lo, hi = min(lo, v), max(hi, v)
                        opt[a] = AxisOptimum(Interval(v, min(lo, v), max(hi, v)), math.nan, nv, st)
                    else:
                        opt[a] = AxisOptimum(Interval(v, v, v), math.nan, nv, st)
        if coordinate_wise:
            flags.append("bracketed along one axis at a time only (coordinate-wise ablations)")
        optima.append(ScaleOptimum(scales[s], int(m_all.sum()), int((diverged & m_all).sum()), bl, opt,
                                   near_rng, int(near.sum()), tuple(flags)))
    return SweepAnalysis(tuple(scales), tuple(axes), data, fit, centre, centre_se, tuple(optima), coordinate_wise,
                         tuple(warnings), len(runs), log_lr_cap, wd0)


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

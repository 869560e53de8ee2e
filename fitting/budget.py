"""The next proxy runs for a FLOP budget: which scales, and which LR × batch (× wd) points within each.

Design criterion — the expected loss penalty at the target removed per FLOP. At the target t the
penalty of acting on the laws' uncertainty is, to second order in the bowl,

    P = ½ Σ_a H_aa · (x_tᵀ Σ_a x_t + τ_a²)          (relative loss; a over the swept axes with a law)

with H the fitted bowl's curvature (stretched by the nearest scale's width), Σ_a the law's
posterior coefficient covariance (calibrated) and τ_a its scatter; only the first term can be
reduced by more proxies. A *design* is a scale c (n_params, tokens, width, depth) and a pattern of
k runs there centred on the laws' prediction at c, spanning ±max(Z90 · the prediction's sd, the
near-optimal half-width) along each swept axis (so the optimum is likely bracketed). Its
information about the scale's optimum μ_c, from the bowl linearised around the runs with a free
floor, is I = H_PP S H_PP / σ² (S the runs' centred scatter in log hyperparameters, σ the loss
noise, 0.3% unless the fit measured more), discounted per axis by the probability that the pattern
brackets the optimum (2Φ(span / sd) − 1). An axis the pattern holds at the predicted optimum
(an LR line at the predicted batch) measures the learning rate conditionally on it: its variance
gains (H_lb/H_ll)²·Var(batch*). A measured optimum updates each law by the rank-one rule
Σ ← Σ − Σx_c x_cᵀΣ / (v_c + τ² + x_cᵀΣx_c). Each run costs 6·N·D FLOPs (`fitting.plan.flops`).

Greedy: repeatedly take the design with the largest penalty reduction per FLOP that still fits
the remaining budget (and `max_n_params`, `max_tokens`), until none fits. Candidate scales are those
of `fitting.plan` (toward the target from every proxy, tokens-only and size-only steps) plus
depth steps, none at an existing scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from fitting.common import AXIS_LABEL, Z90, FloatArray, InsufficientData
from fitting.optima import LOSS_NOISE, NEAR_OPTIMAL
from fitting.plan import _candidates, _law_values, _log_scale, _round_scale, _same_scale, flops
from fitting.study_fit import StudyResult, target_variables

CRITERION = (
    "expected loss penalty at the target removed per FLOP: ½ Σ_a H_aa · x_tᵀΣ_a x_t (bowl curvature × each law's "
    "coefficient covariance at the target), each design's information about its scale's optimum from the bowl "
    "(I = H S H / σ², discounted by the chance of bracketing it), greedy within the budget"
)
MAX_DESIGNS = 40
# A pattern's outermost point stays within this much loss of the predicted optimum (the bowl's band).
MAX_PATTERN_EXCESS = 0.03
_PHI = NormalDist()


@dataclass(frozen=True)
class Pattern:
    name: str
    counts: Mapping[str, int]  # runs per swept axis (product = runs)


def _patterns(swept: Sequence[str]) -> list[Pattern]:
    # Five learning rates at least: with three, the best run often sits at an edge and the scale
    # gives only a bound (the engine then needs the bowl shared with other scales to place it).
    out = [
        Pattern("learning-rate line of 5", {"learning_rate": 5}),
        Pattern("learning-rate line of 7", {"learning_rate": 7}),
    ]
    if "batch_size" in swept:
        out.append(Pattern("LR × batch grid 5×3", {"learning_rate": 5, "batch_size": 3}))
    if "weight_decay" in swept:
        out.append(Pattern("LR × weight-decay grid 5×3", {"learning_rate": 5, "weight_decay": 3}))
        if "batch_size" in swept:
            out.append(
                Pattern(
                    "LR × batch × weight-decay grid 5×3×3", {"learning_rate": 5, "batch_size": 3, "weight_decay": 3}
                )
            )
    return out


@dataclass
class _Law:
    axis: str
    sigma: FloatArray  # running coefficient covariance
    x_t: FloatArray
    tau2: float
    h: float  # curvature at the target along this axis
    start: float  # x_tᵀΣx_t before any design
    value_t: float  # log value at the target


def _candidate_scales(
    fit: StudyResult,
    target: Mapping[str, float],
    max_n_params: float | None,
    max_tokens: float | None,
    budget: float,
    min_runs: int,
) -> list[dict[str, float]]:
    proxies = [
        {k: v for k, v in o.scale.to_dict().items() if v is not None and np.isfinite(v) and v > 0} for o in fit.optima
    ]
    proxies = [p for p in proxies if "n_params" in p and "tokens" in p]
    raw = _candidates(proxies, target)
    for p in proxies:
        for t in (0.1, 0.2, 0.7):
            raw.append({k: math.exp((1 - t) * math.log(v) + t * math.log(target.get(k, v))) for k, v in p.items()})
        if "depth" in p:
            raw.append({**p, "depth": p["depth"] * 2, "n_params": p["n_params"] * 2})
            if p["depth"] >= 4:
                raw.append({**p, "depth": p["depth"] / 2, "n_params": p["n_params"] / 2})
    existing = [_log_scale(p) for p in proxies]
    # Designs go toward the target: nothing smaller than the smallest proxy in size or data.
    n_min = min(p["n_params"] for p in proxies)
    d_min = min(p["tokens"] for p in proxies)
    out: list[dict[str, float]] = []
    for c in raw:
        rounded = _round_scale(c)
        scale = {k: v for k, v in rounded.items() if v is not None and v > 0}
        if "n_params" not in scale or "tokens" not in scale:
            continue
        if scale["n_params"] < 0.99 * n_min or scale["tokens"] < 0.99 * d_min:
            continue
        if max_n_params is not None and scale["n_params"] > max_n_params:
            continue
        if max_tokens is not None and scale["tokens"] > max_tokens:
            continue
        if min_runs * flops(scale) > budget:
            continue
        logs = _log_scale(scale)
        if any(_same_scale(logs, e) for e in existing) or any(_same_scale(logs, _log_scale(o)) for o in out):
            continue
        out.append(scale)
    return out


def plan_budget(
    fit: StudyResult,
    target: Mapping[str, float],
    budget_flops: float,
    *,
    max_n_params: float | None = None,
    max_tokens: float | None = None,
    max_designs: int = MAX_DESIGNS,
) -> dict[str, Any]:
    """The designs that most reduce the target's expected loss penalty per FLOP within `budget_flops` (module doc).

    Returns {"items": [...], "budget": {...}}. Raises InsufficientData without a learning-rate law and bowl,
    MissingTarget when the target lacks a law variable, ValueError for a budget ≤ 0.
    """
    if not budget_flops > 0:
        raise ValueError("budget_flops must be > 0")
    shape = fit.shape
    if shape is None or "learning_rate" not in fit.laws or "learning_rate" not in shape.axes:
        raise InsufficientData(
            fit.missing.get("learning_rate", "a budget plan needs a learning-rate law and the fitted loss bowl")
        )
    t = target_variables(fit, target)
    t.pop("_shape_assumed", None)
    axes = shape.axes
    swept = [a for a in axes if a in fit.laws]
    H = shape.hessian
    widths = fit.bowl_widths
    stretch = np.zeros(len(axes))
    if widths is not None and (i := widths.nearest(t)) is not None:
        for j, a in enumerate(axes):
            got = widths.stretch_at_scale(i, a) if a in widths.axes else None
            if got is not None:
                stretch[j] = got[0]
    Ht = H * np.exp(stretch[:, None] + stretch[None, :])
    laws: dict[str, _Law] = {}
    for a in swept:
        law = fit.laws[a]
        vals = _law_values(law, t)
        x_t = law.design(vals)
        sigma = law.coef_cov + 1e-12 * np.eye(x_t.size)
        tau = law.scatter * law.calibration
        laws[a] = _Law(
            a,
            sigma,
            x_t,
            tau * tau,
            float(Ht[axes.index(a), axes.index(a)]),
            float(x_t @ sigma @ x_t),
            float(law.coef @ x_t),
        )
    noise = LOSS_NOISE
    patterns = _patterns(swept)
    min_runs = min(math.prod(p.counts.values()) for p in patterns)
    scales = _candidate_scales(fit, t, max_n_params, max_tokens, budget_flops, min_runs)
    start_penalty = _penalty(laws, reducible=True)
    floor_penalty = 0.5 * sum(L.h * L.tau2 for L in laws.values())
    remaining = budget_flops
    chosen: list[dict[str, Any]] = []
    # Each design's information is computed once, from the laws' uncertainty before any design
    # (the spans and bracketing odds); only the laws' covariances move as designs are chosen.
    designs = []
    for k, c in enumerate(scales):
        for p in patterns:
            design = _design_information(fit, laws, H, axes, c, p, noise)
            if design is not None:
                designs.append((k, math.prod(p.counts.values()) * flops(c), c, p, design))
    taken: set[int] = set()
    while len(chosen) < max_designs:
        best = None
        for k, cost, c, p, design in designs:
            if k in taken or cost > remaining:
                continue
            gain = sum(0.5 * laws[a].h * _drop(laws[a], x, v) for a, (x, v) in design["obs"].items())
            if best is None or gain / cost > best[0]:
                best = (gain / cost, gain, cost, c, p, design, k)
        if best is None or best[1] <= 1e-4 * start_penalty:
            break
        _, gain, cost, c, p, design, k = best
        taken.add(k)
        before = {a: _interval(L, fit) for a, L in laws.items()}
        for a, (x, v) in design["obs"].items():
            L = laws[a]
            sx = L.sigma @ x
            L.sigma = L.sigma - np.outer(sx, sx) / (v + L.tau2 + float(x @ sx))
        after = {a: _interval(L, fit) for a, L in laws.items()}
        remaining -= cost
        chosen.append(_item(fit, c, p, design, cost, gain, before, after, laws, start_penalty))
    end_penalty = _penalty(laws, reducible=True)
    return {
        "items": chosen,
        "budget": {
            "budget_flops": budget_flops,
            "spent_flops": budget_flops - remaining,
            "max_n_params": max_n_params,
            "max_tokens": max_tokens,
            "criterion": CRITERION,
            "loss_noise": noise,
            "expected_loss_penalty": {
                "before": start_penalty + floor_penalty,
                "after": end_penalty + floor_penalty,
                "irreducible": floor_penalty,
                "form": "½ Σ_a H_aa · (x_tᵀΣ_a x_t + τ_a²), second order in the bowl",
            },
            "target_interval": {
                a: {"before": _interval_from(L.value_t, L.start, L.tau2, a, fit), "after": _interval(L, fit)}
                for a, L in laws.items()
            },
            "n_candidates": len(scales),
        },
    }


def _drop(L: _Law, x: FloatArray, v: float) -> float:
    sx = L.sigma @ x
    return float(L.x_t @ sx) ** 2 / (v + L.tau2 + float(x @ sx))


def _penalty(laws: Mapping[str, _Law], *, reducible: bool) -> float:
    return 0.5 * sum(L.h * float(L.x_t @ L.sigma @ L.x_t) for L in laws.values())


def _offset(fit: StudyResult, axis: str) -> float:
    return fit.shape.wd_offset if (axis == "weight_decay" and fit.shape is not None) else 0.0


def _interval_from(value: float, var: float, tau2: float, axis: str, fit: StudyResult) -> list[float]:
    sd = math.sqrt(max(var, 0.0) + tau2)
    off = _offset(fit, axis)
    return [max(math.exp(value - Z90 * sd) - off, 0.0), max(math.exp(value + Z90 * sd) - off, 0.0)]


def _interval(L: _Law, fit: StudyResult) -> list[float]:
    return _interval_from(L.value_t, float(L.x_t @ L.sigma @ L.x_t), L.tau2, L.axis, fit)


def _design_information(
    fit: StudyResult,
    laws: Mapping[str, _Law],
    H: np.ndarray,
    axes: Sequence[str],
    scale: Mapping[str, float],
    pattern: Pattern,
    noise: float,
) -> dict[str, Any] | None:
    """The runs of `pattern` at `scale` and, per law it measures, (design vector, observation variance)."""
    centre: dict[str, float] = {}
    sd: dict[str, float] = {}
    xs: dict[str, FloatArray] = {}
    for a, L in laws.items():
        law = fit.laws[a]
        vals = _law_values(law, scale)
        if any(v not in vals or not vals[v] > 0 for v in law.variables):
            return None
        x = law.design(vals)
        xs[a] = x
        centre[a] = float(law.coef @ x)
        sd[a] = math.sqrt(float(x @ L.sigma @ x) + L.tau2)
    P = [a for a in axes if a in pattern.counts]
    if any(a not in laws for a in P):
        return None
    idx = [axes.index(a) for a in P]
    Hpp = H[np.ix_(idx, idx)]
    spans = {}
    grids = []
    for a, j in zip(P, idx):
        h = max(float(H[j, j]), 1e-9)
        near = math.sqrt(2 * math.log1p(NEAR_OPTIMAL) / h)
        far = math.sqrt(2 * math.log1p(MAX_PATTERN_EXCESS) / h)
        spans[a] = min(max(Z90 * sd[a], near), far)
        grids.append(centre[a] + spans[a] * np.linspace(-1.0, 1.0, pattern.counts[a]))
    U = np.stack(np.meshgrid(*grids, indexing="ij"), axis=-1).reshape(-1, len(P))
    S = (U - U.mean(axis=0)).T @ (U - U.mean(axis=0))
    info = Hpp @ S @ Hpp / noise**2
    bracket = np.array([max(2 * _PHI.cdf(spans[a] / max(sd[a], 1e-9)) - 1, 0.05) for a in P])
    info = info * np.sqrt(np.outer(bracket, bracket))
    try:
        cov = np.linalg.inv(info + 1e-12 * np.eye(len(P)))
    except np.linalg.LinAlgError:
        return None
    obs: dict[str, tuple[FloatArray, float]] = {}
    for k, a in enumerate(P):
        v = float(cov[k, k])
        if a == "learning_rate":
            # Axes held at their predicted optimum make the measured LR optimum conditional on them.
            il = axes.index(a)
            for b in laws:
                if b not in P and b != a:
                    ib = axes.index(b)
                    v += (float(H[il, ib]) / max(float(H[il, il]), 1e-12)) ** 2 * sd[b] ** 2
        obs[a] = (xs[a], v)
    runs = []
    off = {a: _offset(fit, a) for a in axes}
    for row in U:
        run: dict[str, float | None] = {}
        for a in ("learning_rate", "batch_size", "weight_decay"):
            if a in P:
                value = math.exp(float(row[P.index(a)])) - off.get(a, 0.0)
            elif a in laws:
                value = math.exp(centre[a]) - off.get(a, 0.0)
            else:
                value = None
            if value is not None:
                value = float(max(1, round(value))) if a == "batch_size" else float(f"{max(value, 0.0):.3g}")
            run[a] = value
        runs.append(run)
    return {"obs": obs, "runs": runs, "centre": centre, "spans": spans, "swept": P}


def _item(
    fit: StudyResult,
    scale: dict[str, float],
    pattern: Pattern,
    design: Mapping[str, Any],
    cost: float,
    gain: float,
    before: Mapping[str, list[float]],
    after: Mapping[str, list[float]],
    laws: Mapping[str, _Law],
    start_penalty: float,
) -> dict[str, Any]:
    def width(iv: Sequence[float]) -> float:
        return math.log(iv[1] / iv[0]) if iv[0] > 0 and iv[1] > 0 else math.nan

    shrink = {a: round(1 - width(after[a]) / width(before[a]), 4) if width(before[a]) > 0 else 0.0 for a in after}
    cumulative = {
        a: round(1 - math.sqrt(float(L.x_t @ L.sigma @ L.x_t) + L.tau2) / math.sqrt(L.start + L.tau2), 4)
        for a, L in laws.items()
    }
    sweep = {a: sorted({r[a] for r in design["runs"] if r.get(a) is not None}) for a in design["swept"]}
    centre = {a: math.exp(v) - _offset(fit, a) for a, v in design["centre"].items()}
    lead = max(shrink, key=lambda a: shrink[a]) if shrink else "learning_rate"
    reason = (
        f"{pattern.name} at this scale ({len(design['runs'])} runs, {cost:.3g} FLOPs) removes the most expected loss "
        f"penalty per FLOP: about {100 * gain:.3g}% of loss ({100 * gain / max(start_penalty, 1e-12):.0f}% of the "
        f"reducible penalty at the start); it narrows the {AXIS_LABEL[lead]} interval at the target by about "
        f"{100 * shrink.get(lead, 0.0):.0f}%"
    )
    return {
        "scale": _round_scale(scale),
        "flops": float(f"{cost:.3g}"),
        "flops_per_run": float(f"{flops(scale):.3g}"),
        "n_runs": len(design["runs"]),
        "pattern": pattern.name,
        "learning_rate": centre.get("learning_rate"),
        "batch_size": centre.get("batch_size"),
        "weight_decay": centre.get("weight_decay"),
        "sweep": sweep,
        "runs": design["runs"],
        "interval_shrink": shrink,
        "cumulative_shrink": cumulative,
        "expected_penalty_reduction": gain,
        "target_interval_after": {a: list(v) for a, v in after.items()},
        "reason": reason + ".",
    }


__all__ = ["CRITERION", "plan_budget"]

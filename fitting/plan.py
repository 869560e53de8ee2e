"""Planning the next sweep: which proxy runs would most shrink a recommendation's uncertainty.

Each law is linear in log space, log h* = xᵀβ with x = [1, log x_j − m_j], and its
bootstrap samples give the coefficients' covariance Σ. A new proxy scale c measured
with noise σ² (the typical per-scale optimum's variance plus the law's scatter) updates
Σ ← Σ − Σx_c x_cᵀΣ / (σ² + x_cᵀΣx_c), so the prediction variance at the target t falls
by (x_tᵀΣx_c)² / (σ² + x_cᵀΣx_c). Candidate scales are picked greedily by that fall,
summed over the laws (the learning rate weighted most), among scales no dearer than a
proxy should be. A law that could not be fitted at all gets space-filling scales instead,
with the reason it could not be fitted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fitting.common import AXIS_LABEL, Z90, FloatArray
from fitting.laws import PowerLaw
from fitting.published import FLOPS_PER_PARAM_TOKEN
from fitting.study_fit import StudyResult, predict, target_variables

LAW_WEIGHT = {"learning_rate": 1.0, "batch_size": 0.5, "weight_decay": 0.5}
# A proxy may cost at most this much more than the largest proxy so far, or this share of the target.
MAX_COST_OVER_LARGEST_PROXY = 16.0


def flops(scale: Mapping[str, float]) -> float:
    """Training FLOPs of a scale, 6·N·D."""
    return FLOPS_PER_PARAM_TOKEN * scale["n_params"] * scale["tokens"]


MAX_SHARE_OF_TARGET_COMPUTE = 0.01
_SCALE_KEYS = ("n_params", "tokens", "width", "depth")


@dataclass(frozen=True)
class Suggestion:
    """One proposed proxy scale, the hyperparameters to centre its sweep on, and why.

    `interval_shrink`: per law, the fraction by which this scale (after the suggestions
    before it) narrows the 90% interval at the target; `cumulative_shrink`: all so far.
    """

    scale: dict[str, float | None]
    flops: float
    learning_rate: float | None
    batch_size: float | None
    weight_decay: float | None
    sweep: dict[str, list[float]]
    interval_shrink: dict[str, float]
    cumulative_shrink: dict[str, float]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _log_scale(scale: Mapping[str, float]) -> dict[str, float]:
    return {k: math.log(v) for k, v in scale.items() if v is not None and np.isfinite(v) and v > 0}


def _round_scale(scale: Mapping[str, float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in _SCALE_KEYS:
        value = scale.get(key)
        if value is None or not np.isfinite(value):
            out[key] = None
        elif key == "width":
            out[key] = float(max(64, 64 * round(value / 64)))
        elif key == "depth":
            out[key] = float(max(1, round(value)))
        else:
            out[key] = float(f"{value:.3g}")
    return out


def _same_scale(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    """Log scales within 5% on every variable both know (width or depth may be unknown)."""
    return all(abs(a[k] - b[k]) < 0.05 for k in a.keys() & b.keys())


def _candidates(proxies: list[dict[str, float]], target: Mapping[str, float]) -> list[dict[str, float]]:
    """Scales toward the target from each proxy, token-only and size-only variants."""
    out: list[dict[str, float]] = []
    for proxy in proxies:
        for t in (0.15, 0.3, 0.5):
            out.append({k: math.exp((1 - t) * math.log(v) + t * math.log(target.get(k, v))) for k, v in proxy.items()})
        for f in (0.25, 0.5, 2.0, 4.0):
            out.append({**proxy, "tokens": proxy["tokens"] * f})
        for f in (2.0, 4.0):
            grown = {**proxy, "n_params": proxy["n_params"] * f}
            if "width" in proxy:
                grown["width"] = proxy["width"] * math.sqrt(f)
            out.append(grown)
    return out


def _law_values(law: PowerLaw, scale: Mapping[str, float]) -> dict[str, float]:
    """The scale's law variables: compute from N and D, the aspect ratio from width and depth (else the
    proxies' centre, as a recommendation takes it)."""
    values = {**scale, "compute": flops(scale)}
    if "aspect" in law.variables and "aspect" not in values:
        w, d = values.get("width"), values.get("depth")
        values["aspect"] = w / d if w and d else math.exp(law.log_centre[law.variables.index("aspect")])
    return values


def _design(law: PowerLaw, scale: Mapping[str, float]) -> FloatArray | None:
    values = _law_values(law, scale)
    if any(v not in values or not values[v] > 0 for v in law.variables):
        return None
    return law.design(values)


@dataclass
class _LawState:
    """One law's running coefficient covariance while suggestions are chosen one by one.

    `x_t` is the law's design vector at the target, `noise` the variance of one new
    scale's optimum, `start` the prediction variance at the target before any suggestion.
    """

    sigma: FloatArray
    x_t: FloatArray
    noise: float
    start: float


def _observation_variance(fit: StudyResult, axis: str) -> float:
    """Typical variance (log units²) of one scale's optimum of `axis`, plus the law's scatter."""
    half_widths = []
    for optimum in fit.optima:
        interval = optimum.to_dict().get(axis)
        if interval and interval["low"] > 0 and interval["high"] > 0:
            half_widths.append((math.log(interval["high"]) - math.log(interval["low"])) / (2 * Z90))
    noise = float(np.median(half_widths)) ** 2 if half_widths else 0.1**2
    return noise + fit.laws[axis].scatter ** 2


def suggest_runs(fit: StudyResult, target: Mapping[str, float], count: int = 5) -> list[Suggestion]:
    """The `count` proxy scales that would most shrink the recommendation's intervals at `target`."""
    if count < 1:
        raise ValueError("count must be ≥ 1")
    target_variables(fit, target)  # raises MissingTarget naming what the laws need
    proxies = [
        {k: v for k, v in o.scale.to_dict().items() if v is not None and np.isfinite(v) and v > 0} for o in fit.optima
    ]
    proxies = [p for p in proxies if "n_params" in p and "tokens" in p]
    if not proxies:
        return []
    target = {k: float(v) for k, v in target.items() if v is not None and k in _SCALE_KEYS}
    existing = [_log_scale(p) for p in proxies]
    candidates = _affordable_candidates(proxies, target, existing)
    laws = dict(fit.laws)
    state = _law_states(fit, target)

    missing = [a for a in ("learning_rate", "batch_size", "weight_decay") if a in fit.missing]
    chosen: list[Suggestion] = []
    pool = list(candidates)
    while pool and len(chosen) < count:
        gains: list[tuple[float, dict[str, float]]] = []
        for c in pool:
            gain, per_axis = 0.0, {}
            for axis, st in state.items():
                x_c = _design(laws[axis], c)
                if x_c is None:
                    continue
                s_xc = st.sigma @ x_c
                drop = float(st.x_t @ s_xc) ** 2 / (st.noise + float(x_c @ s_xc))
                per_axis[axis] = drop
                gain += LAW_WEIGHT.get(axis, 0.5) * drop / max(st.start, 1e-12)
            if not state:  # nothing fitted: spread the proxies out in log space
                logs = _log_scale(c)
                gain = min(sum((logs[k] - e[k]) ** 2 for k in logs.keys() & e.keys()) for e in existing)
            gains.append((gain, per_axis))
        best = int(np.argmax([g for g, _ in gains]))
        scale = pool.pop(best)
        marginal: dict[str, float] = {}
        cumulative: dict[str, float] = {}
        for axis in gains[best][1]:
            st = state[axis]
            before = float(st.x_t @ st.sigma @ st.x_t) + laws[axis].scatter ** 2
            x_c = _design(laws[axis], scale)
            assert x_c is not None  # per_axis only holds laws whose design exists at this scale
            s_xc = st.sigma @ x_c
            st.sigma = st.sigma - np.outer(s_xc, s_xc) / (st.noise + float(x_c @ s_xc))
            now = max(float(st.x_t @ st.sigma @ st.x_t) + laws[axis].scatter ** 2, 0.0)
            marginal[axis] = round(1 - math.sqrt(now / before), 4)
            cumulative[axis] = round(1 - math.sqrt(now / st.start), 4)
        existing.append(_log_scale(scale))
        chosen.append(_suggestion(fit, scale, proxies, marginal, cumulative, missing))
    return chosen


def _affordable_candidates(
    proxies: list[dict[str, float]], target: Mapping[str, float], existing: list[dict[str, float]]
) -> list[dict[str, float]]:
    """Rounded candidate scales within the cost budget, none already measured (`existing`) or listed twice.

    The budget is MAX_COST_OVER_LARGEST_PROXY × the largest proxy's FLOPs, or
    MAX_SHARE_OF_TARGET_COMPUTE of the target's when that is more.
    """
    budget = max(flops(p) for p in proxies) * MAX_COST_OVER_LARGEST_PROXY
    if "n_params" in target and "tokens" in target:
        budget = max(budget, MAX_SHARE_OF_TARGET_COMPUTE * flops(target))
    candidates: list[dict[str, float]] = []
    for c in _candidates(proxies, target):
        rounded = _round_scale(c)
        scale = {k: v for k, v in rounded.items() if v is not None and v > 0}
        if "n_params" not in scale or "tokens" not in scale or flops(scale) > budget:
            continue
        logs = _log_scale(scale)
        if any(_same_scale(logs, e) for e in existing) or any(_same_scale(logs, _log_scale(o)) for o in candidates):
            continue  # already measured, or already a candidate
        candidates.append(scale)
    return candidates


def _law_states(fit: StudyResult, target: Mapping[str, float]) -> dict[str, _LawState]:
    """The starting covariance state of every law whose variables the target gives (compute from N, D)."""
    state: dict[str, _LawState] = {}
    for axis, law in fit.laws.items():
        if "n_params" not in target or "tokens" not in target:
            continue
        full_target = _law_values(law, target)
        if any(v not in full_target for v in law.variables):
            continue
        sigma = law.coef_cov + 1e-12 * np.eye(1 + len(law.variables))
        x_t = law.design(full_target)
        state[axis] = _LawState(
            sigma=sigma,
            x_t=x_t,
            noise=_observation_variance(fit, axis),
            start=float(x_t @ sigma @ x_t) + law.scatter**2,
        )
    return state


def _suggestion(
    fit: StudyResult,
    scale: dict[str, float],
    proxies: list[dict[str, float]],
    shrink: dict[str, float],
    cumulative: dict[str, float],
    missing: list[str],
) -> Suggestion:
    lr = bs = wd = None
    try:
        p = predict(fit, scale)
        lr = None if p.learning_rate is None else p.learning_rate.value
        wd = None if p.weight_decay is None else p.weight_decay.value
        bs = None if p.batch_size is None else p.batch_size.value
    except (ValueError, KeyError):
        pass
    sweep: dict[str, list[float]] = {}
    if lr is not None:
        sweep["learning_rate"] = [float(f"{lr * f:.3g}") for f in (0.25, 0.5, 1.0, 2.0, 4.0)]
    if bs is not None:
        sweep["batch_size"] = [float(max(1, round(bs * f))) for f in (0.5, 1.0, 2.0)]

    # Say which direction the scale adds: the variable it pushes furthest beyond the proxies.
    beyond: dict[str, float] = {}
    for key, value in scale.items():
        values = [p[key] for p in proxies if key in p]
        if values:
            beyond[key] = max(value / max(values), min(values) / value)
    key = max(beyond, key=lambda k: beyond[k])
    if beyond[key] > 1.01:
        where = f"takes {key} {beyond[key]:.2g}× beyond the proxies' range"
    else:
        where = "adds a new combination of n_params and tokens inside the proxies' range, separating their effects"
    if shrink:
        axis = "learning_rate" if "learning_rate" in shrink else max(shrink, key=lambda k: shrink[k])
        why = (
            f"would narrow the {AXIS_LABEL[axis]} interval at the target by about "
            f"{100 * shrink[axis]:.0f}% (on top of the suggestions before it)"
        )
    elif missing:
        why = f"needed because {fit.missing[missing[0]]}"
    else:
        why = "spreads the proxies over a wider range"
    return Suggestion(
        scale=_round_scale(scale),
        flops=float(f"{flops(scale):.3g}"),
        learning_rate=lr,
        batch_size=bs,
        weight_decay=wd,
        sweep=sweep,
        interval_shrink=shrink,
        cumulative_shrink=cumulative,
        reason=f"This scale {where}, and {why}.",
    )


__all__ = ["Suggestion", "suggest_runs"]

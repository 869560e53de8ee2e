"""Curves the dashboard draws, evaluated from a fit (pure numpy; the browser computes no statistics).

- `law_curve`: a hyperparameter law h*(x) along one variable x with the others fixed, and its
  90% predictive band. Each point is computed exactly as `fitting.study_fit.predict` computes a
  recommendation (`PowerLaw.predict_log` over the variable sets the point can feed, seed 0,
  law draws + scatter τ, central 90% percentiles, weight decay shifted back by the bowl's
  offset), so the band at x equals the recommendation's interval for the target
  {x, fixed variables}.
- The prior line of a law: log h = c̄ + Σ_j a_j (log x_j − m_j) with a_j the published prior
  mean where a prior exists (the fitted exponent otherwise), anchored at c̄, the fitted law's
  value at the proxies' centre m (the law's own centring point). The published papers fix the
  exponents, not the constant of another study's setup, so the prior line only says where the
  *slopes* would take the law from the centre of the data. Its band is ±1.645 prior sd of the
  exponents times the distance from the centre (independent priors).
- `loss_law_curves`: L(N, D) = E + A/N^α + B/D^β against tokens, one curve per model size,
  with the law's 90% bootstrap interval (`LossLaw.predict`).
- `scale_bowls`: the fitted bowl per scale as a function of the learning rate at the scale's
  optimal batch size (and weight decay): log L = log L_s + ½ H_ll z² + κ_l z³, z = log lr −
  log lr*_s, with the study-wide shape (H, κ) and the scale's optimum. L_s, the bowl's floor, is
  anchored at the scale's best observed loss (the fitted floor l0_s is not stored with a fit; it
  lies within the loss noise of the best run). Also contour lines of the LR × batch bowl at a few
  loss increments, found along rays from the optimum (the smallest positive root of the cubic).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fitting.common import Z90, percentile_bounds, scale_variables
from fitting.study_fit import StudyResult, target_variables

X_VARIABLES = ("n_params", "tokens", "width", "depth", "compute")
SCALE_VARIABLES = ("n_params", "tokens", "width", "depth")
MAX_POINTS = 200
# The x range of a curve: the proxies' range widened by this factor on each side (log).
RANGE_WIDEN = 2.0
# Bowl curves: ± this many natural-log units of lr around the optimum (×4.5 each way).
BOWL_HALF_WIDTH = 1.5
# Contour levels of the LR × batch bowl: relative loss above the floor.
CONTOUR_LEVELS = (0.0025, 0.01, 0.03)
CONTOUR_RAYS = 72


class CurveRequestError(ValueError):
    """A curve that cannot be drawn as asked (unknown x, point count, a variable no proxy has)."""


def proxies_centre(fit: StudyResult) -> dict[str, float]:
    """Geometric mean of each scale variable over the fit's per-scale optima (absent ones left out)."""
    out: dict[str, float] = {}
    for v in SCALE_VARIABLES:
        vals = np.array([getattr(o.scale, v) for o in fit.optima], float)
        vals = vals[np.isfinite(vals) & (vals > 0)]
        if vals.size:
            out[v] = float(np.exp(np.mean(np.log(vals))))
    return out


def _x_range(fit: StudyResult, x_var: str) -> tuple[float, float]:
    vals = np.array([o.scale.variables()[x_var] for o in fit.optima], float)
    vals = vals[np.isfinite(vals) & (vals > 0)]
    if not vals.size:
        raise CurveRequestError(f"no proxy scale has {x_var}")
    return float(vals.min()) / RANGE_WIDEN, float(vals.max()) * RANGE_WIDEN


def _point_variables(fixed: Mapping[str, float], x_var: str, x: float) -> dict[str, float]:
    """The scale variables at x; along compute, tokens move with it (D = C / 6N)."""
    t = {k: float(v) for k, v in fixed.items() if k in SCALE_VARIABLES}
    if x_var == "compute":
        per_token = scale_variables(t["n_params"], 1.0, math.nan, math.nan)["compute"]
        t["tokens"] = x / per_token
    else:
        t[x_var] = x
    return t


def law_interval(fit: StudyResult, axis: str, target: Mapping[str, float]) -> tuple[float, float, float]:
    """(value, low, high) of the law's 90% predictive interval at `target`, as `predict` computes it."""
    law = fit.laws[axis]
    t = target_variables(fit, target)
    w, _ = law.usable_components(list(t))
    value, law_draws, scatter = law.predict_log(t, weights=w)
    lo, hi = percentile_bounds(law_draws + scatter)
    offset = fit.shape.wd_offset if (axis == "weight_decay" and fit.shape is not None) else 0.0
    vals = [max(math.exp(x) - offset, 0.0) for x in (min(float(lo), value), value, max(float(hi), value))]
    return vals[1], vals[0], vals[2]


def _prior_line(fit: StudyResult, axis: str, targets: Sequence[Mapping[str, float]]) -> dict[str, Any] | None:
    law = fit.laws[axis]
    priors = {v: p for v, p in law.priors.items() if p.published and v in law.variables}
    if not priors:
        return None
    coef = law.coef
    value, low, high = [], [], []
    for t in targets:
        tv = target_variables(fit, t)
        log_h, var = float(coef[0]), 0.0
        for j, (v, m) in enumerate(zip(law.variables, law.log_centre), start=1):
            if v not in tv:
                continue
            dx = math.log(tv[v]) - m
            p = priors.get(v)
            log_h += (p.mean if p else float(coef[j])) * dx
            if p:
                var += (p.sd * dx) ** 2
        half = Z90 * math.sqrt(var)
        value.append(math.exp(log_h))
        low.append(math.exp(log_h - half))
        high.append(math.exp(log_h + half))
    return {
        "value": value,
        "low": low,
        "high": high,
        "exponents": {v: {"mean": p.mean, "sd": p.sd, "source": p.source} for v, p in priors.items()},
        "anchor": "the fitted law's value at the proxies' centre (the published exponents fix slopes, not the constant)",
    }


def law_curve(
    fit: StudyResult,
    axis: str,
    x_var: str,
    points: int = 50,
    fixed: Mapping[str, float] | None = None,
    x_range: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """The law of `axis` along `x_var` (log-spaced), others at `fixed` (default: the proxies' centre).

    Returns x, value, low, high (90% predictive, as a recommendation), the fixed variables, the
    optima's points, and the prior line where published priors exist. KeyError: no law for `axis`.
    """
    if axis not in fit.laws:
        raise KeyError(axis)
    if x_var not in X_VARIABLES:
        raise CurveRequestError(f"x must be one of {', '.join(X_VARIABLES)}")
    if not 2 <= points <= MAX_POINTS:
        raise CurveRequestError(f"points must be between 2 and {MAX_POINTS}")
    ref = {**proxies_centre(fit), **{k: float(v) for k, v in (fixed or {}).items() if v is not None}}
    if x_var == "compute" and "n_params" not in ref:
        raise CurveRequestError("a curve along compute needs n_params")
    lo, hi = _x_range(fit, x_var)
    if x_range is not None:  # widened to include the asked range (e.g. a target beyond the proxies)
        lo, hi = min(lo, x_range[0]), max(hi, x_range[1])
    xs = np.exp(np.linspace(math.log(lo), math.log(hi), points))
    targets = [_point_variables(ref, x_var, float(x)) for x in xs]
    rows = [law_interval(fit, axis, t) for t in targets]
    law = fit.laws[axis]
    optima = [
        {"x": o.scale.variables()[x_var], **o.optimum[axis].value.to_dict()}
        for o in fit.optima
        if axis in o.optimum and math.isfinite(o.scale.variables()[x_var])
    ]
    return {
        "axis": axis,
        "x_variable": x_var,
        "fixed": {k: v for k, v in ref.items() if k != x_var and not (x_var == "compute" and k == "tokens")},
        "x": xs.tolist(),
        "value": [r[0] for r in rows],
        "low": [r[1] for r in rows],
        "high": [r[2] for r in rows],
        "variables": list(law.variables),
        "optima": optima,
        "prior": _prior_line(fit, axis, targets),
    }


def loss_law_curves(fit: StudyResult, points: int = 50, n_params: Sequence[float] = ()) -> list[dict[str, Any]]:
    """L against tokens for each model size of the optima (and each extra `n_params`), with 90% intervals."""
    if fit.loss_law is None:
        return []
    ds = np.array([o.scale.tokens for o in fit.optima if math.isfinite(o.loss)], float)
    if not ds.size:
        return []
    xs = np.exp(np.linspace(math.log(ds.min() / RANGE_WIDEN), math.log(ds.max() * RANGE_WIDEN), points))
    sizes = sorted({o.scale.n_params for o in fit.optima if math.isfinite(o.loss)} | {float(n) for n in n_params})
    out = []
    for n in sizes:
        p = fit.loss_law.predict(np.full(xs.shape, n), xs)
        out.append(
            {
                "n_params": n,
                "tokens": xs.tolist(),
                "value": p.value.tolist(),
                "low": p.low.tolist(),
                "high": p.high.tolist(),
            }
        )
    return out


def _ray_radius(h: float, k: float, level: float) -> float:
    """Smallest r > 0 with ½ h r² + k r³ = level (NaN when the cubic never reaches it)."""
    roots = np.roots([k, 0.5 * h, 0.0, -level]) if abs(k) > 1e-12 else np.array([math.sqrt(2 * level / h)])
    real = [float(r.real) for r in np.atleast_1d(roots) if abs(r.imag) < 1e-9 and r.real > 0]
    return min(real) if real else math.nan


def scale_bowls(fit: StudyResult, points: int = 50) -> list[dict[str, Any]]:
    """Per scale: the fitted bowl against lr at the optimal batch, and LR × batch contour lines."""
    shape = fit.shape
    if shape is None or "learning_rate" not in shape.axes:
        return []
    il = shape.axes.index("learning_rate")
    ib = shape.axes.index("batch_size") if "batch_size" in shape.axes else -1
    H, K = shape.hessian, shape.kappa
    z = np.linspace(-BOWL_HALF_WIDTH, BOWL_HALF_WIDTH, points)
    out = []
    for o in fit.optima:
        lr = o.optimum.get("learning_rate")
        if lr is None or not (math.isfinite(o.loss) and o.loss > 0) or not lr.value.value > 0:
            continue
        log_lr = math.log(lr.value.value)
        loss = o.loss * np.exp(0.5 * H[il, il] * z**2 + K[il] * z**3)
        keep = _monotone_from_centre(loss, int(np.argmin(np.abs(z))))
        entry: dict[str, Any] = {
            "scale": o.scale.to_dict(),
            "floor": o.loss,
            "learning_rate": np.exp(log_lr + z[keep]).tolist(),
            "loss": loss[keep].tolist(),
            "optimum": {"learning_rate": lr.value.to_dict()},
            "contours": [],
        }
        bs = o.optimum.get("batch_size")
        if bs is not None and ib >= 0 and bs.value.value > 0:
            entry["optimum"]["batch_size"] = bs.value.to_dict()
            entry["contours"] = _contours(H, K, il, ib, log_lr, math.log(bs.value.value))
        out.append(entry)
    return out


def _monotone_from_centre(loss: np.ndarray, mid: int) -> slice:
    """The points where the bowl rises away from its minimum (found from index `mid`, the grid point
    nearest the optimum): past a local maximum the cubic term turns the curve down again, which no
    longer describes the loss (the model is the bottom only)."""
    while mid > 0 and loss[mid - 1] < loss[mid]:
        mid -= 1
    while mid < len(loss) - 1 and loss[mid + 1] < loss[mid]:
        mid += 1
    lo = mid
    while lo > 0 and loss[lo - 1] >= loss[lo]:
        lo -= 1
    hi = mid
    while hi < len(loss) - 1 and loss[hi + 1] >= loss[hi]:
        hi += 1
    return slice(lo, hi + 1)


def _contours(H: np.ndarray, K: np.ndarray, il: int, ib: int, log_lr: float, log_bs: float) -> list[dict[str, Any]]:
    """Closed LR × batch contours of ½zᵀHz + Σκz³ = log(1 + level), along rays from the optimum."""
    out = []
    angles = np.linspace(0.0, 2 * math.pi, CONTOUR_RAYS, endpoint=False)
    for level in CONTOUR_LEVELS:
        lrs, bss = [], []
        for a in angles:
            d = np.array([math.cos(a), math.sin(a)])
            h = float(d @ H[np.ix_([il, ib], [il, ib])] @ d)
            k = float(K[il] * d[0] ** 3 + K[ib] * d[1] ** 3)
            r = _ray_radius(h, k, math.log1p(level)) if h > 0 else math.nan
            # A ray along which the cubic never reaches the level leaves a gap (NaN → null in JSON):
            # the contour is open there, and a plot must not join across it.
            lrs.append(math.exp(log_lr + r * d[0]) if math.isfinite(r) else math.nan)
            bss.append(math.exp(log_bs + r * d[1]) if math.isfinite(r) else math.nan)
        out.append({"level": level, "closed": all(map(math.isfinite, lrs)), "learning_rate": lrs, "batch_size": bss})
    return out


RUN_STATES = ("near_optimal", "used", "diverged", "outlier", "excluded", "failed")


def run_states(fit: StudyResult, runs: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    """How the fit used each run (by run id), from the fit document and the runs' fields.

    - excluded: the run is excluded by a user (contract 1.1) — no fit uses it;
    - outlier: listed in the fit's `outliers` (implausible for its scale, left out);
    - diverged: status "diverged", or completed more than LEFT_BASIN above its scale's best loss
      (the fit treats such runs as having left the basin: they only bound the optimum);
    - near_optimal: completed within NEAR_OPTIMAL of its scale's best loss (defines the
      near-optimal ranges of the fit's optima);
    - used: any other completed run with a loss at a scale of the fit;
    - failed: no final loss, or a scale the fit has no optimum for (e.g. added since the fit).
    """
    rows = [
        (
            int(r["id"]),
            r.get("n_params"),
            r.get("tokens"),
            r.get("width"),
            r.get("depth"),
            r.get("status"),
            r.get("final_loss"),
        )
        for r in runs
    ]
    out = run_states_of_rows(fit, rows)
    for r in runs:
        if r.get("excluded"):
            out[int(r["id"])] = "excluded"
    return out


StateRow = tuple[int, Any, Any, Any, Any, Any, Any]  # id, n_params, tokens, width, depth, status, final_loss


def run_states_of_rows(fit: StudyResult, rows: Iterable[StateRow]) -> dict[int, str]:
    """`run_states` of plain rows (id, n_params, tokens, width, depth, status, final_loss), whatever
    the runs' exclusion: the fast path for a whole study (a loop of tuple lookups, no dicts)."""
    from fitting.optima import LEFT_BASIN, NEAR_OPTIMAL  # the fit's own thresholds

    outliers = {int(o["run_id"]) for o in fit.outliers if o.get("run_id") is not None}
    best = {_scale_key(o.scale.to_dict()): o.loss for o in fit.optima}
    high, near = 1 + LEFT_BASIN, 1 + NEAR_OPTIMAL
    isfinite = math.isfinite
    out: dict[int, str] = {}
    for rid, n_params, tokens, width, depth, status, loss in rows:
        key = (
            None if n_params is None else float(n_params),
            None if tokens is None else float(tokens),
            None if width is None else float(width),
            None if depth is None else float(depth),
        )
        b = best.get(key)
        if rid in outliers:
            out[rid] = "outlier"
        elif status == "diverged":
            out[rid] = "diverged"
        elif status != "completed" or loss is None or not isfinite(loss) or b is None:
            out[rid] = "failed"
        elif isfinite(b) and loss > high * b:
            out[rid] = "diverged"
        elif isfinite(b) and loss <= near * b:
            out[rid] = "near_optimal"
        else:
            out[rid] = "used"
    return out


def _scale_key(d: Mapping[str, Any]) -> tuple[float | None, ...]:
    def norm(v: Any) -> float | None:
        return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)

    return tuple(norm(d.get(k)) for k in SCALE_VARIABLES)

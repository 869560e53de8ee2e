"""Does the study's hyperparameter transfer work? The drift of each optimum along width and depth.

For an axis x (width or depth) and a hyperparameter with a law log h* = c + Σ_v a_v (log v − m_v),
the **drift exponent** is the total change of log h* per unit of log x *as the study's own proxies
move along x*: Σ_v s_v·a_v, where s_v = d log v / d log x along the proxies at fixed other axis.
Width and depth move themselves (s = 1) and each other not at all; aspect = width/depth moves as
+1 / −1; n_params moves as the proxies show it (log n_params regressed on log width and log depth
over the distinct shapes; 12·depth·width², i.e. 2 and 1, when the shapes cannot separate them);
tokens move with the shape only when the proxies tie them to it (one budget per shape, e.g.
tokens = 20·N), otherwise they are held fixed. So under SP, where the law's variables are
n_params, tokens and the aspect ratio, a width drift is 2·a_N + a_aspect (+ the tokens' share),
and under μP, where width is a variable itself, it is a_width plus what rides along with it.
The exponent's 90% interval comes from the law's posterior draws (calibrated), like every
interval of the law.

Verdict, with tolerance δ (default 0.1: over a 16× scale-up a drift of 0.1 moves the optimum by
16^0.1 ≈ 1.3×, about the spacing of a fine sweep):

* **transfers** — the 90% interval lies within [−δ, δ] and the data, not the prior, set it (the
  drift's posterior variance is under half its prior variance);
* **drifts** — the interval excludes 0 (direction stated);
* **undetermined** — fewer than 2 values of the axis among the proxies, or an interval too wide
  to tell; with what to run.

The loss cost of reusing the base model's optimum at a named target (instead of the
recommendation) is the expected penalty of `fitting.decisions` for both settings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fitting.common import AXIS_LABEL, Interval, distinct_log_values
from fitting.decisions import penalty_model
from fitting.laws import PowerLaw
from fitting.published import DEFAULT, MUP_FAMILY
from fitting.study_fit import SHAPE_ASSUMED, StudyResult, predict, target_variables

TOLERANCE = 0.1
TRANSFER_AXES = ("width", "depth")
MIN_DATA_SHARE = 0.5
_STRUCTURAL_N = {"width": 2.0, "depth": 1.0}  # n_params ≈ 12·depth·width²
_DRAWS = 4000
MODEL = (
    "drift exponent = d log h*/d log {axis} along the study's proxies = Σ_v s_v·a_v over the law's variables "
    "(s_v: how each moves with {axis} in the proxies, a_v: the law's exponents); 90% interval from the law's "
    "posterior draws; transfers if within ±{tol:g} and set by the data, drifts if it excludes 0"
)

# RULES.md §1–2: what usually breaks transfer, per parameterization and axis.
_WIDTH_HINTS = (
    "output (unembedding) layer: forward multiplier 1/m (m = width/base_width) times the tuned output multiplier, "
    "zero init recommended; without it the logits grow with width (RULES.md §1)",
    "attention logits scaled by 1/d_head, not 1/√d_head (RULES.md §1)",
    "per-class learning rates: hidden matrices Adam LR η/m, while embeddings, biases, norm gains and the output layer "
    "keep η (SGD: η·m for vector-like and output); one global LR for every parameter breaks transfer (RULES.md §1)",
    "initialisation: hidden matrices σ/√m, embeddings and output unchanged (RULES.md §1)",
)
_WD_HINT = (
    "weight decay convention: the `mup` package's AdamW multiplies hidden λ by m so η·λ stays width-invariant; "
    "nanoGPT-mup does not — check which one the runs use (RULES.md §1, §3)"
)
_DEPTH_HINTS = {
    "mup": (
        "plain μP says nothing about depth: without a residual-branch multiplier m_L^-α the optimum is expected to "
        "move with depth; depth-μP (α = ½) or CompleteP (α = 1) make it transfer (RULES.md §2)",
    ),
    "depth-mup": (
        "residual branches must be scaled by m_L^-½ (m_L = depth/base_depth) and hidden Adam LR by m_L^-½ (RULES.md §2)",
        "Adam ε for hidden weights: ε·m^-1·m_L^-α (RULES.md §2)",
    ),
    "completep": (
        "residual branches must be scaled by 1/m_L (α = 1), hidden Adam LR constant in depth, hidden norm gains and "
        "biases η·m_L^(α−1) (RULES.md §2)",
        "Adam ε for hidden weights: ε·m^-1·m_L^-1 (RULES.md §2)",
    ),
}


def _shapes(fit: StudyResult) -> list[dict[str, float]]:
    """Distinct scales with their law variables (finite width and depth only)."""
    out = []
    for o in fit.optima:
        v = o.scale.variables()
        if all(math.isfinite(v[k]) and v[k] > 0 for k in ("n_params", "tokens", "width", "depth")):
            out.append(v)
    return out


def path_slopes(fit: StudyResult, axis: str, variables: Sequence[str]) -> tuple[dict[str, float], list[str]]:
    """s_v = d log v / d log axis along the proxies (module docstring), with notes on how each was found."""
    other = "depth" if axis == "width" else "width"
    scales = _shapes(fit)
    notes: list[str] = []
    slopes: dict[str, float] = {}
    shapes = {(round(math.log(s["width"]), 6), round(math.log(s["depth"]), 6)) for s in scales}
    lw = np.array([s["width"] for s in scales])
    ld = np.array([s["depth"] for s in scales])
    X = np.column_stack([np.ones(len(scales)), np.log(lw), np.log(ld)]) if scales else np.zeros((0, 3))
    full = len(shapes) >= 3 and np.linalg.matrix_rank(X - X.mean(axis=0) * [0, 1, 1]) == 3
    col = 1 if axis == "width" else 2
    for v in variables:
        if v == axis:
            slopes[v] = 1.0
        elif v == other:
            slopes[v] = 0.0
        elif v == "aspect":
            slopes[v] = 1.0 if axis == "width" else -1.0
        elif v == "n_params":
            if full:
                beta = np.linalg.lstsq(X, np.log([s["n_params"] for s in scales]), rcond=None)[0]
                slopes[v] = float(beta[col])
            else:
                slopes[v] = _STRUCTURAL_N[axis]
                notes.append(
                    f"n_params taken to move as width²·depth (12·depth·width²): the proxies' shapes cannot separate "
                    f"width from depth ({len(shapes)} distinct shape(s))"
                )
        elif v == "tokens":
            per_shape: dict[tuple[float, float], set[float]] = {}
            for s in scales:
                key = (round(math.log(s["width"]), 6), round(math.log(s["depth"]), 6))
                per_shape.setdefault(key, set()).add(round(math.log(s["tokens"]), 4))
            tied = len(shapes) >= 2 and all(len(b) == 1 for b in per_shape.values())
            if tied:
                keys = sorted(per_shape)
                A = np.array([[1.0, k[0], k[1]] for k in keys])
                y = np.array([next(iter(per_shape[k])) for k in keys])
                if not full:
                    # One of width, depth is constant among the proxies: regress on the one that moves.
                    moving = 1 if np.ptp(A[:, 1]) > 1e-6 else 2
                    b = np.linalg.lstsq(A[:, [0, moving]], y, rcond=None)[0]
                    slopes[v] = float(b[1]) if moving == col else 0.0
                else:
                    slopes[v] = float(np.linalg.lstsq(A, y, rcond=None)[0][col])
                notes.append(
                    f"the proxies tie tokens to the model shape (one budget per shape): tokens move as "
                    f"{axis}^{slopes[v]:.2g}, so a token-horizon effect shows as {axis} drift; one shape at two "
                    "token budgets would separate them"
                )
            else:
                slopes[v] = 0.0
        else:
            slopes[v] = 0.0
    return slopes, notes


def _prior_variance(law: PowerLaw, v: str) -> float:
    p = law.priors.get(v, DEFAULT)
    return (1 - p.tail_weight) * p.sd**2 + p.tail_weight * p.tail_sd**2


def _what_to_run(axis: str, values: Sequence[float], study_base: float | None) -> str:
    base = study_base or (min(values) if values else None)
    if not values or len(set(np.round(np.log(values), 3))) < 2:
        at = f"{axis} {base:.4g}" if base else f"the base {axis}"
        return (
            f"sweep the learning rate (and the other hyperparameters) at ≥ 3 {axis}s spanning ≥ 4× around {at} "
            f"(e.g. ×½, ×1, ×2), with the other shape dimension and the token rule unchanged"
        )
    lo, hi = min(values), max(values)
    return (
        f"the proxies span {axis} {lo:.4g}–{hi:.4g} ({hi / lo:.2g}×): add {axis}s beyond that range (e.g. {2 * hi:.4g}) "
        "or replicate the sweeps to narrow the interval"
    )


def transfer_check(
    fit: StudyResult,
    parameterization: str = "sp",
    *,
    base_width: float | None = None,
    base_depth: float | None = None,
    target: Mapping[str, float] | None = None,
    tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """Per axis (width, depth) and law: the drift exponent with its 90% interval, the verdict and what to do."""
    if not tolerance > 0:
        raise ValueError("tolerance must be > 0")
    scales = _shapes(fit)
    reuse = _reuse_costs(fit, base_width, base_depth, target)
    checks = []
    for axis in TRANSFER_AXES:
        values = sorted({s[axis] for s in scales})
        n_values = distinct_log_values(np.array(values, float)) if values else 0
        base = base_width if axis == "width" else base_depth
        for hp, law in fit.laws.items():
            checks.append(
                _check(fit, axis, hp, law, values, n_values, parameterization, tolerance, base, reuse.get(hp))
            )
    return {
        "parameterization": parameterization,
        "tolerance": tolerance,
        "model": MODEL.format(axis="axis", tol=tolerance),
        "checks": checks,
        "reuse_base": reuse.get("_summary"),
        "missing_laws": dict(fit.missing),
    }


def _check(
    fit: StudyResult,
    axis: str,
    hp: str,
    law: PowerLaw,
    values: Sequence[float],
    n_values: int,
    parameterization: str,
    tolerance: float,
    base: float | None,
    reuse: dict[str, Any] | None,
) -> dict[str, Any]:
    slopes, notes = path_slopes(fit, axis, law.variables)
    s = np.array([0.0] + [slopes[v] for v in law.variables])
    draws = law._coefficient_draws(np.random.default_rng(20), _DRAWS) @ s
    value = float(law.coef @ s)
    iv = Interval.from_samples(value, draws)
    prior_var = sum(slopes[v] ** 2 * _prior_variance(law, v) for v in law.variables)
    post_var = float(np.var(draws))
    data_share = float(np.clip(1 - post_var / prior_var, 0.0, 1.0)) if prior_var > 0 else 0.0
    contributions = {
        v: Interval.from_samples(
            float(law.coef[1 + j] * slopes[v]),
            law._coefficient_draws(np.random.default_rng(20), _DRAWS)[:, 1 + j] * slopes[v],
        ).to_dict()
        for j, v in enumerate(law.variables)
        if slopes[v] != 0.0
    }
    name, mup = AXIS_LABEL[hp], parameterization in MUP_FAMILY
    direction = "rises" if iv.low > 0 else ("falls" if iv.high < 0 else None)
    what_to_run = None
    if n_values < 2:
        verdict = "undetermined"
        message = f"all proxies have one {axis}: the data cannot show a drift along it"
        what_to_run = _what_to_run(axis, values, base)
    elif -tolerance <= iv.low and iv.high <= tolerance and data_share >= MIN_DATA_SHARE:
        verdict = "transfers"
        message = (
            f"the optimal {name} moves as {axis}^{iv.value:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}] along the proxies: "
            f"within ±{tolerance:g}"
        )
    elif direction is not None:
        verdict = "drifts"
        message = (
            f"the optimal {name} {direction} with {axis}: {axis}^{iv.value:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}] "
            "along the proxies"
        )
        if not mup:
            message += " (expected under the standard parameterization: nothing is meant to transfer)"
    else:
        verdict = "undetermined"
        why = (
            "mostly the prior's (the data narrowed it little)"
            if data_share < MIN_DATA_SHARE
            else f"too wide to tell a drift within ±{tolerance:g} from none"
        )
        message = f"{axis}^{iv.value:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}] along the proxies: {why}"
        what_to_run = _what_to_run(axis, values, base)
    hints: list[str] = []
    if verdict == "drifts" and mup:
        if axis == "width":
            hints = list(_WIDTH_HINTS) + ([_WD_HINT] if hp == "weight_decay" else [])
        else:
            hints = list(_DEPTH_HINTS.get(parameterization, ()))
    return {
        "axis": axis,
        "hyperparameter": hp,
        "verdict": verdict,
        "direction": direction,
        "exponent": iv.to_dict(),
        "message": message,
        "path": slopes,
        "contributions": contributions,
        "data_share": data_share,
        "n_values": n_values,
        "range": [min(values), max(values)] if values else None,
        "what_to_run": what_to_run,
        "hints": hints,
        "notes": notes,
        "reuse_cost": reuse,
        "model": MODEL.format(axis=axis, tol=tolerance),
    }


def _base_scale(fit: StudyResult, base_width: float | None, base_depth: float | None) -> tuple[int, str] | None:
    """Index of the base model among the optima, and how it was chosen."""
    if not fit.optima:
        return None
    if base_width or base_depth:

        def dist(o: Any) -> float:
            d = 0.0
            for v, b in (("width", base_width), ("depth", base_depth)):
                x = getattr(o.scale, v)
                if b and math.isfinite(x) and x > 0:
                    d += math.log(x / b) ** 2
            return d

        i = min(range(len(fit.optima)), key=lambda k: (dist(fit.optima[k]), fit.optima[k].scale.tokens))
        return i, "the proxy nearest the study's base_width/base_depth"
    i = min(range(len(fit.optima)), key=lambda k: (fit.optima[k].scale.n_params, fit.optima[k].scale.tokens))
    return i, "the smallest proxy (the study names no base_width/base_depth)"


def _reuse_costs(
    fit: StudyResult, base_width: float | None, base_depth: float | None, target: Mapping[str, float] | None
) -> dict[str, Any]:
    """Per law: the expected penalty at `target` of the base model's optimum against the recommendation's."""
    if not target:
        return {}
    picked = _base_scale(fit, base_width, base_depth)
    if picked is None:
        return {}
    i, how = picked
    t = target_variables(fit, target)
    t.pop(SHAPE_ASSUMED, None)
    model = penalty_model(fit, t)
    if isinstance(model, str):
        return {"_summary": {"available": False, "reason": model}}
    pred = predict(fit, target)
    if pred.learning_rate is None:  # a loss-law-only fit: no setting to reuse or price
        return {"_summary": {"available": False, "reason": "no learning-rate law"}}
    rec: dict[str, float | None] = {
        "learning_rate": pred.learning_rate.value,
        "batch_size": None if pred.batch_size is None else pred.batch_size.value,
        "weight_decay": None if pred.weight_decay is None else pred.weight_decay.value,
    }
    base = fit.optima[i]
    base_hp = {a: ax.value.value for a, ax in base.optimum.items()}
    rec_pen = model.penalty(rec).to_dict()
    out: dict[str, Any] = {}
    for hp in fit.laws:
        if base_hp.get(hp) is None:
            continue
        out[hp] = {
            "base_value": base_hp[hp],
            "recommended_value": rec.get(hp),
            "expected_loss_penalty": model.penalty({**rec, hp: base_hp[hp]}).to_dict(),
            "recommendation_penalty": rec_pen,
        }
    everything = {**rec, **{hp: base_hp[hp] for hp in fit.laws if base_hp.get(hp) is not None}}
    out["_summary"] = {
        "available": True,
        "base_scale": base.scale.to_dict(),
        "chosen_as": how,
        "target": dict(target),
        "expected_loss_penalty": model.penalty(everything).to_dict(),
        "recommendation_penalty": rec_pen,
        "model": model.describe(),
    }
    return out


__all__ = ["TOLERANCE", "path_slopes", "transfer_check"]

"""From a fit's numbers to launch decisions: what being wrong costs, the largest affordable batch.

**Expected loss penalty** (`PenaltyModel`). The relative loss increase of training at settings u
(log lr, log batch, log(wd + offset): the bowl's coordinates) instead of at the target's true
optimum μ is exp(f(e^g ⊙ (u − μ))) − 1, with f the fitted bowl (½zᵀHz + Σκz³, `fitting.surface`;
cubic capped at ±½ of the quadratic, `fitting.bowl_widths.excess`) of the proxy scale nearest
the target (in log n_params, log tokens), stretched by that scale's own width g
(`fitting.bowl_widths`), and re-centred on the target's extrapolated optimum. The penalty of u
is its expectation over μ ~ the laws' predictive distribution at the target (each law's
posterior draws plus its scatter, the same draws a recommendation's interval comes from; the
laws' errors independent of each other), and over the bowl's own uncertainty (its bootstrap
draws of H, κ; g ± its standard error). `value` is that expectation, `low`/`high` the central
90% of the penalty over the same draws. Assumptions, each stated in the answer: the bowl's
shape in log hyperparameters at the target is the nearest proxy's; swept axes without a law
are taken at their optimum; unswept hyperparameters are as in the proxies.

**Loss-tolerance batch** (`tolerance_batch`). The largest batch whose predicted loss at the
target, with the other hyperparameters re-optimised for it, is within a fraction ε of the
optimum: log B = log B* + w_b / e^{g_b}, with w_b the largest root of
min_{other axes} f(w) = log(1 + ε) (the bowl's profile along log batch) and g_b the batch
width at the target from the width law over the proxies' scales (how the bowl's width in log
batch moves with tokens and size). The learning rate is the conditional law's at that batch
(`fitting.study_fit.predict(batch_size=…)`), the steps tokens / (B · seq_len). Draws: B* from
the batch law's predictive, g_b from the width law's, the profile root per bootstrap shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fitting.bowl_widths import STRETCH_BOUND, excess
from fitting.common import AXIS_LABEL, Interval, percentile_bounds
from fitting.optima import LEFT_BASIN
from fitting.study_fit import StudyResult, predict

PENALTY_DRAWS = 2000
# A draw whose settings sit so far from the optimum that the bowl puts them more than 20% above it is
# counted as 20%: the engine's own threshold for a run that left the basin (`fitting.optima.LEFT_BASIN`:
# diverged or useless). The bowl, fitted near the bottom, says nothing more precise out there, and
# without the cap a heavy-tailed law's rare wild draws would make the expectation meaningless.
# A scale's own width is used only when its standard error is below MAX_STRETCH_SE (else the width
# law's value at that scale, when that is as precise, else the shared bowl).
MAX_STRETCH_SE = 0.5
# ε of the tolerance batch: the bowls are fitted on runs within 1–5% of each scale's best loss
# (`fitting.surface.DEFAULT_BAND`, `MAX_BAND`); a larger tolerance would read the bowl where no run was.
MAX_LOSS_INCREASE = 0.05
# Beyond this many times the profile's 5% point the bowl describes nothing: a tolerance the cubic
# never reaches there is reported as a bound (`capped`).
_PROFILE_GRID = np.linspace(0.0, 8.0, 321)
PENALTY_FORM = (
    "E[exp(f(e^g ⊙ (u − μ))) − 1]: f the fitted loss bowl (½zᵀHz + Σκz³ in log lr, log batch, log wd) of the "
    "proxy scale nearest the target, stretched by that scale's own width g and re-centred on the target's "
    "extrapolated optimum μ; expectation over μ ~ the laws' predictive at the target and the bowl's bootstrap draws"
)
TOLERANCE_FORM = (
    "log B = log B* + w/e^g: w the largest batch offset where the bowl's profile (other hyperparameters re-optimised) "
    "rises by log(1 + ε); g the batch width at the target from the width law over the proxies' scales "
    "(g ~ c + b_N log N + b_D log D); learning rate from the conditional law at that batch; steps = tokens / (B · seq_len)"
)


def _seed(name: str) -> int:
    return 1000 + sum(ord(c) for c in name)


@dataclass(frozen=True)
class Penalty:
    """Expected relative loss increase (`value`) with the central 90% of the penalty over the posterior."""

    value: float
    low: float
    high: float
    beyond_basin: float = 0.0  # share of the draws 20% or more above the optimum (counted as 20%)

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high, "beyond_basin": self.beyond_basin}


@dataclass(frozen=True, eq=False)
class PenaltyModel:
    """Draws of the target's optimum and of the bowl, shared by every setting scored (common random numbers)."""

    axes: tuple[str, ...]
    known: np.ndarray  # (d,) axis has a law (else taken at its optimum)
    mu: np.ndarray  # (n, d) draws of the target's optimum, bowl coordinates
    centre: np.ndarray  # (d,) posterior-mean optimum, bowl coordinates
    H: np.ndarray  # (n, d, d)
    K: np.ndarray  # (n, d)
    stretch: np.ndarray  # (n, d)
    wd_offset: float
    nearest: dict[str, float | None]
    assumptions: tuple[str, ...] = field(default=())

    def coordinates(self, settings: Mapping[str, float | None]) -> np.ndarray:
        """Bowl coordinates of `settings`; an axis missing (or None) is taken at the posterior-mean optimum."""
        u = self.centre.copy()
        for j, a in enumerate(self.axes):
            v = settings.get(a)
            if v is None or not self.known[j]:
                continue
            x = float(v) + (self.wd_offset if a == "weight_decay" else 0.0)
            if not (math.isfinite(x) and x > 0):
                raise ValueError(f"{a} must be a positive number to score its loss penalty")
            u[j] = math.log(x)
        return u

    def draws(self, settings: Mapping[str, float | None]) -> np.ndarray:
        """Per draw, the relative loss increase at `settings` over the target's optimum."""
        z = (self.coordinates(settings)[None, :] - self.mu) * self.known
        f = excess(z * np.exp(self.stretch), self.H, self.K)
        out: np.ndarray = np.minimum(np.expm1(np.minimum(f, 50.0)), LEFT_BASIN)
        return out

    def penalty(self, settings: Mapping[str, float | None]) -> Penalty:
        p = self.draws(settings)
        lo, hi = (float(b) for b in percentile_bounds(p))
        mean = float(np.mean(p))
        return Penalty(mean, min(lo, mean), max(hi, mean), float(np.mean(p >= LEFT_BASIN)))

    def describe(self) -> dict[str, Any]:
        return {
            "form": PENALTY_FORM,
            "nearest_scale": self.nearest,
            "axes": [a for a, k in zip(self.axes, self.known) if k],
            "assumptions": list(self.assumptions),
            "draws": int(self.mu.shape[0]),
        }


def penalty_model(fit: StudyResult, t: Mapping[str, float], n: int = PENALTY_DRAWS) -> PenaltyModel | str:
    """The penalty model at the target variables `t` (`target_variables`), or why there is none."""
    shape = fit.shape
    if shape is None or "learning_rate" not in fit.laws or "learning_rate" not in shape.axes:
        return "no loss bowl with a learning-rate law: the penalty needs the fitted bowl and the laws' uncertainty"
    axes = shape.axes
    d = len(axes)
    known = np.array([a in fit.laws for a in axes])
    mu = np.zeros((n, d))
    centre = np.zeros(d)
    assumptions = [
        "the bowl's shape in log hyperparameters at the target is the nearest proxy scale's (its width measured there)",
        "the laws' errors are independent of each other; unswept hyperparameters are as in the proxies",
        f"a draw {100 * LEFT_BASIN:.0f}% or more above the optimum counts as {100 * LEFT_BASIN:.0f}% (the run has left "
        "the basin: diverged or useless; `beyond_basin` is their share)",
    ]
    for j, a in enumerate(axes):
        if not known[j]:
            assumptions.append(f"{AXIS_LABEL[a]} has no law: taken at its optimum (no penalty counted for it)")
            continue
        law = fit.laws[a]
        w, _ = law.usable_components(list(t))
        value, law_draws, scatter = law.predict_log(t, seed=_seed(a), n=n, weights=w)
        mu[:, j] = law_draws + scatter
        centre[j] = value
    B = len(shape.hessian_samples)
    pick = np.arange(n) % B if B else np.zeros(n, dtype=int)
    H = shape.hessian_samples[pick] if B else np.broadcast_to(shape.hessian, (n, d, d))
    K = shape.kappa_samples[pick] if B else np.broadcast_to(shape.kappa, (n, d))
    stretch = np.zeros((n, d))
    nearest: dict[str, float | None] = {}
    widths = fit.bowl_widths
    i = widths.nearest(t) if widths is not None else None
    if widths is not None and i is not None:
        sc = widths.scales[i]
        nearest = {"n_params": sc.n_params, "tokens": sc.tokens}
        rng = np.random.default_rng(_seed("stretch"))
        for j, a in enumerate(axes):
            got = widths.stretch_at_scale(i, a) if a in widths.axes else None
            if got is not None and got[1] <= MAX_STRETCH_SE:
                stretch[:, j] = np.clip(got[0] + got[1] * rng.standard_normal(n), -STRETCH_BOUND, STRETCH_BOUND)
            elif got is not None:
                assumptions.append(
                    f"{AXIS_LABEL[a]}: the nearest scale's bowl width is too uncertain; shared bowl used"
                )
    else:
        o = _nearest_optimum(fit, t)
        nearest = {} if o is None else {"n_params": o[0], "tokens": o[1]}
        assumptions.append("this fit stores no per-scale bowl widths: the shared bowl is used (refit to measure them)")
    return PenaltyModel(axes, known, mu, centre, H, K, stretch, shape.wd_offset, nearest, tuple(assumptions))


def _nearest_optimum(fit: StudyResult, t: Mapping[str, float]) -> tuple[float, float] | None:
    pts = [(o.scale.n_params, o.scale.tokens) for o in fit.optima]
    if not pts or "n_params" not in t or "tokens" not in t:
        return None
    lt = np.log([t["n_params"], t["tokens"]])
    return min(pts, key=lambda p: float(np.sum((np.log(p) - lt) ** 2)))


def largest_proxy_settings(fit: StudyResult) -> tuple[dict[str, float | None], dict[str, float | None]] | None:
    """(scale, settings) of the largest proxy (by n_params, then tokens): its per-scale optimum of every axis."""
    if not fit.optima:
        return None
    o = max(fit.optima, key=lambda o: (o.scale.n_params, o.scale.tokens))
    settings: dict[str, float | None] = {a: ax.value.value for a, ax in o.optimum.items()}
    return dict(o.scale.to_dict()), settings


# --- the largest batch within a loss tolerance ------------------------------------------------
def _profile_offsets(H: np.ndarray, K: np.ndarray, ib: int, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Per bowl draw: the largest batch offset w ≥ 0 with min over the other axes of f(w) ≤ level, and
    whether the bowl never reached the level where it describes anything (then w is that limit: a bound).

    H (m, d, d), K (m, d). The other axes start at the quadratic's conditional optimum and take four
    Newton steps on the cubic (as `fitting.study_fit._conditional`).
    """
    m, d = K.shape
    free = [j for j in range(d) if j != ib]
    grid = _PROFILE_GRID
    W = np.zeros((m, grid.size, d))
    W[:, :, ib] = grid[None, :]
    if free:
        Hff = H[:, free][:, :, free]
        hfb = H[:, free, ib]
        wf = -np.einsum("mfg,mg,n->mnf", np.linalg.inv(Hff), hfb, grid)
        kf = K[:, free]
        for _ in range(4):
            g = np.einsum("mfg,mng->mnf", Hff, wf) + hfb[:, None, :] * grid[None, :, None] + 3 * kf[:, None, :] * wf**2
            J = Hff[:, None, :, :] + np.einsum("mnf,fg->mnfg", 6 * kf[:, None, :] * wf, np.eye(len(free)))
            step = np.linalg.solve(J, g[..., None])[..., 0]
            wf = np.where(np.isfinite(step), wf - step, wf)
        W[:, :, free] = wf
    f = excess(W, H[:, None], K[:, None])
    # Where the bowl stops describing anything: 1.5× the quadratic profile's offset at MAX_LOSS_INCREASE.
    h_prof = H[:, ib, ib] - (np.einsum("mf,mfg,mg->m", hfb, np.linalg.inv(Hff), hfb) if free else 0.0)
    limit = 1.5 * np.sqrt(2 * math.log1p(MAX_LOSS_INCREASE) / np.maximum(h_prof, 1e-9))
    out = np.empty(m)
    capped = np.zeros(m, dtype=bool)
    for k in range(m):
        above = np.flatnonzero((f[k] > level) & (grid > 0))
        if above.size == 0 or grid[above[0]] > limit[k]:
            out[k], capped[k] = min(limit[k], grid[-1]), True
            continue
        i = above[0]
        f0, f1 = f[k, i - 1], f[k, i]
        out[k] = grid[i - 1] + (grid[i] - grid[i - 1]) * (level - f0) / max(f1 - f0, 1e-12)
    return out, capped


def _batch_width(fit: StudyResult, t: Mapping[str, float], n: int) -> tuple[np.ndarray, float, str]:
    """Draws and point value of the batch stretch g_b at the target, and where it came from."""
    widths = fit.bowl_widths
    rng = np.random.default_rng(_seed("batch-width"))
    if widths is not None and "batch_size" in widths.laws and "n_params" in t and "tokens" in t:
        law = widths.laws["batch_size"]
        mean, sd = law.predict(t)
        slopes = ", ".join(f"{v} {s[0]:+.2f} ± {s[1]:.2f}" for v in law.variables if (s := law.slope(v)) is not None)
        how = f"width law over {law.n_scales} proxy scales (slope of g in log {slopes})"
        return mean + sd * rng.standard_normal(n), mean, how
    if widths is not None and (i := widths.nearest(t)) is not None and "batch_size" in widths.axes:
        got = widths.stretch_at_scale(i, "batch_size")
        if got is not None:
            return got[0] + got[1] * rng.standard_normal(n), got[0], "the nearest proxy scale's width"
    return np.zeros(n), 0.0, "the shared bowl (no per-scale widths in this fit: refit to measure them)"


def tolerance_batch(
    fit: StudyResult,
    target: Mapping[str, float],
    t: Mapping[str, float],
    max_loss_increase: float,
    *,
    seq_len: float | None,
    batch_multiple: int | None = None,
    n: int = PENALTY_DRAWS,
) -> dict[str, Any]:
    """The largest batch within `max_loss_increase` of the optimum at the target (module docstring).

    `target` is what the caller asked (for the conditional learning rate), `t` its law variables.
    Raises ValueError for a tolerance outside (0, MAX_LOSS_INCREASE]; returns {"available": False,
    "reason"} when the fit cannot say (no batch law, no LR × batch bowl).
    """
    if not 0 < max_loss_increase <= MAX_LOSS_INCREASE:
        raise ValueError(
            f"max_loss_increase must be in (0, {MAX_LOSS_INCREASE:g}]: the bowls are fitted on runs within a few "
            "percent of each scale's best loss and say nothing beyond"
        )
    shape = fit.shape
    missing = [a for a in ("learning_rate", "batch_size") if a not in fit.laws or shape is None or a not in shape.axes]
    if shape is None or missing:
        return {
            "available": False,
            "max_loss_increase": max_loss_increase,
            "reason": f"needs the LR × batch bowl and both laws; missing: {', '.join(missing)}",
        }
    ib = shape.axes.index("batch_size")
    level = math.log1p(max_loss_increase)
    warnings: list[str] = []
    if not shape.cross_identified[
        max(ib, shape.axes.index("learning_rate")), min(ib, shape.axes.index("learning_rate"))
    ]:
        warnings.append(
            "no runs vary learning rate and batch together: the LR–batch valley is not identified, so the learning "
            "rate is not re-optimised along the batch"
        )
    # Point value: the posterior-mean bowl, batch law and width.
    w0, cap0 = _profile_offsets(shape.hessian[None], shape.kappa[None], ib, level)
    B = len(shape.hessian_samples)
    if B:
        ws, caps = _profile_offsets(shape.hessian_samples, shape.kappa_samples, ib, level)
        pick = np.arange(n) % B
        w_draws, cap_draws = ws[pick], caps[pick]
    else:
        w_draws, cap_draws = np.full(n, w0[0]), np.full(n, cap0[0])
    g_draws, g0, width_source = _batch_width(fit, t, n)
    law = fit.laws["batch_size"]
    wts, _ = law.usable_components(list(t))
    mu0, law_draws, scatter = law.predict_log(t, seed=_seed("batch_size"), n=n, weights=wts)
    log_b = mu0 + float(w0[0]) * math.exp(-g0)
    draws = law_draws + scatter + w_draws * np.exp(-g_draws)
    batch = Interval.exp_of(log_b, draws)
    value = batch.value
    rounded = None
    if batch_multiple is not None and batch_multiple >= 1:
        rounded = float(max(batch_multiple, math.floor(value / batch_multiple) * batch_multiple))
        value = rounded
    if bool(cap0[0]):
        warnings.append(
            f"the bowl's profile along the batch does not reach +{100 * max_loss_increase:.2g}% where the proxies' runs "
            "describe it: the batch returned is a lower bound (sweep larger batches at the proxies to measure it)"
        )
    cond = predict(fit, target, value)
    assert cond.learning_rate is not None  # both laws exist (checked above)
    optimum = predict(fit, target)
    tokens = t.get("tokens")
    steps = steps_opt = None
    if seq_len and tokens:
        steps_draws = tokens / (np.exp(draws) * seq_len)
        steps = Interval.from_samples(tokens / (value * seq_len), steps_draws).to_dict()
        if optimum.batch_size is not None:
            steps_opt = tokens / (optimum.batch_size.value * seq_len)
    else:
        warnings.append("steps are null: pass seq_len (or give the study one) to count optimizer steps")
    return {
        "available": True,
        "max_loss_increase": max_loss_increase,
        "batch_size": batch.to_dict()
        if rounded is None
        else {"value": value, "low": min(batch.low, value), "high": max(batch.high, value)},
        "batch_tokens": value * seq_len if seq_len else None,
        "batch_over_optimal": value / optimum.batch_size.value if optimum.batch_size is not None else None,
        "learning_rate": cond.learning_rate.to_dict(),
        "steps": steps,
        "steps_at_optimal_batch": steps_opt,
        "capped": bool(cap0[0]),
        "capped_share": float(np.mean(cap_draws)),
        "rounded_to_multiple": batch_multiple if rounded is not None else None,
        "model": {"form": TOLERANCE_FORM, "batch_width": width_source},
        "warnings": warnings,
    }


def recommendation_penalties(
    fit: StudyResult,
    t: Mapping[str, float],
    settings: Mapping[str, float | None],
    baselines: dict[str, Any],
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, list[str]]:
    """(expected_loss_penalty, penalty_model, warnings); adds `expected_loss_penalty` to each usable baseline and a
    `largest_proxy` baseline (the largest proxy's optimum reused) to `baselines` in place."""
    model = penalty_model(fit, t)
    if isinstance(model, str):
        return None, None, [f"expected_loss_penalty is null: {model}"]
    warnings: list[str] = []
    rec = model.penalty(settings)
    if rec.beyond_basin >= 0.05:
        warnings.append(
            f"expected_loss_penalty: {100 * rec.beyond_basin:.0f}% of the posterior draws put these settings "
            f"{100 * LEFT_BASIN:.0f}% or more above the target's optimum (counted as {100 * LEFT_BASIN:.0f}%): the laws "
            "are too uncertain here for the bowl to price being wrong; read the penalty as a floor"
        )
    for b in baselines.values():
        if not isinstance(b, dict) or not b.get("available") or b.get("learning_rate") is None:
            continue
        alt = {
            "learning_rate": b["learning_rate"],
            "batch_size": b.get("batch_size") if b.get("batch_size") is not None else settings.get("batch_size"),
            "weight_decay": settings.get("weight_decay"),
        }
        b["expected_loss_penalty"] = model.penalty(alt).to_dict()
        b["penalty_settings"] = "its learning rate and batch; weight decay as recommended" + (
            ""
            if b.get("batch_size") is not None
            else "; batch as recommended (the baseline gives none without seq_len)"
        )
    largest = largest_proxy_settings(fit)
    if largest is not None:
        scale, hp = largest
        alt = {a: hp.get(a) if hp.get(a) is not None else settings.get(a) for a in model.axes}
        n_, d_ = scale.get("n_params"), scale.get("tokens")
        baselines["largest_proxy"] = {
            "available": True,
            "source": f"reuse the largest proxy's optimum (N={n_:.3g}, D={d_:.3g}) unchanged",
            "scale": scale,
            **{a: hp.get(a) for a in ("learning_rate", "batch_size", "weight_decay")},
            "expected_loss_penalty": model.penalty(alt).to_dict(),
        }
    return rec.to_dict(), model.describe(), warnings


__all__ = [
    "MAX_LOSS_INCREASE",
    "Penalty",
    "PenaltyModel",
    "largest_proxy_settings",
    "penalty_model",
    "recommendation_penalties",
    "tolerance_batch",
]

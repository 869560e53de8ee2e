"""Entry points for the HTTP layer: `fit_study` (a study's runs → StudyResult) and `predict`.

A StudyResult serialises to the contract's fit object (`to_dict`) and to a richer JSON state
(`to_state`, with bootstrap samples and observed ranges) from which `StudyResult.from_state`
rebuilds everything `predict` needs.

Extrapolation: per law variable, the target's distance outside the proxies' observed range
as a factor ≥ 1 (exp of the log-distance; 1 inside the range), maximised over variables.
Level "interpolation" when the factor is 1 (inside every range), "extrapolation" up to
10×, "far" beyond 10× (an order of magnitude past the largest or smallest proxy).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fitting.common import AXES, AXIS_LABEL, InsufficientData, Interval, percentile_bounds, scale_variables
from fitting.laws import BowlShape, PowerLaw, fit_laws
from fitting.loss_law import LossLaw, fit_loss_law
from fitting.optima import ScaleOptimum, analyse_sweeps
from fitting.published import ExponentPrior, exponent_priors
from fitting.runs import RunTable
from fitting.weight_decay import analyse_weight_decay

FAR_FACTOR = 10.0
MAX_LOG_FACTOR = 690.0
LOSS_LAW_MIN_SCALES = 5
LOSS_LAW_MAX_BOOTSTRAP = 200
# Prefix of the warning saying why a study has no loss law (read back by `no_loss_law_reason`).
NO_LOSS_LAW = "no loss law: "
PRIOR_MODES = ("published", "none")


class StaleState(ValueError):
    """A stored fit state from an older engine version: it must be recomputed, not read."""


class MissingTarget(ValueError):
    """The target lacks a variable the fitted laws use (HTTP 422 naming it)."""

    def __init__(self, variable: str) -> None:
        super().__init__(f"missing target variable {variable}: the fitted laws use it")
        self.variable = variable


@dataclass(frozen=True, eq=False)
class StudyResult:
    """A study's fit: per-scale optima, power laws, shared bowl shape, loss law, warnings."""

    optima: tuple[ScaleOptimum, ...]
    laws: Mapping[str, PowerLaw]
    shape: BowlShape | None
    loss_law: LossLaw | None
    weight_decay_analysis: Mapping[str, Any] | None
    warnings: tuple[str, ...]
    n_runs: int
    missing: Mapping[str, str] = field(default_factory=dict)
    seq_len: float | None = None
    bootstrap: int = 0
    outliers: tuple[Mapping[str, Any], ...] = ()
    priors: str = "published"

    def no_loss_law_reason(self) -> str | None:
        """Why the study has no loss law, from its "no loss law: …" warning (None if none was recorded)."""
        if self.loss_law is not None:
            return None
        return next((w[len(NO_LOSS_LAW) :] for w in self.warnings if w.startswith(NO_LOSS_LAW)), None)

    def to_dict(self) -> dict[str, Any]:
        """The contract's fit-object fields (the app adds id, created_at, data_version)."""
        return {
            "optima": [o.to_dict() for o in self.optima],
            "laws": {a: law.to_dict() for a, law in self.laws.items()},
            "loss_law": None if self.loss_law is None else self.loss_law.to_dict(),
            "warnings": list(self.warnings),
            "n_runs": self.n_runs,
            "weight_decay_analysis": None if self.weight_decay_analysis is None else dict(self.weight_decay_analysis),
            "missing_laws": dict(self.missing),
            "outliers": [dict(o) for o in self.outliers],
            "priors": self.priors,
        }

    def to_state(self) -> dict[str, Any]:
        """JSON-serialisable state including bootstrap samples; `from_state` inverts it."""
        d = self.to_dict()
        d["state"] = {
            "version": 2,
            "laws": {a: law.to_state() for a, law in self.laws.items()},
            "shape": None if self.shape is None else self.shape.to_state(),
            "seq_len": self.seq_len,
            "bootstrap": self.bootstrap,
        }
        return d

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> StudyResult:
        """Inverse of `to_state`. Raises StaleState for a state written by an older engine."""
        st = d.get("state") or {}
        if st.get("version") != 2:
            raise StaleState(f"fit state version {st.get('version')!r} predates this engine (2): refit")
        return cls(
            optima=tuple(ScaleOptimum.from_dict(o) for o in d.get("optima", [])),
            laws={a: PowerLaw.from_state(v) for a, v in (st.get("laws") or {}).items()},
            shape=None if st.get("shape") is None else BowlShape.from_state(st["shape"]),
            loss_law=None if d.get("loss_law") is None else LossLaw.from_dict(d["loss_law"]),
            weight_decay_analysis=d.get("weight_decay_analysis"),
            warnings=tuple(d.get("warnings", ())),
            n_runs=int(d.get("n_runs", 0)),
            missing=dict(d.get("missing_laws") or {}),
            seq_len=st.get("seq_len"),
            bootstrap=int(st.get("bootstrap", 0)),
            outliers=tuple(d.get("outliers") or ()),
            priors=str(d.get("priors", "published")),
        )


def study_priors(
    parameterization: str, optimizer: str, mode: str, runs: RunTable
) -> dict[str, dict[str, ExponentPrior]]:
    """Per axis, the published priors on its law's exponents ({} everywhere for mode "none")."""
    if mode not in PRIOR_MODES:
        raise ValueError(f"priors must be one of {PRIOR_MODES}, got {mode!r}")
    if mode == "none":
        return {}
    bs = runs.batch_size[np.isfinite(runs.batch_size)]
    batch_fixed = bool(bs.size) and bool(np.all(np.abs(np.log(bs / bs[0])) < 0.01))
    return {a: exponent_priors(a, parameterization, optimizer, batch_fixed=batch_fixed) for a in AXES}


def fit_study(
    runs: RunTable,
    *,
    bootstrap: int = 200,
    seed: int = 0,
    seq_len: float | None = None,
    loss_law: bool = True,
    parameterization: str = "sp",
    optimizer: str = "adamw",
    priors: str = "published",
) -> StudyResult:
    """Per-scale optima, power laws for lr/bs/wd, weight-decay analysis and loss law of a study.

    log h* = c + Σ a_j log x_j per hyperparameter: a model average over variable sets with
    published priors on the exponents (`priors="none"`: vague priors only).
    Raises InsufficientData when no run is usable at all.
    """
    if seq_len is None and len(runs):
        sl = runs.seq_len[np.isfinite(runs.seq_len)]
        if sl.size and np.all(sl == sl[0]):
            seq_len = float(sl[0])
    analysis = analyse_sweeps(runs, bootstrap=bootstrap, seed=seed)
    law_set = fit_laws(
        analysis, bootstrap=bootstrap, seed=seed, priors=study_priors(parameterization, optimizer, priors, runs)
    )
    warnings = list(analysis.warnings)
    for axis, why in law_set.missing.items():
        warnings.append(f"no {AXIS_LABEL[axis]} law: {why}")
    for axis, law in law_set.laws.items():
        moved = [v for v in law.variables if law.priors[v].published]
        if moved and law.n_scales < 4:
            warnings.append(
                f"{AXIS_LABEL[axis]} law rests on {law.n_scales} scales: its exponents are mostly the "
                "published priors'; proxies at more sizes and token budgets would let the data decide"
            )
        if law.calibration > 1.05:
            warnings.append(
                f"{AXIS_LABEL[axis]} law: forecasts of the largest proxies from the smaller ones missed "
                f"by more than their intervals; intervals widened {law.calibration:.2f}×"
            )
    wd = None
    if "weight_decay" in analysis.axes:
        res = analyse_weight_decay(analysis, seq_len, bootstrap=min(bootstrap, 200), seed=seed)
        if isinstance(res, str):
            warnings.append(f"weight-decay scaling model not tested: {res}")
        else:
            wd = res.to_dict()
    ll = _loss_law(analysis.optima, bootstrap, seed, warnings) if loss_law else None
    outliers = tuple(
        {
            "run_id": None if o.run_id is None or not math.isfinite(o.run_id) else int(o.run_id),
            "run_key": o.run_key,
            "reason": o.reason,
        }
        for o in getattr(analysis, "outliers", ())
    )
    return StudyResult(
        tuple(analysis.optima),
        law_set.laws,
        law_set.shape,
        ll,
        wd,
        tuple(warnings),
        len(runs),
        dict(law_set.missing),
        seq_len,
        bootstrap,
        outliers,
        priors,
    )


def _loss_law(optima: Sequence[ScaleOptimum], bootstrap: int, seed: int, warnings: list[str]) -> LossLaw | None:
    pts = [(o.scale.n_params, o.scale.tokens, o.loss) for o in optima if math.isfinite(o.loss)]
    n_n = len({p[0] for p in pts})
    n_d = len({p[1] for p in pts})
    if len(pts) < LOSS_LAW_MIN_SCALES or n_n < 2 or n_d < 2:
        warnings.append(
            f"{NO_LOSS_LAW}{len(pts)} scales with {n_n} distinct n_params and {n_d} distinct tokens; "
            f"need ≥ {LOSS_LAW_MIN_SCALES} scales with ≥ 2 of each"
        )
        return None
    n, d, l = (np.array(c, dtype=float) for c in zip(*pts))
    try:
        law = fit_loss_law(n, d, l, bootstrap=min(bootstrap, LOSS_LAW_MAX_BOOTSTRAP), seed=seed)
    except InsufficientData as e:
        warnings.append(f"{NO_LOSS_LAW}{e}")
        return None
    why = law.unidentified()
    if why is not None:
        warnings.append(f"{NO_LOSS_LAW}{why}")
        return None
    return law


@dataclass(frozen=True)
class Extrapolation:
    level: str
    factor: float
    per_variable: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "factor": self.factor, "per_variable": self.per_variable}


@dataclass(frozen=True)
class Prediction:
    """Recommendation at a target scale (contract fields minus fit_id/data_version/per_layer)."""

    learning_rate: Interval
    batch_size: Interval | None
    batch_tokens: float | None
    weight_decay: Interval | None
    predicted_loss: Interval | None
    extrapolation: Extrapolation
    cv_error: dict[str, float | None]
    warnings: tuple[str, ...]
    conditioned_on_batch_size: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "learning_rate": self.learning_rate.to_dict(),
            "batch_size": None if self.batch_size is None else self.batch_size.to_dict(),
            "batch_tokens": self.batch_tokens,
            "weight_decay": None if self.weight_decay is None else self.weight_decay.to_dict(),
            "predicted_loss": None if self.predicted_loss is None else self.predicted_loss.to_dict(),
            "extrapolation": {"level": self.extrapolation.level, "factor": self.extrapolation.factor},
            "extrapolation_detail": self.extrapolation.to_dict(),
            "cv_error": self.cv_error,
            "conditioned_on_batch_size": self.conditioned_on_batch_size,
            "warnings": list(self.warnings),
        }


def extrapolation(fit: StudyResult, target: Mapping[str, float]) -> Extrapolation:
    """How far outside the proxies' range the target lies (factor ≥ 1 per law variable, max over them)."""
    per: dict[str, float] = {}
    for law in fit.laws.values():
        for v in law.variables:
            lo, hi = law.ranges.get(v, (math.nan, math.nan))
            if v not in target:
                continue
            x = float(target[v])
            if not (math.isfinite(lo) and math.isfinite(hi)):
                continue
            dist = max(0.0, math.log(lo) - math.log(x), math.log(x) - math.log(hi))
            # Capped so that an absurd target still gets a (huge, finite) factor, not an overflow.
            per[v] = max(per.get(v, 1.0), math.exp(min(dist, MAX_LOG_FACTOR)))
    factor = max(per.values(), default=1.0)
    level = "interpolation" if factor <= 1.0 + 1e-9 else ("extrapolation" if factor <= FAR_FACTOR else "far")
    return Extrapolation(level, factor, per)


def target_variables(fit: StudyResult, target: Mapping[str, float]) -> dict[str, float]:
    """The target's law variables (compute derived from n_params and tokens); MissingTarget if a law needs one."""
    t = {k: float(v) for k, v in target.items() if v is not None}
    if "compute" not in t and "n_params" in t and "tokens" in t:
        t["compute"] = scale_variables(t["n_params"], t["tokens"], math.nan, math.nan)["compute"]
    for v, x in t.items():
        if not (math.isfinite(x) and x > 0):
            raise ValueError(f"target {v} must be a positive number")
    for law in fit.laws.values():
        _, share = law.usable_components(list(t))
        # A law averaged over variable sets answers from the sets the target can feed (the
        # average conditional on them); only when no set can is a variable missing.
        if share <= 0.0:
            v = next(v for m in law.models for v in m.variables if v not in t)
            raise MissingTarget(
                "n_params" if v == "compute" and "n_params" not in t else "tokens" if v == "compute" else v
            )
    return t


def predict(fit: StudyResult, target: Mapping[str, float], batch_size: float | None = None) -> Prediction:
    """lr, bs, wd at `target` with 90% predictive intervals; lr (and wd) at `batch_size` when given.

    log h*(x) ~ the law's posterior mixture plus its scatter τ; conditional optimum: minimise
    the bowl over the free axes with z_bs = log bs − log bs*(x), per draw.
    Raises InsufficientData (no learning-rate law) or MissingTarget (a law variable absent).
    """
    if "learning_rate" not in fit.laws:
        raise InsufficientData(fit.missing.get("learning_rate", "no learning-rate law could be fitted"))
    t = target_variables(fit, target)
    warnings: list[str] = _evidence_warnings(fit)
    ext = extrapolation(fit, t)
    if ext.level != "interpolation":
        worst = max(ext.per_variable, key=lambda v: ext.per_variable[v])
        warnings.append(f"target is {ext.factor:.3g}× outside the proxies' {worst} range ({ext.level})")
    draws = _law_draws(fit, t, warnings)
    conditioned = False
    if batch_size is not None:
        draws, conditioned = _condition_on_batch(fit, draws, batch_size, warnings)

    lr = _interval(draws["learning_rate"])
    bs = None
    if batch_size is not None and conditioned:
        bs = Interval(float(batch_size), float(batch_size), float(batch_size))
    elif "batch_size" in fit.laws:
        bs = _interval(draws["batch_size"])
    else:
        warnings.append(
            f"batch_size is null: no batch-size law ({fit.missing.get('batch_size', 'not fitted')}); "
            "sweep batch size over ≥ 3 values at ≥ 2 scales to get one"
        )
    wd = None
    if "weight_decay" in fit.laws:
        wd = _interval(draws["weight_decay"], fit.shape.wd_offset if fit.shape else 0.0)
        if wd.value == 0.0:
            warnings.append("the weight-decay law predicts no decay at this target")
    else:
        warnings.append(
            f"weight_decay is null: no weight-decay law ({fit.missing.get('weight_decay', 'not fitted')}); "
            "sweep weight decay over ≥ 3 values at ≥ 2 scales to get one"
        )
    bt = bs.value * fit.seq_len if (bs is not None and fit.seq_len) else None
    loss = _predicted_loss(fit, t, warnings)
    return Prediction(
        lr, bs, bt, wd, loss, ext, {a: law.cv_error for a, law in fit.laws.items()}, tuple(warnings), conditioned
    )


def _law_draws(fit: StudyResult, t: Mapping[str, float], warnings: list[str]) -> dict[str, tuple[float, np.ndarray]]:
    """Per law: log h* at the posterior mean and predictive draws (law + scatter τ) at `t`.

    Only the variable sets `t` gives every variable of are used; a warning names what was left out.
    """
    draws: dict[str, tuple[float, np.ndarray]] = {}
    for a, law in fit.laws.items():
        w, share = law.usable_components(list(t))
        if share < 1.0 - 1e-9:
            unused = sorted({v for m in law.models for v in m.variables if v not in t})
            warnings.append(
                f"{AXIS_LABEL[a]} law: variable sets using {', '.join(unused)} "
                f"({100 * (1 - share):.0f}% of the average) were left out because the target does not "
                f"give {'it' if len(unused) == 1 else 'them'}; pass {', '.join(unused)} to use the whole law"
            )
        value, law_draws, scatter = law.predict_log(t, weights=w)
        draws[a] = (value, law_draws + scatter)
    return draws


def _condition_on_batch(
    fit: StudyResult, draws: dict[str, tuple[float, np.ndarray]], batch_size: float, warnings: list[str]
) -> tuple[dict[str, tuple[float, np.ndarray]], bool]:
    """The other optima's draws given bs = `batch_size` (minimising the bowl), and whether that was possible.

    Without a swept batch size and its law the draws come back unchanged, with a warning.
    """
    if not batch_size > 0:
        raise ValueError("batch_size must be > 0")
    shape = fit.shape
    axes = shape.axes if shape else ()
    if shape is None or "batch_size" not in axes or "batch_size" not in fit.laws:
        warnings.append(
            "batch size was not swept within the proxy scales (or has no law): the learning rate "
            "cannot be conditioned on it; returned the unconditional optimum"
        )
        return draws, False
    if not shape.cross_identified[
        max(axes.index("learning_rate"), axes.index("batch_size")),
        min(axes.index("learning_rate"), axes.index("batch_size")),
    ]:
        warnings.append(
            "the LR–batch interaction is not identified (no runs vary both): lr at the given "
            "batch size equals the unconditional optimum"
        )
    return _conditional(shape, draws, math.log(batch_size)), True


def _interval(draw: tuple[float, np.ndarray], offset: float = 0.0) -> Interval:
    """exp of (log value, log draws) as a 90% interval containing the value, minus `offset` (floored at 0)."""
    v, s = draw
    lo, hi = (float(b) for b in percentile_bounds(s))  # 1-D draws: scalar bounds
    vals = [max(math.exp(x) - offset, 0.0) for x in (min(lo, v), v, max(hi, v))]
    return Interval(vals[1], vals[0], vals[2])


def _predicted_loss(fit: StudyResult, t: Mapping[str, float], warnings: list[str]) -> Interval | None:
    """The loss law's predicted loss at `t`, or None with a warning saying why."""
    if fit.loss_law is None:
        why = fit.no_loss_law_reason()
        warnings.append(f"predicted_loss is null: no loss law ({'not fitted' if why is None else why})")
        return None
    if "n_params" in t and "tokens" in t:
        return fit.loss_law.predict(t["n_params"], t["tokens"]).interval()
    warnings.append("predicted_loss is null: the loss law needs the target's n_params and tokens")
    return None


def _evidence_warnings(fit: StudyResult) -> list[str]:
    """What a launcher must know about the evidence behind any answer of this fit."""
    out = []
    if fit.outliers:
        names = [str(o.get("run_key") or f"id {o.get('run_id')}") for o in fit.outliers[:5]]
        more = f" and {len(fit.outliers) - 5} more" if len(fit.outliers) > 5 else ""
        out.append(
            f"{len(fit.outliers)} run(s) were left out of the fit as implausible for their scale: "
            f"{', '.join(names)}{more} (the fit's outliers say why)"
        )
    out.extend(w for w in fit.warnings if w.startswith("loss noise was assumed"))
    return out


def _conditional(
    shape: BowlShape, draws: Mapping[str, tuple[float, np.ndarray]], log_bs: float
) -> dict[str, tuple[float, np.ndarray]]:
    """Minimise ½zᵀHz + Σκz³ over the non-batch axes with z_bs fixed, per draw (shape draws cycled)."""
    axes = shape.axes
    ib = axes.index("batch_size")
    free = [j for j, a in enumerate(axes) if a != "batch_size" and a in draws]
    out = dict(draws)

    def solve(H: np.ndarray, k: np.ndarray, zb: np.ndarray) -> np.ndarray:
        # H: (n, d, d), k: (n, d), zb: (n,) → z over free axes (n, f)
        Hff = H[:, free][:, :, free]
        hfb = H[:, free, ib]
        z = -np.linalg.solve(Hff, (hfb * zb[:, None])[:, :, None])[:, :, 0]
        for _ in range(4):
            g = (Hff @ z[:, :, None])[:, :, 0] + hfb * zb[:, None] + 3 * k[:, free] * z * z
            J = Hff + np.einsum("nf,fg->nfg", 6 * k[:, free] * z, np.eye(len(free)))
            step = np.linalg.solve(J, g[:, :, None])[:, :, 0]
            z = np.where(np.isfinite(step), z - step, z)
        return z

    vb, sb = draws["batch_size"]
    z0 = solve(shape.hessian[None], shape.kappa[None], np.array([log_bs - vb]))[0]
    n = sb.size
    if len(shape.hessian_samples):
        pick = np.arange(n) % len(shape.hessian_samples)
        H, K = shape.hessian_samples[pick], shape.kappa_samples[pick]
    else:
        H, K = (
            np.broadcast_to(shape.hessian, (n, *shape.hessian.shape)),
            np.broadcast_to(shape.kappa, (n, shape.kappa.size)),
        )
    zs = solve(H, K, log_bs - sb)
    for c, j in enumerate(free):
        a = axes[j]
        v, s = draws[a]
        out[a] = (v + float(z0[c]), s + zs[:, c])
    return out


__all__ = [
    "AXES",
    "Extrapolation",
    "MissingTarget",
    "Prediction",
    "StaleState",
    "StudyResult",
    "extrapolation",
    "fit_study",
    "predict",
    "study_priors",
]

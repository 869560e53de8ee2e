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
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fitting.bowl_widths import BowlWidths, fit_bowl_widths
from fitting.common import AXES, AXIS_LABEL, InsufficientData, Interval, percentile_bounds, scale_variables
from fitting.laws import BowlShape, LawSpec, PowerLaw, fit_laws
from fitting.loss_law import LossLaw, fit_loss_law
from fitting.optima import ScaleOptimum, SweepAnalysis, analyse_sweeps, group_scales
from fitting.published import BATCH_FIXED, BATCH_FREE, BATCH_SET, exponent_priors, law_basis
from fitting.runs import RunTable
from fitting.weight_decay import analyse_weight_decay

FAR_FACTOR = 10.0
MAX_LOG_FACTOR = 690.0
LOSS_LAW_MIN_SCALES = 5
LOSS_LAW_MAX_BOOTSTRAP = 200
# Prefix of the warning saying why a study has no loss law (read back by `no_loss_law_reason`).
NO_LOSS_LAW = "no loss law: "
PRIOR_MODES = ("published", "none")
# Version 3: mixture priors, censored optima, the aspect-ratio variable (issue 17).
STATE_VERSION = 3


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
    # Per-scale widths of the shared bowl and how they move with scale (`fitting.bowl_widths`); None in
    # fits stored before they were measured (the decisions that need them then use the shared bowl).
    bowl_widths: BowlWidths | None = None

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
            "version": STATE_VERSION,
            "laws": {a: law.to_state() for a, law in self.laws.items()},
            "shape": None if self.shape is None else self.shape.to_state(),
            "seq_len": self.seq_len,
            "bootstrap": self.bootstrap,
            "bowl_widths": None if self.bowl_widths is None else self.bowl_widths.to_state(),
        }
        return d

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> StudyResult:
        """Inverse of `to_state`. Raises StaleState for a state written by an older engine."""
        st = d.get("state") or {}
        if st.get("version") != STATE_VERSION:
            raise StaleState(f"fit state version {st.get('version')!r} predates this engine ({STATE_VERSION}): refit")
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
            bowl_widths=None if not st.get("bowl_widths") else BowlWidths.from_state(st["bowl_widths"]),
        )


def batch_regime(runs: RunTable, analysis: SweepAnalysis | None = None) -> str:
    """How the study sets its batch size, as the learning-rate optimum sees it.

    "fixed": one batch size for every run. "free": the batch is swept together with the learning
    rate (the optimum is over both, as in Step Law). "set": anything else — the batch changes
    between scales by the user's rule, or is varied only one hyperparameter at a time
    (coordinate-wise ablations), so each learning-rate optimum is conditional on a chosen batch.
    """
    ok = np.isfinite(runs.batch_size) & (runs.batch_size > 0)
    bs = runs.batch_size[ok]
    if not bs.size or np.all(np.abs(np.log(bs / bs[0])) < 0.01):
        return BATCH_FIXED
    if analysis is not None:
        swept = "batch_size" in analysis.axes and "learning_rate" in analysis.axes
        return BATCH_FREE if swept and not analysis.coordinate_wise else BATCH_SET
    _, sidx = group_scales(runs.subset(ok))
    for s in np.unique(sidx):
        if np.ptp(np.log(bs[sidx == s])) >= 0.01:
            return BATCH_FREE
    return BATCH_SET


def law_specs(
    parameterization: str,
    optimizer: str,
    mode: str,
    runs: RunTable,
    exclude_sources: Collection[str] = (),
    analysis: SweepAnalysis | None = None,
) -> dict[str, LawSpec]:
    """Per axis: the law's variables and the published priors that apply to this study (none for mode "none")."""
    if mode not in PRIOR_MODES:
        raise ValueError(f"priors must be one of {PRIOR_MODES}, got {mode!r}")
    basis = law_basis(parameterization)
    batch = batch_regime(runs, analysis)
    out = {}
    for a in AXES:
        if mode == "none":
            out[a] = LawSpec(basis, {}, ("the study asks for no published priors (priors: none)",))
            continue
        priors, notes = exponent_priors(a, parameterization, optimizer, batch=batch, exclude_sources=exclude_sources)
        out[a] = LawSpec(basis, priors, tuple(notes))
    return out


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
    exclude_prior_sources: Collection[str] = (),
) -> StudyResult:
    """Per-scale optima, power laws for lr/bs/wd, weight-decay analysis and loss law of a study.

    log h* = c + Σ a_j log x_j per hyperparameter: Bayesian regression on the per-scale optima
    (bounds censored) with mixture priors on the exponents — published ones where their basis
    matches the study (`priors="none"`, or sources in `exclude_prior_sources`: the default prior).
    Raises InsufficientData when no run is usable at all.
    """
    if seq_len is None and len(runs):
        sl = runs.seq_len[np.isfinite(runs.seq_len)]
        if sl.size and np.all(sl == sl[0]):
            seq_len = float(sl[0])
    analysis = analyse_sweeps(runs, bootstrap=bootstrap, seed=seed)
    specs = law_specs(parameterization, optimizer, priors, runs, exclude_prior_sources, analysis)
    law_set = fit_laws(analysis, specs, bootstrap=bootstrap, seed=seed)
    warnings = list(analysis.warnings)
    for axis, why in law_set.missing.items():
        warnings.append(f"no {AXIS_LABEL[axis]} law: {why}")
    for note in dict.fromkeys(n for a, sp in specs.items() if a in law_set.laws for n in sp.notes):
        warnings.append(f"priors: {note}")
    for law in law_set.laws.values():
        warnings.extend(law_warnings(law))
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
        fit_bowl_widths(analysis) if law_set.laws else None,
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

    learning_rate: Interval | None  # None: no learning-rate law (a loss-law-only answer; warnings say why)
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
            "learning_rate": None if self.learning_rate is None else self.learning_rate.to_dict(),
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
    """The target's law variables (compute from n_params and tokens, aspect from width and depth).

    A law's shape variable (aspect) that the target does not give is taken at the proxies' centre
    (`shape_assumed` says so); any other variable a law needs is a MissingTarget.
    """
    t = {k: float(v) for k, v in target.items() if v is not None}
    for v, x in t.items():
        if not (math.isfinite(x) and x > 0):
            raise ValueError(f"target {v} must be a positive number")
    if "compute" not in t and "n_params" in t and "tokens" in t:
        t["compute"] = scale_variables(t["n_params"], t["tokens"], math.nan, math.nan)["compute"]
    if "aspect" not in t and "width" in t and "depth" in t:
        t["aspect"] = t["width"] / t["depth"]
    for law in fit.laws.values():
        for v, m in zip(law.variables, law.log_centre):
            if v in t:
                continue
            if v == "aspect":
                t["aspect"] = math.exp(m)
                t[SHAPE_ASSUMED] = 1.0
                continue
            raise MissingTarget(v)
    return t


# Marks a target whose aspect ratio was not given (taken at the proxies' centre).
SHAPE_ASSUMED = "_shape_assumed"


def predict(fit: StudyResult, target: Mapping[str, float], batch_size: float | None = None) -> Prediction:
    """lr, bs, wd at `target` with 90% predictive intervals; lr (and wd) at `batch_size` when given.

    log h*(x) ~ the law's posterior mixture plus its scatter τ; conditional optimum: minimise
    the bowl over the free axes with z_bs = log bs − log bs*(x), per draw.
    Without a learning-rate law the loss law still answers (`_loss_only`). Raises
    InsufficientData (neither law) or MissingTarget (a law variable absent).
    """
    if "learning_rate" not in fit.laws:
        return _loss_only(fit, target, batch_size)
    t = target_variables(fit, target)
    warnings: list[str] = _evidence_warnings(fit)
    if t.pop(SHAPE_ASSUMED, None):
        warnings.append(
            f"width and depth not given: the model shape is taken at the proxies' typical aspect ratio "
            f"(width/depth ≈ {t['aspect']:.3g}); pass width and depth for the target's own shape"
        )
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


def _loss_only(fit: StudyResult, target: Mapping[str, float], batch_size: float | None) -> Prediction:
    """The answer of a fit with a loss law but no learning-rate law (one run per (N, D), as most
    published scaling-law data): the predicted loss with its interval, the hyperparameters null,
    each with why and what runs would give it. How far the target lies outside the data is
    measured on the loss law's n_params and tokens ranges."""
    why_lr = fit.missing.get("learning_rate", "no learning-rate law could be fitted")
    law = fit.loss_law
    if law is None:
        why = fit.no_loss_law_reason()
        raise InsufficientData(f"{why_lr}; and no loss law either ({'not fitted' if why is None else why})")
    t = {k: float(v) for k, v in target.items() if v is not None}
    for v, x in t.items():
        if not (math.isfinite(x) and x > 0):
            raise ValueError(f"target {v} must be a positive number")
    for v in ("n_params", "tokens"):
        if v not in t:
            raise MissingTarget(v)
    warnings = _evidence_warnings(fit)
    per: dict[str, float] = {}
    for v, (lo, hi) in (("n_params", law.n_params_range), ("tokens", law.tokens_range)):
        if lo > 0 and hi > 0 and math.isfinite(lo) and math.isfinite(hi):
            dist = max(0.0, math.log(lo) - math.log(t[v]), math.log(t[v]) - math.log(hi))
            per[v] = math.exp(min(dist, MAX_LOG_FACTOR))
    factor = max(per.values(), default=1.0)
    level = "interpolation" if factor <= 1.0 + 1e-9 else ("extrapolation" if factor <= FAR_FACTOR else "far")
    ext = Extrapolation(level, factor, per)
    if level != "interpolation":
        worst = max(per, key=lambda v: per[v])
        warnings.append(f"target is {factor:.3g}× outside the loss law's {worst} range ({level})")
    warnings.append(
        f"learning_rate is null: no learning-rate law ({why_lr}); sweep the learning rate over ≥ 3 values at "
        "≥ 2 scales to get one. The predicted loss is the loss law's at this (n_params, tokens), at the "
        "hyperparameters the runs used"
    )
    for axis in ("batch_size", "weight_decay"):
        warnings.append(
            f"{axis} is null: no learning-rate law to build its answer on "
            f"({fit.missing.get(axis, 'no law of its own either')}); sweep it over ≥ 3 values at ≥ 2 scales"
        )
    if batch_size is not None:
        warnings.append("batch_size was given, but with no learning-rate law there is nothing to condition on it")
    loss = law.predict(t["n_params"], t["tokens"]).interval()
    return Prediction(None, None, None, None, loss, ext, {a: l.cv_error for a, l in fit.laws.items()}, tuple(warnings))


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
    """What a launcher must know about the evidence behind any answer of this fit: runs left out, assumed
    noise, laws that contradict the literature or fit worse than a constant, optima that are only
    bounds, a weight-decay model its own timescale analysis rejects."""
    out = []
    if fit.outliers:
        names = [str(o.get("run_key") or f"id {o.get('run_id')}") for o in fit.outliers[:5]]
        more = f" and {len(fit.outliers) - 5} more" if len(fit.outliers) > 5 else ""
        out.append(
            f"{len(fit.outliers)} run(s) were left out of the fit as implausible for their scale: "
            f"{', '.join(names)}{more} (the fit's outliers say why)"
        )
    out.extend(w for w in fit.warnings if w.startswith("loss noise was assumed"))
    for axis, law in fit.laws.items():
        out.extend(law_warnings(law, calibration=False))
        bounds = bound_scales(fit.optima, axis)
        if bounds:
            out.append(
                f"{AXIS_LABEL[axis]} optimum is only a bound or not resolved at {len(bounds)} of {law.n_scales} "
                f"scale(s) ({'; '.join(bounds[:3])}{'; …' if len(bounds) > 3 else ''}); the law uses them as bounds: "
                "extend those sweeps past the best run to measure them"
            )
    wd = fit.weight_decay_analysis
    if "weight_decay" in fit.laws and wd is not None and not wd.get("supported"):
        out.append(
            "weight-decay law: its own timescale analysis supports none of the scaling models "
            f"({', '.join(wd.get('models', {}))}); treat its extrapolation with care"
        )
    return out


_BOUND_WORDS = {
    "above_sweep": "above the largest value swept",
    "below_sweep": "below the smallest value swept",
    "capped": "capped by a diverged run",
    "best_run": "not resolved (best run's value)",
}


def bound_scales(optima: Sequence[ScaleOptimum], axis: str) -> list[str]:
    """The scales whose optimum of `axis` is a bound or unresolved, each as 'N=…, D=…: why'."""
    out = []
    for o in optima:
        a = o.optimum.get(axis)
        if a is not None and a.status in _BOUND_WORDS:
            out.append(f"N={o.scale.n_params:.3g}, D={o.scale.tokens:.3g}: {_BOUND_WORDS[a.status]}")
    return out


def law_warnings(law: PowerLaw, *, calibration: bool = True) -> list[str]:
    """What a reader of one law must know: priors that lost to the data, few scales, bounds, a fit worse
    than a constant, forecasts that missed (`calibration`)."""
    name = AXIS_LABEL[law.axis]
    out = []
    for v, rep in law.conflicts():
        p = law.priors[v]
        out.append(
            f"{name} law: the study's own scales contradict the published {v} exponent "
            f"({p.mean:+.2f} ± {p.sd:.2f}, {p.source}): they give {rep.data_mean:+.2f} ± {rep.data_sd:.2f} "
            f"({abs(rep.conflict):.1f} sd apart); the law follows the data"
        )
    lean = [
        f"{v} ({law.ranges[v][1] / law.ranges[v][0]:.3g}× in the proxies)"
        for v in law.variables
        if v in law.priors
        and law.priors[v].published
        and law.ranges.get(v, (1.0, 1.0))[1] > 1.01 * law.ranges.get(v, (1.0, 1.0))[0]
        and law.report(v).data_share(law.priors[v].sd) < 0.5
    ]
    if lean:
        out.append(
            f"{name} law: its exponent in {', '.join(lean)} is mostly the published prior — the proxies span too "
            "little of it to tell; proxies further apart would let the data decide"
        )
    measured = law.n_scales - law.n_bounds
    if measured < 4:
        which = "published" if any(p.published for p in law.priors.values()) else "default (weakly informative)"
        bounds = f" ({law.n_bounds} of them only bounds)" if law.n_bounds else ""
        out.append(
            f"{name} law rests on {law.n_scales} scales{bounds}: too few to check its form or measure its scatter, "
            f"so its interval leans on the {which} priors; proxies at more sizes and token budgets would let the "
            "data decide"
        )
    if math.isfinite(law.r2) and law.r2 < 0:
        out.append(
            f"{name} law fits the per-scale optima worse than a constant (R² {law.r2:.2f}): the scale variables "
            "do not explain how the optimum moves; its extrapolation is a guess"
        )
    if calibration and law.calibration > 1.05:
        out.append(
            f"{name} law: forecasts of the largest proxies from the smaller ones missed "
            f"by more than their intervals; intervals widened {law.calibration:.2f}×"
        )
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
    "law_specs",
    "predict",
]

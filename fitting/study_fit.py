"""Entry points for the HTTP layer: `fit_study` (a study's runs → StudyFit) and `predict`.

A StudyFit serialises to the contract's fit object (`to_dict`) and to a richer JSON state
(`to_state`, with bootstrap samples and observed ranges) from which `StudyFit.from_state`
rebuilds everything `predict` needs.

Extrapolation: per law variable, the target's distance outside the proxies' observed range
as a factor ≥ 1 (exp of the log-distance; 1 inside the range), maximised over variables.
Level "interpolation" when the factor is 1 (inside every range), "extrapolation" up to
10×, "far" beyond 10× (an order of magnitude past the largest or smallest proxy).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fitting.common import AXES, AXIS_LABEL, InsufficientData, Interval, percentile_bounds, scale_variables
from fitting.laws import BowlShape, PowerLaw, fit_laws, law_interval
from fitting.optima import ScaleOptimum, analyse_sweeps
from fitting.runs import RunTable
from fitting.weight_decay import analyse_weight_decay

FAR_FACTOR = 10.0
MAX_LOG_FACTOR = 690.0
LOSS_LAW_MIN_SCALES = 5
LOSS_LAW_MAX_BOOTSTRAP = 200


class MissingTarget(ValueError):
    """The target lacks a variable the fitted laws use (HTTP 422 naming it)."""

    def __init__(self, variable: str) -> None:
        super().__init__(f"missing target variable {variable}: the fitted laws use it")
        self.variable = variable


@dataclass(frozen=True, eq=False)
class StudyFit:
    """A study's fit: per-scale optima, power laws, shared bowl shape, loss law, warnings."""

    optima: tuple[ScaleOptimum, ...]
    laws: Mapping[str, PowerLaw]
    shape: BowlShape | None
    loss_law: Any | None
    weight_decay: Any | None
    warnings: tuple[str, ...]
    n_runs: int
    missing: Mapping[str, str] = field(default_factory=dict)
    seq_len: float | None = None
    bootstrap: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The contract's fit-object fields (the app adds id, created_at, data_version)."""
        return {
            "optima": [o.to_dict() for o in self.optima],
            "laws": {a: law.to_dict() for a, law in self.laws.items()},
            "loss_law": None if self.loss_law is None else self.loss_law.to_dict(),
            "warnings": list(self.warnings),
            "n_runs": self.n_runs,
            "weight_decay_analysis": None if self.weight_decay is None else self.weight_decay.to_dict(),
            "missing_laws": dict(self.missing),
        }

    def to_state(self) -> dict[str, Any]:
        """JSON-serialisable state including bootstrap samples; `from_state` inverts it."""
        d = self.to_dict()
        d["state"] = {
            "version": 1,
            "laws": {a: law.to_state() for a, law in self.laws.items()},
            "shape": None if self.shape is None else self.shape.to_state(),
            "seq_len": self.seq_len,
            "bootstrap": self.bootstrap,
        }
        return d

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> StudyFit:
        st = d.get("state") or {}
        loss_law = None
        if d.get("loss_law") is not None:
            try:
                from fitting.loss_law import LossLawFit

                loss_law = LossLawFit.from_dict(d["loss_law"])
            except (ImportError, KeyError, ValueError):
                loss_law = None
        return cls(
            optima=tuple(ScaleOptimum.from_dict(o) for o in d.get("optima", [])),
            laws={a: PowerLaw.from_state(v) for a, v in (st.get("laws") or {}).items()},
            shape=None if st.get("shape") is None else BowlShape.from_state(st["shape"]),
            loss_law=loss_law,
            weight_decay=None,
            warnings=tuple(d.get("warnings", ())),
            n_runs=int(d.get("n_runs", 0)),
            missing=dict(d.get("missing_laws") or {}),
            seq_len=st.get("seq_len"),
            bootstrap=int(st.get("bootstrap", 0)),
        )


def fit_study(
    runs: RunTable, *, bootstrap: int = 200, seed: int = 0, seq_len: float | None = None, loss_law: bool = True
) -> StudyFit:
    """Per-scale optima, power laws for lr/bs/wd, weight-decay analysis and loss law of a study.

    log h* = c + Σ a_j log x_j per hyperparameter, fitted jointly with per-scale loss bowls.
    Raises InsufficientData when no run is usable at all.
    """
    if seq_len is None and len(runs):
        sl = runs.seq_len[np.isfinite(runs.seq_len)]
        if sl.size and np.all(sl == sl[0]):
            seq_len = float(sl[0])
    analysis = analyse_sweeps(runs, bootstrap=bootstrap, seed=seed)
    lf = fit_laws(analysis, bootstrap=bootstrap, seed=seed)
    warnings = list(analysis.warnings)
    for axis, why in lf.missing.items():
        warnings.append(f"no {AXIS_LABEL[axis]} law: {why}")
    wd = None
    if "weight_decay" in analysis.axes:
        res = analyse_weight_decay(analysis, seq_len, bootstrap=min(bootstrap, 200), seed=seed)
        if isinstance(res, str):
            warnings.append(f"weight-decay scaling model not tested: {res}")
        else:
            wd = res
    ll = _loss_law(analysis.optima, bootstrap, seed, warnings) if loss_law else None
    return StudyFit(tuple(analysis.optima), lf.laws, lf.shape, ll, wd, tuple(warnings), len(runs),
                    dict(lf.missing), seq_len, bootstrap)


def _loss_law(optima, bootstrap: int, seed: int, warnings: list[str]):
    pts = [(o.scale.n_params, o.scale.tokens, o.loss) for o in optima if math.isfinite(o.loss)]
    n_n = len({p[0] for p in pts})
    n_d = len({p[1] for p in pts})
    if len(pts) < LOSS_LAW_MIN_SCALES or n_n < 2 or n_d < 2:
        warnings.append(f"no loss law: {len(pts)} scales with {n_n} distinct n_params and {n_d} distinct tokens; "
                        f"need ≥ {LOSS_LAW_MIN_SCALES} scales with ≥ 2 of each")
        return None
    try:
        from fitting.loss_law import fit_loss_law
    except ImportError:
        return None
    n, d, l = (np.array(c, dtype=float) for c in zip(*pts))
    try:
        return fit_loss_law(n, d, l, bootstrap=min(bootstrap, LOSS_LAW_MAX_BOOTSTRAP), seed=seed)
    except ValueError as e:
        warnings.append(f"no loss law: {e}")
        return None


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


def extrapolation(fit: StudyFit, target: Mapping[str, float]) -> Extrapolation:
    """How far outside the proxies' range the target lies (factor ≥ 1 per law variable, max over them)."""
    per: dict[str, float] = {}
    for law in fit.laws.values():
        for v in law.variables:
            lo, hi = law.ranges.get(v, (math.nan, math.nan))
            x = float(target[v])
            if not (math.isfinite(lo) and math.isfinite(hi)):
                continue
            dist = max(0.0, math.log(lo) - math.log(x), math.log(x) - math.log(hi))
            # Capped so that an absurd target still gets a (huge, finite) factor, not an overflow.
            per[v] = max(per.get(v, 1.0), math.exp(min(dist, MAX_LOG_FACTOR)))
    factor = max(per.values(), default=1.0)
    level = "interpolation" if factor <= 1.0 + 1e-9 else ("extrapolation" if factor <= FAR_FACTOR else "far")
    return Extrapolation(level, factor, per)


def target_variables(fit: StudyFit, target: Mapping[str, float]) -> dict[str, float]:
    t = {k: float(v) for k, v in target.items() if v is not None}
    if "compute" not in t and "n_params" in t and "tokens" in t:
        t["compute"] = scale_variables(t["n_params"], t["tokens"], math.nan, math.nan)["compute"]
    for law in fit.laws.values():
        for v in law.variables:
            if v not in t:
                if v == "compute":
                    raise MissingTarget("n_params" if "n_params" not in t else "tokens")
                raise MissingTarget(v)
            if not (math.isfinite(t[v]) and t[v] > 0):
                raise ValueError(f"target {v} must be a positive number")
    return t


def predict(fit: StudyFit, target: Mapping[str, float], batch_size: float | None = None) -> Prediction:
    """lr, bs, wd at `target` with 90% intervals; lr (and wd) at `batch_size` when given.

    Conditional optimum: minimise the bowl over the free axes with z_bs = log bs − log bs*(x).
    Raises InsufficientData (no learning-rate law) or MissingTarget (a law variable absent).
    """
    if "learning_rate" not in fit.laws:
        raise InsufficientData(fit.missing.get("learning_rate", "no learning-rate law could be fitted"))
    t = target_variables(fit, target)
    warnings: list[str] = []
    ext = extrapolation(fit, t)
    if ext.level != "interpolation":
        worst = max(ext.per_variable, key=ext.per_variable.get)
        warnings.append(f"target is {ext.factor:.3g}× outside the proxies' {worst} range ({ext.level})")
    shape = fit.shape
    axes = shape.axes if shape else ()
    logs: dict[str, tuple[float, np.ndarray]] = {}
    for a, law in fit.laws.items():
        logs[a] = law.predict_log(t)
    scatter = {a: law.scatter for a, law in fit.laws.items()}
    conditioned = False
    if batch_size is not None:
        if not batch_size > 0:
            raise ValueError("batch_size must be > 0")
        if shape is None or "batch_size" not in axes or "batch_size" not in fit.laws:
            warnings.append("batch size was not swept within the proxy scales (or has no law): the learning rate "
                            "cannot be conditioned on it; returned the unconditional optimum")
        else:
            if not shape.cross_identified[max(axes.index("learning_rate"), axes.index("batch_size")),
                                          min(axes.index("learning_rate"), axes.index("batch_size"))]:
                warnings.append("the LR–batch interaction is not identified (no runs vary both): lr at the given "
                                "batch size equals the unconditional optimum")
            logs = _conditional(fit, shape, logs, math.log(batch_size))
            conditioned = True
    B = fit.bootstrap
    rng = np.random.default_rng(0)

    def interval(a: str, offset: float = 0.0) -> Interval:
        v, s = logs[a]
        if s.size:
            lo, hi = percentile_bounds(s + rng.standard_normal(s.size) * scatter[a])
        else:
            lo, hi = v - 1.645 * scatter[a], v + 1.645 * scatter[a]
        vals = [math.exp(min(lo, v)) - offset, math.exp(v) - offset, math.exp(max(hi, v)) - offset]
        vals = [max(x, 0.0) for x in vals]
        return Interval(vals[1], vals[0], vals[2])

    lr = interval("learning_rate")
    bs = None
    if conditioned:
        bs = Interval(float(batch_size), float(batch_size), float(batch_size))
    elif "batch_size" in fit.laws:
        bs = interval("batch_size")
    else:
        warnings.append(f"no batch-size law: {fit.missing.get('batch_size', 'not fitted')}")
    wd = None
    if "weight_decay" in fit.laws:
        off = shape.wd_offset if shape else 0.0
        wd = interval("weight_decay", off)
        if wd.value == 0.0:
            warnings.append("the weight-decay law predicts no decay at this target")
    bt = bs.value * fit.seq_len if (bs is not None and fit.seq_len) else None
    loss = None
    if fit.loss_law is not None and "n_params" in t and "tokens" in t:
        try:
            loss = fit.loss_law.predict(t["n_params"], t["tokens"]).interval()
        except (ValueError, AttributeError):
            loss = None
    del B
    return Prediction(lr, bs, bt, wd, loss, ext, {a: law.cv_error for a, law in fit.laws.items()},
                      tuple(warnings), conditioned)


def _conditional(fit: StudyFit, shape: BowlShape, logs, log_bs: float):
    """Minimise ½zᵀHz + Σκz³ over the non-batch axes with z_bs fixed, per bootstrap sample."""
    axes = shape.axes
    ib = axes.index("batch_size")
    free = [j for j, a in enumerate(axes) if a != "batch_size" and a in logs]
    out = dict(logs)

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

    vb, sb = logs["batch_size"]
    z0 = solve(shape.hessian[None], shape.kappa[None], np.array([log_bs - vb]))[0]
    n = min(len(sb), len(shape.hessian_samples))
    zs = solve(shape.hessian_samples[:n], shape.kappa_samples[:n], log_bs - sb[:n]) if n else np.zeros((0, len(free)))
    for c, j in enumerate(free):
        a = axes[j]
        v, s = logs[a]
        out[a] = (v + float(z0[c]), (s[:n] + zs[:, c]) if n else s)
    return out


__all__ = ["AXES", "Extrapolation", "MissingTarget", "Prediction", "StudyFit", "extrapolation", "fit_study", "law_interval", "predict"]

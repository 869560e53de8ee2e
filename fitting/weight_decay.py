"""Weight decay: the AdamW timescale and which scaling model of RULES.md §3 the optima support.

τ_steps = 1/(lr·wd) (AdamW as an EMA, Wang & Aitchison), steps = tokens/(batch·seq_len),
τ_fraction = τ_steps/steps. Three models are checked against the per-scale optima:
  - "constant τ fraction": log τ_fraction has slope 0 in log width and in log tokens;
  - "λ ∝ width": log wd* has slope 1 in log width (at fixed tokens);
  - "λ ∝ √width": log wd* has slope ½ in log width.
A model is "consistent" when its predicted slope(s) lie inside the fitted 90% interval(s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fitting.common import Interval
from fitting.laws import weighted_law
from fitting.optima import ScaleOptimum, SweepAnalysis

MODELS = {"constant τ fraction": None, "λ ∝ width": 1.0, "λ ∝ √width": 0.5}


@dataclass(frozen=True)
class WeightDecayPoint:
    scale: dict[str, float | None]
    weight_decay: Interval
    learning_rate: float
    batch_size: float
    status: str
    tau_steps: float | None
    tau_fraction: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "weight_decay": self.weight_decay.to_dict(),
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "status": self.status,
            "tau_steps": self.tau_steps,
            "tau_fraction": self.tau_fraction,
        }


@dataclass(frozen=True)
class WeightDecayAnalysis:
    """Per-scale wd optima, the AdamW timescale, fitted slopes and the models they support."""

    points: tuple[WeightDecayPoint, ...]
    variables: tuple[str, ...]
    wd_exponents: dict[str, Interval]
    tau_fraction_exponents: dict[str, Interval]
    models: dict[str, dict[str, Any]]
    supported: tuple[str, ...]
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "points": [p.to_dict() for p in self.points],
            "variables": list(self.variables),
            "wd_exponents": {k: v.to_dict() for k, v in self.wd_exponents.items()},
            "tau_fraction_exponents": {k: v.to_dict() for k, v in self.tau_fraction_exponents.items()},
            "models": self.models,
            "supported": list(self.supported),
            "notes": list(self.notes),
        }


def analyse_weight_decay(
    analysis: SweepAnalysis, seq_len: float | None, *, bootstrap: int = 200, seed: int = 0
) -> WeightDecayAnalysis | str:
    """Slopes of log wd* and log τ_fraction in log width and log tokens; a string says what is missing.

    log wd* = c + a·log width + b·log tokens;  log τ_frac = c' + a'·log width + b'·log tokens.
    """
    if "weight_decay" not in analysis.axes:
        return "weight decay is not swept over ≥ 3 values at any scale"
    j = analysis.axes.index("weight_decay")
    rows = [
        s
        for s in range(len(analysis.scales))
        if np.isfinite(analysis.centre[s, j]) and analysis.optima[s].optimum.get("weight_decay") is not None
    ]
    pts = [_point(analysis.optima[s], seq_len) for s in rows]
    notes = []
    if analysis.coordinate_wise:
        notes.append(
            "weight decay bracketed along one axis only: each wd optimum is conditional on that scale's "
            "baseline learning rate and batch size"
        )
    if len(rows) < 3:
        return f"weight decay is swept at only {len(rows)} scale(s); need ≥ 3 to test a scaling model"
    width = np.array([analysis.scales[s].width for s in rows])
    tokens = np.array([analysis.scales[s].tokens for s in rows])
    variables = tuple(
        v for v, x in (("width", width), ("tokens", tokens)) if np.all(np.isfinite(x)) and np.ptp(np.log(x)) > 1e-3
    )
    if not variables:
        return "the scales where weight decay is swept differ in neither width nor tokens"
    y = analysis.centre[rows, j]
    se = np.nan_to_num(analysis.centre_se[rows, j], nan=0.1)
    cols = {"width": np.log(width), "tokens": np.log(tokens)}
    X = np.column_stack([np.ones(len(rows))] + [cols[v] - cols[v].mean() for v in variables])
    if len(rows) < X.shape[1] + 1:
        return f"weight decay is swept at only {len(rows)} scales; need ≥ {X.shape[1] + 1} for {', '.join(variables)}"
    offset = analysis.wd_offset
    # Slopes are of log wd* itself; with a zero-decay offset the fit coordinate is
    # log(wd + offset), so convert the optima back before regressing.
    wd_vals = np.array([p.weight_decay.value for p in pts])
    y_wd = np.log(np.maximum(wd_vals, 1e-12)) if offset > 0 else y
    tau_f = np.array([p.tau_fraction if p.tau_fraction else np.nan for p in pts])
    rng = np.random.default_rng(seed)
    n = len(rows)

    def slopes(yv: np.ndarray, sev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        b, _, _ = weighted_law(X, yv, sev)
        samp = []
        for _ in range(max(bootstrap, 1)):
            i = rng.integers(0, n, n)
            if np.linalg.matrix_rank(X[i]) < X.shape[1]:
                continue
            samp.append(weighted_law(X[i], yv[i], sev[i])[0])
        return b, np.array(samp)

    b, bs_ = slopes(y_wd, se)
    wd_exp = {v: Interval.from_samples(b[1 + k], bs_[:, 1 + k]) for k, v in enumerate(variables)}
    tau_exp: dict[str, Interval] = {}
    if np.all(np.isfinite(tau_f)):
        bt, bts = slopes(np.log(tau_f), se)
        tau_exp = {v: Interval.from_samples(bt[1 + k], bts[:, 1 + k]) for k, v in enumerate(variables)}
    else:
        notes.append("τ as a fraction of training needs seq_len and the lr/bs at every scale")
    models = _model_evidence(wd_exp, tau_exp)
    supported = tuple(k for k, v in models.items() if v.get("consistent"))
    return WeightDecayAnalysis(tuple(pts), variables, wd_exp, tau_exp, models, supported, tuple(notes))


def _point(o: ScaleOptimum, seq_len: float | None) -> WeightDecayPoint:
    """One scale's wd optimum with the AdamW timescale τ = 1/(lr·wd) in steps and as a fraction of training."""
    wd = o.optimum["weight_decay"]
    lr = o.optimum["learning_rate"].value.value if "learning_rate" in o.optimum else math.nan
    bs = o.optimum["batch_size"].value.value if "batch_size" in o.optimum else math.nan
    tau = tau_f = None
    if wd.value.value > 0 and lr > 0:
        tau = 1.0 / (lr * wd.value.value)
        if seq_len and bs > 0:
            tau_f = tau / (o.scale.tokens / (bs * seq_len))
    return WeightDecayPoint(o.scale.to_dict(), wd.value, lr, bs, wd.status, tau, tau_f)


def _model_evidence(wd_exp: dict[str, Interval], tau_exp: dict[str, Interval]) -> dict[str, dict[str, Any]]:
    """For each scaling model of MODELS: is its predicted slope inside the fitted interval(s), and the evidence."""
    models: dict[str, dict[str, Any]] = {}
    for name, slope in MODELS.items():
        if slope is None:
            if not tau_exp:
                models[name] = {"consistent": None, "evidence": "τ fraction unavailable"}
                continue
            ok = all(iv.contains(0.0) for iv in tau_exp.values())
            ev = "; ".join(
                f"slope of log τ_fraction in log {v} = {iv.value:.2f} [{iv.low:.2f}, {iv.high:.2f}] (model: 0)"
                for v, iv in tau_exp.items()
            )
            models[name] = {"consistent": ok, "predicted": {v: 0.0 for v in tau_exp}, "evidence": ev}
        elif "width" in wd_exp:
            iv = wd_exp["width"]
            models[name] = {
                "consistent": iv.contains(slope),
                "predicted": {"width": slope},
                "evidence": f"slope of log wd* in log width = {iv.value:.2f} [{iv.low:.2f}, {iv.high:.2f}] (model: {slope:g})",
            }
        else:
            models[name] = {"consistent": None, "evidence": "width does not vary where weight decay is swept"}
    return models

"""How wide each scale's loss bowl is, and how that width moves with model size and tokens.

The engine fits one bowl shape for every scale (`fitting.surface`: log loss = l0_s + f(z),
f(z) = ½ zᵀHz + Σ κ_a z_a³, z = log h − log h*_s). Deciding how much a wrong setting costs, or
how far the batch may grow for a given loss, needs to know whether the bowl is wider at some
scales than at others (in Step Law's sweeps the batch bowl widens with tokens). So each scale
gets its own stretch of the shared shape, one number per swept axis:

    log loss = l0_s + f(e^{g_s} ⊙ z)        (g_s,a > 0: narrower than the shared bowl along a)

fitted by least squares on the scale's runs near its optimum (the same band the joint fit uses,
centres held at the engine's per-scale optima), with a Gauss–Newton standard error. Per axis a
*width law* then says how the stretch moves with scale:

    g_s,a = c_a + Σ_v b_a,v (log x_s,v − m_v) + e_s,   e_s ~ N(0, se_s² + τ_a²),  v ∈ {n_params, tokens}

a Bayesian linear regression with τ² by DerSimonian–Laird and weakly informative priors
(c ~ N(0, 1), b ~ N(0, 0.3²): a bowl whose width changes by more than e^0.3 per e-fold of scale
would be remarkable). A variable the scales never moved is left out. Pure numpy/scipy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from fitting.common import FloatArray
from fitting.laws import weighted_law
from fitting.optima import SweepAnalysis

WIDTH_VARIABLES = ("n_params", "tokens")
CONSTANT_PRIOR_SD = 1.0
SLOPE_PRIOR_SD = 0.3
# A stretch outside e^±STRETCH_BOUND (a bowl 20× narrower or wider than the shared one) is not a width.
STRETCH_BOUND = 3.0
# A scale needs this many band rows more than it has parameters for its stretches to be fitted.
MIN_EXTRA_ROWS = 2


def excess(w: np.ndarray, H: np.ndarray, K: np.ndarray) -> np.ndarray:
    """The bowl's log-loss excess ½wᵀHw + Σκw³ with the cubic capped at ±½ of the quadratic term.

    `w` is (..., d); `H` (..., d, d) and `K` (..., d) broadcast against it. The bowl is fitted on runs
    near each scale's optimum; far out its cubic would turn the bowl over, so the asymmetry is kept
    to at most half the curvature's rise (the bowl stays a bowl: excess ≥ ¼wᵀHw > 0 off the centre).
    """
    q = 0.5 * np.einsum("...i,...ij,...j->...", w, H, w)
    c = np.einsum("...i,...i->...", w**3, K)
    out: np.ndarray = q + np.clip(c, -0.5 * q, 0.5 * q)
    return out


@dataclass(frozen=True)
class ScaleWidth:
    """One scale's stretch of the shared bowl per axis (NaN where its runs do not identify it)."""

    n_params: float
    tokens: float
    g: tuple[float, ...]
    se: tuple[float, ...]

    def to_state(self) -> dict[str, Any]:
        return {
            "n_params": self.n_params,
            "tokens": self.tokens,
            "g": [None if not math.isfinite(x) else x for x in self.g],
            "se": [None if not math.isfinite(x) else x for x in self.se],
        }

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> ScaleWidth:
        def num(x: Any) -> float:
            return math.nan if x is None else float(x)

        return cls(float(d["n_params"]), float(d["tokens"]), tuple(map(num, d["g"])), tuple(map(num, d["se"])))


@dataclass(frozen=True)
class WidthLaw:
    """g_a = c + Σ b_v (log x_v − m_v) with posterior N(coef, cov) and scatter τ (module docstring)."""

    axis: str
    variables: tuple[str, ...]
    centre: tuple[float, ...]
    coef: FloatArray
    cov: FloatArray
    tau: float
    n_scales: int

    def design(self, scale: Mapping[str, float]) -> FloatArray:
        x: FloatArray = np.array(
            [1.0] + [math.log(float(scale[v])) - m for v, m in zip(self.variables, self.centre)], dtype=float
        )
        return x

    def predict(self, scale: Mapping[str, float]) -> tuple[float, float]:
        """(mean, predictive sd) of the stretch g at `scale`."""
        x = self.design(scale)
        return float(x @ self.coef), math.sqrt(max(float(x @ self.cov @ x), 0.0) + self.tau**2)

    def slope(self, variable: str) -> tuple[float, float] | None:
        """(value, sd) of the stretch's slope in log `variable`, or None if the law does not use it."""
        if variable not in self.variables:
            return None
        j = 1 + self.variables.index(variable)
        return float(self.coef[j]), math.sqrt(max(float(self.cov[j, j]), 0.0))

    def to_state(self) -> dict[str, Any]:
        return {
            "axis": self.axis,
            "variables": list(self.variables),
            "centre": list(self.centre),
            "coef": self.coef.tolist(),
            "cov": self.cov.tolist(),
            "tau": self.tau,
            "n_scales": self.n_scales,
        }

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> WidthLaw:
        coef = np.asarray(d["coef"], float)
        return cls(
            str(d["axis"]),
            tuple(d["variables"]),
            tuple(float(x) for x in d["centre"]),
            coef,
            np.asarray(d["cov"], float).reshape(coef.size, coef.size),
            float(d["tau"]),
            int(d["n_scales"]),
        )


@dataclass(frozen=True)
class BowlWidths:
    """Per-scale stretches of the shared bowl (axes in the bowl's order) and a width law per axis."""

    axes: tuple[str, ...]
    scales: tuple[ScaleWidth, ...]
    laws: Mapping[str, WidthLaw]

    def nearest(self, target: Mapping[str, float]) -> int | None:
        """Index of the scale nearest `target` in (log n_params, log tokens), or None without scales."""
        if not self.scales or "n_params" not in target or "tokens" not in target:
            return None
        t = np.array([math.log(target["n_params"]), math.log(target["tokens"])])
        d = [float(np.sum((np.log([s.n_params, s.tokens]) - t) ** 2)) for s in self.scales]
        return int(np.argmin(d))

    def stretch_at_scale(self, i: int, axis: str) -> tuple[float, float] | None:
        """(g, se) of scale i along `axis`: measured there, else its width law's value; None if neither."""
        j = self.axes.index(axis)
        s = self.scales[i]
        law = self.laws.get(axis)
        predicted = None if law is None else law.predict({"n_params": s.n_params, "tokens": s.tokens})
        if math.isfinite(s.g[j]) and math.isfinite(s.se[j]) and (predicted is None or s.se[j] <= predicted[1]):
            return s.g[j], s.se[j]
        return predicted

    def to_state(self) -> dict[str, Any]:
        return {
            "axes": list(self.axes),
            "scales": [s.to_state() for s in self.scales],
            "laws": {a: law.to_state() for a, law in self.laws.items()},
        }

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> BowlWidths:
        return cls(
            tuple(d["axes"]),
            tuple(ScaleWidth.from_state(s) for s in d["scales"]),
            {a: WidthLaw.from_state(v) for a, v in (d.get("laws") or {}).items()},
        )


def _scale_stretch(
    z: np.ndarray, y: np.ndarray, weight: np.ndarray, H: np.ndarray, K: np.ndarray, free: np.ndarray, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """(g, se) of one scale: least squares of y = l0 + f(e^g ⊙ z) over l0 and g on the `free` axes."""
    d = z.shape[1]
    idx = np.flatnonzero(free)
    root = np.sqrt(weight)

    def unpack(p: np.ndarray) -> np.ndarray:
        g = np.zeros(d)
        g[idx] = p[1:]
        return g

    def resid(p: np.ndarray) -> np.ndarray:
        w = z * np.exp(unpack(p))
        r: np.ndarray = (p[0] + 0.5 * np.einsum("ni,ij,nj->n", w, H, w) + (w**3) @ K - y) * root
        return r

    def jac(p: np.ndarray) -> np.ndarray:
        w = z * np.exp(unpack(p))
        grad = w @ H + 3 * K * w * w  # ∂f/∂w
        J = np.column_stack([np.ones(len(y)), (grad * w)[:, idx]])
        out: np.ndarray = J * root[:, None]
        return out

    p0 = np.concatenate([[float(np.min(y))], np.zeros(idx.size)])
    lo = np.concatenate([[-np.inf], np.full(idx.size, -STRETCH_BOUND)])
    hi = np.concatenate([[np.inf], np.full(idx.size, STRETCH_BOUND)])
    sol = least_squares(resid, p0, jac=jac, bounds=(lo, hi), method="trf", max_nfev=200)
    J = jac(sol.x)
    dof = max(len(y) - sol.x.size, 1)
    s = max(sigma, float(np.sqrt(np.sum(sol.fun**2) / dof)))
    g, se = np.full(d, np.nan), np.full(d, np.nan)
    try:
        cov = np.linalg.inv(J.T @ J) * s * s
    except np.linalg.LinAlgError:
        return g, se
    at_bound = np.abs(sol.x[1:]) >= STRETCH_BOUND - 1e-6
    g[idx] = np.where(at_bound, np.nan, sol.x[1:])
    se[idx] = np.where(at_bound, np.nan, np.sqrt(np.maximum(np.diag(cov)[1:], 0.0)))
    return g, se


def scale_stretches(analysis: SweepAnalysis) -> list[ScaleWidth]:
    """Each scale's stretch of the shared bowl along every axis its band sweeps (module docstring)."""
    data, bowl = analysis.data, analysis.bowl
    if data is None or bowl is None:
        return []
    H, K = bowl.hessian, bowl.kappa
    sigma = analysis.noise.sigma if analysis.noise is not None else bowl.noise
    weight = data.weight if data.weight is not None else np.ones(len(data.y))
    out = []
    for s, sc in enumerate(analysis.scales):
        rows = data.scale == s
        free = data.active[s] & np.isfinite(analysis.centre[s])
        d = len(analysis.axes)
        if not free.any() or int(rows.sum()) < 1 + int(free.sum()) + MIN_EXTRA_ROWS:
            g, se = np.full(d, np.nan), np.full(d, np.nan)
        else:
            z = (data.u[rows] - np.where(free, analysis.centre[s], 0.0)) * free
            g, se = _scale_stretch(z, data.y[rows], weight[rows], H, K, free, sigma)
        out.append(ScaleWidth(sc.n_params, sc.tokens, tuple(g.tolist()), tuple(se.tolist())))
    return out


def width_law(axis: str, j: int, scales: Sequence[ScaleWidth]) -> WidthLaw | None:
    """The width law of axis j over the scales that measure its stretch (module docstring)."""
    ok = [s for s in scales if math.isfinite(s.g[j]) and math.isfinite(s.se[j]) and s.se[j] > 0]
    if not ok:
        return None
    logx = {v: np.log([getattr(s, v) for s in ok]) for v in WIDTH_VARIABLES}
    variables = tuple(v for v in WIDTH_VARIABLES if np.ptp(logx[v]) > 0.01)
    centre = tuple(float(np.mean(logx[v])) for v in variables)
    X = np.column_stack([np.ones(len(ok))] + [logx[v] - m for v, m in zip(variables, centre)])
    y = np.array([s.g[j] for s in ok])
    se = np.array([s.se[j] for s in ok])
    tau2 = weighted_law(X, y, se)[1] if len(ok) > X.shape[1] else 0.0
    prec0 = np.array([1.0 / CONSTANT_PRIOR_SD**2] + [1.0 / SLOPE_PRIOR_SD**2] * len(variables))
    w = 1.0 / (se**2 + tau2)
    P = (X * w[:, None]).T @ X + np.diag(prec0)
    cov: FloatArray = np.linalg.inv(P).astype(float)
    coef: FloatArray = (cov @ ((X * w[:, None]).T @ y)).astype(float)
    return WidthLaw(axis, variables, centre, coef, cov, math.sqrt(tau2), len(ok))


def fit_bowl_widths(analysis: SweepAnalysis) -> BowlWidths | None:
    """Per-scale stretches and a width law per axis, or None when the study has no bowl."""
    scales = scale_stretches(analysis)
    if not scales:
        return None
    laws = {}
    for j, a in enumerate(analysis.axes):
        law = width_law(a, j, scales)
        if law is not None:
            laws[a] = law
    return BowlWidths(tuple(analysis.axes), tuple(scales), laws)


__all__ = ["BowlWidths", "ScaleWidth", "WidthLaw", "excess", "fit_bowl_widths"]

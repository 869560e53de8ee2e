"""Power laws for the optimal hyperparameters: log h* = c + Σ a_j log x_j.

Two stages. (1) Variable selection: the per-scale optima (with their bootstrap standard
errors) are regressed on every admissible set of scale variables — those that vary
across the scales and are not collinear — by weighted least squares with weights
1/(se² + τ²) (τ² the between-scale scatter, DerSimonian–Laird); the set with the lowest
leave-one-scale-out error wins, the smallest set within one standard error of it when
several are close. (2) The chosen laws are fitted jointly with the loss surface
(`fitting.surface`: every scale's bowl is centred on the laws), so every run near an
optimum informs the exponents directly; a scale-level bootstrap (one Gauss–Newton step
per resample) gives the intervals.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fitting.common import AXIS_LABEL, SCALE_VARS, Interval, percentile_bounds
from fitting.optima import SweepAnalysis
from fitting.surface import BowlFit, fit_bowl, one_step_bootstrap

MIN_SCALES = 3
MAX_VARIABLES = 3
# A variable explained by the others with R² > 0.98 cannot be separated from them.
COLLINEAR_R2 = 0.98
_SYMBOL = {"learning_rate": "lr*", "batch_size": "bs*", "weight_decay": "wd*"}


@dataclass(frozen=True, eq=False)
class PowerLaw:
    """log h* = c + Σ a_j (log x_j − m_j) for one hyperparameter, with bootstrap samples.

    `samples` are (B, 1 + k) bootstrap coefficient vectors aligned with the shape samples of
    the same fit; `scatter` is the between-scale spread of optima around the law (log units)
    beyond their estimation error, added to prediction intervals.
    """

    axis: str
    variables: tuple[str, ...]
    log_centre: tuple[float, ...]
    coef: tuple[float, ...]
    samples: np.ndarray
    scatter: float
    r2: float
    cv_error: float | None
    n_scales: int
    ranges: Mapping[str, tuple[float, float]]
    candidates: tuple[tuple[tuple[str, ...], float], ...] = ()
    method: str = "joint loss surface"

    @property
    def form(self) -> str:
        terms = " + ".join(f"{chr(ord('a') + i)}·log {v}" for i, v in enumerate(self.variables))
        return f"log {_SYMBOL[self.axis]} = c" + (f" + {terms}" if terms else "")

    def exponent(self, var: str) -> Interval:
        j = 1 + self.variables.index(var)
        return Interval.from_samples(self.coef[j], self.samples[:, j] if len(self.samples) else np.array([]))

    @property
    def coefficient(self) -> float:
        """Prefactor C of h* = C · Π x_j^a_j (natural units)."""
        return math.exp(self.coef[0] - sum(a * m for a, m in zip(self.coef[1:], self.log_centre)))

    def design(self, target: Mapping[str, float]) -> np.ndarray:
        return np.array([1.0] + [math.log(float(target[v])) - m for v, m in zip(self.variables, self.log_centre)])

    def predict_log(self, target: Mapping[str, float]) -> tuple[float, np.ndarray]:
        """Point estimate and bootstrap samples of log h* at `target` (law only, no scatter)."""
        x = self.design(target)
        return float(x @ np.asarray(self.coef)), (self.samples @ x if len(self.samples) else np.zeros(0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "form": self.form,
            "variables": list(self.variables),
            "coefficient": self.coefficient,
            "exponents": {v: self.exponent(v).to_dict() for v in self.variables},
            "r2": self.r2,
            "cv_error": self.cv_error,
            "n_scales": self.n_scales,
            "scatter": self.scatter,
            "method": self.method,
            "ranges": {k: list(v) for k, v in self.ranges.items()},
            "candidates": [{"variables": list(v), "cv_error": e} for v, e in self.candidates],
        }

    def to_state(self) -> dict[str, Any]:
        return {**self.to_dict(), "axis": self.axis, "log_centre": list(self.log_centre), "coef": list(self.coef),
                "samples": np.round(self.samples, 7).tolist()}

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> PowerLaw:
        k = len(d["variables"])
        samples = np.asarray(d.get("samples") or np.zeros((0, 1 + k)), dtype=float).reshape(-1, 1 + k)
        return cls(d["axis"], tuple(d["variables"]), tuple(d["log_centre"]), tuple(d["coef"]), samples,
                   float(d["scatter"]), float(d["r2"]), None if d.get("cv_error") is None else float(d["cv_error"]),
                   int(d["n_scales"]), {k2: (float(v[0]), float(v[1])) for k2, v in d.get("ranges", {}).items()},
                   tuple((tuple(c["variables"]), float(c["cv_error"])) for c in d.get("candidates", [])),
                   d.get("method", "joint loss surface"))


@dataclass(frozen=True, eq=False)
class BowlShape:
    """Shared curvature H (log-loss per log-unit², axes order `axes`) and asymmetry κ, with samples."""

    axes: tuple[str, ...]
    hessian: np.ndarray
    kappa: np.ndarray
    hessian_samples: np.ndarray  # (B, d, d)
    kappa_samples: np.ndarray  # (B, d)
    cross_identified: np.ndarray  # (d, d) bool
    wd_offset: float = 0.0

    def to_state(self) -> dict[str, Any]:
        return {"axes": list(self.axes), "hessian": self.hessian.tolist(), "kappa": self.kappa.tolist(),
                "hessian_samples": np.round(self.hessian_samples, 9).tolist(),
                "kappa_samples": np.round(self.kappa_samples, 9).tolist(),
                "cross_identified": self.cross_identified.tolist(), "wd_offset": self.wd_offset}

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> BowlShape:
        k = len(d["axes"])
        return cls(tuple(d["axes"]), np.asarray(d["hessian"], float).reshape(k, k), np.asarray(d["kappa"], float),
                   np.asarray(d["hessian_samples"], float).reshape(-1, k, k), np.asarray(d["kappa_samples"], float).reshape(-1, k),
                   np.asarray(d["cross_identified"], bool).reshape(k, k), float(d.get("wd_offset", 0.0)))


@dataclass(frozen=True, eq=False)
class LawFits:
    laws: Mapping[str, PowerLaw]
    shape: BowlShape | None
    missing: Mapping[str, str]  # axis → why no law


def _log_vars(analysis: SweepAnalysis) -> dict[str, np.ndarray]:
    out = {}
    for v in SCALE_VARS:
        x = np.array([s.variables()[v] for s in analysis.scales], dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[v] = np.where(np.isfinite(x) & (x > 0), np.log(np.where(x > 0, x, 1.0)), np.nan)
    return out


def admissible_sets(logx: Mapping[str, np.ndarray], rows: np.ndarray, max_vars: int) -> list[tuple[str, ...]]:
    """Variable sets that vary across `rows` and are not collinear (no variable has R² > 0.98 on the others)."""
    varying = [v for v in SCALE_VARS if np.all(np.isfinite(logx[v][rows])) and np.ptp(logx[v][rows]) > 1e-3]
    out = []
    for k in range(1, max_vars + 1):
        for combo in itertools.combinations(varying, k):
            Z = np.stack([logx[v][rows] for v in combo], axis=1)
            Z = Z - Z.mean(axis=0)
            if np.linalg.matrix_rank(Z, tol=1e-8) < k:
                continue
            ok = True
            for j in range(k):
                others = np.delete(Z, j, axis=1)
                if others.shape[1]:
                    res = Z[:, j] - others @ np.linalg.lstsq(others, Z[:, j], rcond=None)[0]
                    if 1 - res @ res / (Z[:, j] @ Z[:, j]) > COLLINEAR_R2:
                        ok = False
            if ok:
                out.append(combo)
    return out


def weighted_law(X: np.ndarray, y: np.ndarray, se: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """WLS of y on X with weights 1/(se² + τ²); τ² by DerSimonian–Laird. Returns (β, τ², weights).

    log h*_s = X_s β + e_s, e_s ~ N(0, se_s² + τ²).
    """
    w0 = 1.0 / np.maximum(se, 1e-6) ** 2
    b0 = np.linalg.lstsq(X * np.sqrt(w0)[:, None], y * np.sqrt(w0), rcond=None)[0]
    r = y - X @ b0
    Q = float(np.sum(w0 * r * r))
    n, p = X.shape
    dof = n - p
    tau2 = 0.0
    if dof > 0:
        WX = X * w0[:, None]
        M = np.linalg.pinv(X.T @ WX)
        trace = float(np.sum(w0) - np.trace(M @ (WX.T @ WX)))
        tau2 = max(0.0, (Q - dof) / max(trace, 1e-12))
    w = 1.0 / (np.maximum(se, 1e-6) ** 2 + tau2)
    b = np.linalg.lstsq(X * np.sqrt(w)[:, None], y * np.sqrt(w), rcond=None)[0]
    return b, tau2, w


def loso_error(X: np.ndarray, y: np.ndarray, se: np.ndarray) -> tuple[float, float]:
    """Leave-one-scale-out RMS prediction error of log h* (and its standard error)."""
    n = len(y)
    errs = np.empty(n)
    for i in range(n):
        m = np.arange(n) != i
        b, _, _ = weighted_law(X[m], y[m], se[m])
        errs[i] = X[i] @ b - y[i]
    sq = errs**2
    return float(np.sqrt(sq.mean())), float(np.std(sq) / np.sqrt(n) / (2 * np.sqrt(sq.mean()) + 1e-12))


def select_variables(
    analysis: SweepAnalysis, j: int, logx: Mapping[str, np.ndarray]
) -> tuple[tuple[str, ...] | None, list[tuple[tuple[str, ...], float]], str | None]:
    """Choose the law's variables for axis j by leave-one-scale-out error (one-SE rule)."""
    axis = analysis.axes[j]
    rows = np.flatnonzero(np.isfinite(analysis.centre[:, j]))
    if rows.size < MIN_SCALES:
        return None, [], f"{AXIS_LABEL[axis]} is swept at only {rows.size} scale(s); need ≥ {MIN_SCALES} to fit a law"
    sets = admissible_sets(logx, rows, min(MAX_VARIABLES, rows.size - 2))
    if not sets:
        return None, [], (f"{AXIS_LABEL[axis]}: the {rows.size} scales where it is swept do not vary in any of "
                          f"{', '.join(SCALE_VARS)} independently; need scales that differ in size or tokens")
    y = analysis.centre[rows, j]
    se = analysis.centre_se[rows, j]
    se = np.where(np.isfinite(se), se, np.nanmax(se) if np.any(np.isfinite(se)) else 0.1)
    scored = []
    for combo in sets:
        X = np.column_stack([np.ones(rows.size)] + [logx[v][rows] - logx[v][rows].mean() for v in combo])
        err, err_se = loso_error(X, y, se)
        scored.append((combo, err, err_se))
    best = min(scored, key=lambda t: t[1])
    # One-standard-error rule: a smaller set that is statistically as good generalises better.
    # Width and depth describe a model's shape; with few shapes they are easily confused
    # with each other and with n_params, so they must beat the scaling-law variables
    # (n_params, tokens, compute) by more than that noise to be chosen.
    ok = [t for t in scored if t[1] <= best[1] + best[2]]
    chosen = min(ok, key=lambda t: (len(t[0]), sum(v in ("width", "depth") for v in t[0]), "compute" in t[0], t[1]))
    return chosen[0], [(c, e) for c, e, _ in scored], None


def fit_laws(analysis: SweepAnalysis, *, bootstrap: int = 200, seed: int = 0,
             variables: Mapping[str, Sequence[str]] | None = None) -> LawFits:
    """Fit the power laws of every swept axis jointly with the loss surface.

    log h*_a = c_a + Σ a_aj (log x_j − m_j); loss bowls centred on these laws.
    `variables` forces the variable set for an axis (used by backtests of fixed forms).
    """
    missing: dict[str, str] = {}
    if analysis.fit is None or analysis.data is None:
        for a in ("learning_rate", "batch_size", "weight_decay"):
            missing[a] = f"{AXIS_LABEL[a]} is not swept over ≥ 3 values at any scale"
        return LawFits({}, None, missing)
    logx = _log_vars(analysis)
    S = len(analysis.scales)
    d = len(analysis.axes)
    chosen: dict[int, tuple[str, ...]] = {}
    cand: dict[int, list] = {}
    for j, axis in enumerate(analysis.axes):
        if variables is not None and axis in variables:
            rows = np.flatnonzero(np.isfinite(analysis.centre[:, j]))
            if rows.size < MIN_SCALES:
                missing[axis] = f"{AXIS_LABEL[axis]} is swept at only {rows.size} scale(s); need ≥ {MIN_SCALES} to fit a law"
                continue
            chosen[j] = tuple(variables[axis])
            cand[j] = []
            continue
        combo, scored, why = select_variables(analysis, j, logx)
        if combo is None:
            missing[axis] = why or ""
        else:
            chosen[j] = combo
            cand[j] = scored
    for a in ("learning_rate", "batch_size", "weight_decay"):
        if a not in analysis.axes and a not in missing:
            missing[a] = f"{AXIS_LABEL[a]} is not swept over ≥ 3 values at any scale; no optimum to fit a law to"
    if not chosen:
        return LawFits({}, None, missing)

    # Axes without a law keep free per-scale centres so their runs still inform the shape.
    designs, beta0, meta = [], [], []
    rng = np.random.default_rng(seed)
    for j in range(d):
        rows = np.flatnonzero(np.isfinite(analysis.centre[:, j]))
        if j in chosen:
            combo = chosen[j]
            m = [float(logx[v][rows].mean()) for v in combo]
            X = np.column_stack([np.ones(S)] + [np.nan_to_num(logx[v] - mv) for v, mv in zip(combo, m)])
            se = analysis.centre_se[rows, j]
            se = np.where(np.isfinite(se), se, np.nanmax(se))
            b, tau2, w = weighted_law(X[rows], analysis.centre[rows, j], se)
            designs.append(X)
            beta0.append(b)
            meta.append((combo, m, rows, se, tau2))
        else:
            X = np.zeros((S, rows.size))
            X[rows, np.arange(rows.size)] = 1.0
            designs.append(X)
            beta0.append(analysis.centre[rows, j])
            meta.append(None)
    fit0 = analysis.fit
    joint: BowlFit = fit_bowl(analysis.data, tuple(designs), tuple(beta0), fit0.chol, fit0.kappa)

    B = max(int(bootstrap), 0)
    if B:
        counts = rng.multinomial(S, np.full(S, 1.0 / S), size=B).astype(float)
        samples = one_step_bootstrap(joint, analysis.data.scale, counts)
    else:
        samples = np.zeros((0, joint.params.size))
    offs = np.cumsum([S] + [X.shape[1] for X in designs])
    laws: dict[str, PowerLaw] = {}
    for j, axis in enumerate(analysis.axes):
        if meta[j] is None:
            continue
        combo, m, rows, se, tau2 = meta[j]
        beta = joint.beta[j]
        bs = samples[:, offs[j] : offs[j + 1]]
        # Few resampling units (scales) make a bootstrap too narrow; the usual small-sample
        # correction widens deviations by √(G/(G − k)) for k law coefficients.
        g = rows.size
        if g > beta.size:
            bs = beta[None, :] + (bs - beta[None, :]) * np.sqrt(g / (g - beta.size))
        Xr = designs[j][rows]
        pred = Xr @ beta
        y = analysis.centre[rows, j]
        w = 1.0 / (se**2 + tau2)
        ybar = np.sum(w * y) / np.sum(w)
        ss_tot = float(np.sum(w * (y - ybar) ** 2))
        r2 = 1.0 - float(np.sum(w * (y - pred) ** 2)) / ss_tot if ss_tot > 0 else float("nan")
        r = y - pred
        scatter = float(np.sqrt(max(0.0, np.mean(r * r) - np.mean(se * se))))
        cv = None
        if rows.size >= len(combo) + 2:
            cv, _ = loso_error(Xr, y, se)
        ranges = {v: (float(np.exp(logx[v][rows].min())), float(np.exp(logx[v][rows].max()))) for v in SCALE_VARS
                  if np.all(np.isfinite(logx[v][rows]))}
        laws[axis] = PowerLaw(axis, combo, tuple(m), tuple(float(x) for x in beta), bs, scatter, r2, cv,
                              int(rows.size), ranges, tuple(cand.get(j, ())))

    H_s, k_s = _shape_samples(joint, samples, analysis)
    shape = BowlShape(analysis.axes, joint.hessian, joint.kappa, H_s, k_s, analysis.data.cross, analysis.wd_offset)
    return LawFits(laws, shape, missing)


def _shape_samples(joint: BowlFit, samples: np.ndarray, analysis: SweepAnalysis) -> tuple[np.ndarray, np.ndarray]:
    d = len(analysis.axes)
    cross = analysis.data.cross
    tri = [(j, k) for j in range(d) for k in range(j + 1) if j == k or cross[j, k]]
    n_l = len(tri)
    B = samples.shape[0]
    L = np.zeros((B, d, d))
    base = samples.shape[1] - n_l - d
    for c, (j, k) in enumerate(tri):
        v = samples[:, base + c]
        L[:, j, k] = np.exp(v) if j == k else v
    H = L @ np.transpose(L, (0, 2, 1))
    return H, samples[:, base + n_l :]


def law_interval(law: PowerLaw, target: Mapping[str, float], seed: int = 0) -> tuple[float, float, float]:
    """(value, low, high) of log h* at target: bootstrap of the law plus the between-scale scatter."""
    v, s = law.predict_log(target)
    if s.size == 0:
        return v, v - 1.645 * law.scatter, v + 1.645 * law.scatter
    noise = np.random.default_rng(seed).standard_normal(s.size) * law.scatter
    lo, hi = percentile_bounds(s + noise)
    return v, float(min(lo, v)), float(max(hi, v))

"""Power laws for the optimal hyperparameters, as a Bayesian model average.

Model, per hyperparameter and variable set V: log h*_s = c + Σ_{v∈V} a_v (log x_{s,v} − m_v) + e_s,
e_s ~ N(0, se_s² + τ²), with se_s the per-scale optimum's standard error, τ the scatter of
optima around the law, a_v ~ N(published centre, published spread²) (`fitting.published`;
a vague N(0, 1) where nothing is published or the study asks for `priors="none"`), c flat.

- **Posterior.** For each admissible V and each τ on a grid (half-normal prior on τ) the
  posterior of (c, a) is Gaussian in closed form — a ridge toward the published law whose
  pull fades as the study's scales spread out.
- **Average, don't bet.** The variable sets are weighted by their evidence p(y | V, τ). With
  the scales taken from smallest to largest, the evidence is the product of one-step-ahead
  predictive densities, so it scores each V by how well it forecasts *larger* scales from
  smaller ones — the use users make of it. The law is the mixture; its interval includes
  the model uncertainty.
- **Backtests.** `forward_error` refits the whole procedure without the largest scales
  (along n_params, tokens and compute in turn) and predicts them; `cv_error` leaves one
  scale out at a time. The RMS of the forward misses in units of their own predictive
  spread scales every interval of the law (`calibration`, shrunk toward 1, in [0.7, 3]):
  wider where forecasts of larger scales missed, narrower where they were all well inside.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fitting.common import AXIS_LABEL, SCALE_VARS, FloatArray, Interval
from fitting.optima import SweepAnalysis
from fitting.published import CONSTANT_SD, VAGUE, ExponentPrior
from fitting.surface import BowlSolution, one_step_bootstrap

MIN_SCALES = 3
# With published priors on the exponents two scales suffice: the data fix the constant and
# move the exponents only as far as two points can.
MIN_SCALES_WITH_PRIORS = 2
MAX_VARIABLES = 3
# A variable explained by the others with R² > 0.98 cannot be separated from them.
COLLINEAR_R2 = 0.98
# Between-scale scatter τ (log units): grid and half-normal prior scale. Optima of real
# sweeps scatter around their law by a few percent to ~20% (Step Law's residuals ~5–10%).
TAU_GRID = np.array([0.0, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.45, 0.7])
TAU_PRIOR_SCALE = 0.15
# Variable sets whose posterior weight is below this are dropped from the average.
MIN_MODEL_WEIGHT = 0.02
# Calibration from forward backtests: the factor is shrunk toward 1 as if ν0 forecasts had
# missed by exactly their predictive spread, and kept in [MIN_CALIBRATION, MAX_CALIBRATION].
CALIBRATION_PRIOR_N = 3.0
MAX_CALIBRATION = 3.0
MIN_CALIBRATION = 0.7
# Leave-one-scale-out is capped at this many held-out scales (evenly spread) for speed.
MAX_CV_FOLDS = 40
PREDICTIVE_SAMPLES = 2000
_SYMBOL = {"learning_rate": "lr*", "batch_size": "bs*", "weight_decay": "wd*"}
# Admissible variable sets per (rows, max_vars, published priors), shared by one study's backtests.
SetCache = dict[tuple[Any, ...], list[tuple[str, ...]]]


@dataclass(frozen=True)
class Component:
    """One term of the mixture: coefficients over (1, union variables) ~ N(mean, cov), scatter τ."""

    weight: float
    tau: float
    mean: np.ndarray
    cov: np.ndarray
    model: int  # index into PowerLaw.models

    def to_state(self) -> dict[str, Any]:
        return {
            "weight": self.weight,
            "tau": self.tau,
            "mean": self.mean.tolist(),
            "cov": self.cov.tolist(),
            "model": self.model,
        }

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> Component:
        mean = np.asarray(d["mean"], float)
        return cls(
            float(d["weight"]),
            float(d["tau"]),
            mean,
            np.asarray(d["cov"], float).reshape(mean.size, mean.size),
            int(d["model"]),
        )


@dataclass(frozen=True)
class LawModel:
    """One variable set of the average, with its posterior weight and evidence."""

    variables: tuple[str, ...]
    weight: float
    log_evidence: float

    def to_dict(self) -> dict[str, Any]:
        return {"variables": list(self.variables), "weight": self.weight, "log_evidence": self.log_evidence}


@dataclass(frozen=True, eq=False)
class PowerLaw:
    """log h* = c + Σ a_j (log x_j − m_j) for one hyperparameter: a mixture over variable sets and τ.

    `variables` is the union of the averaged sets (absent ones have coefficient 0 in a
    component); `calibration` multiplies every predictive deviation from the mean.
    """

    axis: str
    variables: tuple[str, ...]
    log_centre: tuple[float, ...]
    components: tuple[Component, ...]
    models: tuple[LawModel, ...]
    priors: Mapping[str, ExponentPrior]
    r2: float
    cv_error: float | None
    forward_error: float | None
    calibration: float
    n_scales: int
    ranges: Mapping[str, tuple[float, float]]
    method: str = "Bayesian model average of weighted least squares on the per-scale optima"
    _weights: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        w = np.array([c.weight for c in self.components])
        object.__setattr__(self, "_weights", w / w.sum())

    # --- coefficients --------------------------------------------------------------------
    @property
    def coef(self) -> FloatArray:
        """Posterior mean of (c, a_1, …) over the union variables."""
        mean: FloatArray = np.einsum("k,kp->p", self._weights, np.stack([c.mean for c in self.components]))
        return mean

    @property
    def coef_cov(self) -> FloatArray:
        """Posterior covariance of the coefficients (within and between components, calibrated)."""
        means = np.stack([c.mean for c in self.components])
        dev = means - self.coef
        cov: FloatArray = np.einsum("k,kpq->pq", self._weights, np.stack([c.cov for c in self.components]))
        cov = cov + np.einsum("k,kp,kq->pq", self._weights, dev, dev)
        return cov * self.calibration**2

    @property
    def scatter(self) -> float:
        """Posterior root-mean-square of τ, the optima's scatter around the law (log units)."""
        return float(math.sqrt(np.sum(self._weights * np.array([c.tau for c in self.components]) ** 2)))

    @property
    def form(self) -> str:
        terms = " + ".join(f"{chr(ord('a') + i)}·log {v}" for i, v in enumerate(self.variables))
        base = f"log {_SYMBOL[self.axis]} = c" + (f" + {terms}" if terms else "")
        return base if len(self.models) == 1 else f"{base} (average of {len(self.models)} variable sets)"

    @property
    def coefficient(self) -> float:
        """Prefactor C of h* = C · Π x_j^a_j (natural units) at the posterior mean."""
        b = self.coef
        return math.exp(b[0] - sum(a * m for a, m in zip(b[1:], self.log_centre)))

    def exponent(self, var: str) -> Interval:
        j = 1 + self.variables.index(var)
        draws = self._coefficient_draws(np.random.default_rng(0))[:, j]
        return Interval.from_samples(float(self.coef[j]), draws)

    def _coefficient_draws(self, rng: np.random.Generator, n: int = PREDICTIVE_SAMPLES) -> FloatArray:
        counts = rng.multinomial(n, self._weights)
        out = []
        for c, k in zip(self.components, counts):
            if k:
                out.append(rng.multivariate_normal(c.mean, c.cov, size=k, method="eigh"))
        draws = np.concatenate(out)
        scaled: FloatArray = self.coef + (draws - self.coef) * self.calibration
        return scaled

    # --- prediction ----------------------------------------------------------------------
    def design(self, target: Mapping[str, float]) -> np.ndarray:
        return np.array([1.0] + [math.log(float(target[v])) - m for v, m in zip(self.variables, self.log_centre)])

    def usable_components(self, available: Sequence[str]) -> tuple[np.ndarray, float]:
        """Mixture weights restricted to the variable sets computable from `available` (and their share)."""
        ok = np.array([set(self.models[c.model].variables) <= set(available) for c in self.components])
        share = float(self._weights[ok].sum())
        return (self._weights * ok / share if share > 0 else self._weights * 0), share

    def predict_log(
        self,
        target: Mapping[str, float],
        *,
        seed: int = 0,
        n: int = PREDICTIVE_SAMPLES,
        weights: np.ndarray | None = None,
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """log h* at `target`: posterior mean, draws of the law's mean, draws of the scatter τ·ε.

        Both draw sets include the calibration factor; a predictive draw is their sum.
        Variables a component does not use may be absent from `target` (its weight must be 0).
        """
        w = self._weights if weights is None else weights
        x = np.array(
            [1.0]
            + [math.log(float(target[v])) - m if v in target else 0.0 for v, m in zip(self.variables, self.log_centre)]
        )
        means = np.array([c.mean @ x for c in self.components])
        sds = np.sqrt(np.maximum([x @ c.cov @ x for c in self.components], 0.0))
        taus = np.array([c.tau for c in self.components])
        value = float(w @ means)
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(w), size=n, p=w)
        law = means[pick] + sds[pick] * rng.standard_normal(n)
        noise = taus[pick] * rng.standard_normal(n)
        return value, value + (law - value) * self.calibration, noise * self.calibration

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        exps: dict[str, dict[str, Any]] = {}
        cov = self.coef_cov
        for j, v in enumerate(self.variables, start=1):
            e: dict[str, Any] = self.exponent(v).to_dict()
            p = self.priors.get(v, VAGUE)
            if p.published:
                e["prior"] = {"mean": p.mean, "sd": p.sd}
                e["prior_source"] = p.source
                # How far the data moved it, in prior standard deviations, and the share of
                # the posterior's precision that comes from the data (0: prior only).
                e["shift"] = (e["value"] - p.mean) / p.sd
                e["data_share"] = max(0.0, 1.0 - float(cov[j, j]) / p.sd**2)
            else:
                e["prior"] = None
            exps[v] = e
        return {
            "form": self.form,
            "variables": list(self.variables),
            "coefficient": self.coefficient,
            "exponents": exps,
            "r2": self.r2,
            "cv_error": self.cv_error,
            "forward_error": self.forward_error,
            "models": [m.to_dict() for m in self.models],
            "calibration": self.calibration,
            "n_scales": self.n_scales,
            "scatter": self.scatter,
            "method": self.method,
            "ranges": {k: list(v) for k, v in self.ranges.items()},
        }

    def to_state(self) -> dict[str, Any]:
        return {
            **self.to_dict(),
            "axis": self.axis,
            "log_centre": list(self.log_centre),
            "components": [c.to_state() for c in self.components],
            "priors": {v: p.to_dict() for v, p in self.priors.items()},
        }

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> PowerLaw:
        return cls(
            d["axis"],
            tuple(d["variables"]),
            tuple(float(x) for x in d["log_centre"]),
            tuple(Component.from_state(c) for c in d["components"]),
            tuple(LawModel(tuple(m["variables"]), float(m["weight"]), float(m["log_evidence"])) for m in d["models"]),
            {
                v: ExponentPrior(float(p["mean"]), float(p["sd"]), str(p["source"]))
                for v, p in d.get("priors", {}).items()
            },
            float(d["r2"]) if d.get("r2") is not None else math.nan,
            None if d.get("cv_error") is None else float(d["cv_error"]),
            None if d.get("forward_error") is None else float(d["forward_error"]),
            float(d.get("calibration", 1.0)),
            int(d["n_scales"]),
            {k: (float(v[0]), float(v[1])) for k, v in d.get("ranges", {}).items()},
            d.get("method", cls.method),
        )


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
        return {
            "axes": list(self.axes),
            "hessian": self.hessian.tolist(),
            "kappa": self.kappa.tolist(),
            "hessian_samples": np.round(self.hessian_samples, 9).tolist(),
            "kappa_samples": np.round(self.kappa_samples, 9).tolist(),
            "cross_identified": self.cross_identified.tolist(),
            "wd_offset": self.wd_offset,
        }

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> BowlShape:
        k = len(d["axes"])
        return cls(
            tuple(d["axes"]),
            np.asarray(d["hessian"], float).reshape(k, k),
            np.asarray(d["kappa"], float),
            np.asarray(d["hessian_samples"], float).reshape(-1, k, k),
            np.asarray(d["kappa_samples"], float).reshape(-1, k),
            np.asarray(d["cross_identified"], bool).reshape(k, k),
            float(d.get("wd_offset", 0.0)),
        )


@dataclass(frozen=True, eq=False)
class LawSet:
    """The hyperparameter laws of a study, the bowl shape they share, and why any law is missing."""

    laws: Mapping[str, PowerLaw]
    shape: BowlShape | None
    missing: Mapping[str, str]  # axis → why no law


# --- the Bayesian linear model ---------------------------------------------------------
def _tau_log_prior() -> FloatArray:
    """Log prior mass of each τ grid point: half-normal density × the point's share of the axis."""
    edges = np.concatenate([[0.0], (TAU_GRID[1:] + TAU_GRID[:-1]) / 2, [TAU_GRID[-1] * 1.25]])
    mass = np.exp(-0.5 * (TAU_GRID / TAU_PRIOR_SCALE) ** 2) * np.diff(edges)
    log_mass: FloatArray = np.log(mass / mass.sum())
    return log_mass


_LOG_TAU_PRIOR = _tau_log_prior()


def posterior(
    X: np.ndarray, y: np.ndarray, se2: np.ndarray, m0: np.ndarray, prec0: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian posterior and log evidence of y = Xb + e, e ~ N(0, se² + τ²), b ~ N(m0, diag(1/prec0)), per τ.

    Returns means (T, p), covariances (T, p, p) and log evidences (T,) over TAU_GRID.
    """
    v = se2[None, :] + TAU_GRID[:, None] ** 2  # (T, n)
    w = 1.0 / np.maximum(v, 1e-12)
    P = np.einsum("ni,tn,nj->tij", X, w, X) + np.diag(prec0)[None]
    rhs = np.einsum("ni,tn,n->ti", X, w, y) + (prec0 * m0)[None]
    L = np.linalg.cholesky(P)
    mean = np.linalg.solve(P, rhs[:, :, None])[:, :, 0]
    cov = np.linalg.inv(P)
    logdet_p = 2 * np.sum(np.log(np.einsum("tii->ti", L)), axis=1)
    quad = np.einsum("tn,n->t", w, y * y) + float(np.sum(prec0 * m0 * m0)) - np.einsum("ti,ti->t", mean, rhs)
    log_ev = -0.5 * (np.sum(np.log(2 * np.pi * v), axis=1) - np.sum(np.log(prec0)) + logdet_p + quad)
    return mean, cov, log_ev


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


# --- variable sets -----------------------------------------------------------------------
def _log_vars(analysis: SweepAnalysis) -> dict[str, np.ndarray]:
    out = {}
    for v in SCALE_VARS:
        x = np.array([s.variables()[v] for s in analysis.scales], dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[v] = np.where(np.isfinite(x) & (x > 0), np.log(np.where(x > 0, x, 1.0)), np.nan)
    return out


def admissible_sets(
    logx: Mapping[str, np.ndarray],
    rows: np.ndarray,
    max_vars: int,
    priors: Mapping[str, ExponentPrior] | None = None,
    cache: SetCache | None = None,
) -> list[tuple[str, ...]]:
    """Variable sets that vary across `rows`, are not collinear and span distinct spaces.

    Sets spanning the same space over `rows` (e.g. {n_params, tokens} and {compute, tokens},
    or {width, depth} and {n_params, width} when n_params ∝ depth·width²) are one model
    written twice; the one with the most published priors (then the earlier variables)
    is kept so the average does not count a model twice.
    """
    priors = priors or {}
    key0 = (rows.tobytes(), max_vars, tuple(v for v, p in sorted(priors.items()) if p.published))
    if cache is not None and key0 in cache:
        return cache[key0]
    varying = [v for v in SCALE_VARS if np.all(np.isfinite(logx[v][rows])) and np.ptp(logx[v][rows]) > 1e-3]
    by_span: dict[tuple[Any, ...], tuple[str, ...]] = {}
    for k in range(1, max_vars + 1):
        for combo in itertools.combinations(varying, k):
            Z = np.stack([logx[v][rows] for v in combo], axis=1)
            Z = Z - Z.mean(axis=0)
            if np.linalg.matrix_rank(Z, tol=1e-8) < k or _collinear(Z):
                continue
            # The span's projector, rounded, identifies the space.
            Q = np.linalg.qr(Z)[0]
            key = (k, tuple(np.round(Q @ Q.T, 6).ravel()))
            rank = (-sum(priors.get(v, VAGUE).published for v in combo), [SCALE_VARS.index(v) for v in combo])
            old = by_span.get(key)
            if old is None or rank < (
                -sum(priors.get(v, VAGUE).published for v in old),
                [SCALE_VARS.index(v) for v in old],
            ):
                by_span[key] = combo
    out = list(by_span.values())
    if cache is not None:
        cache[key0] = out
    return out


def _collinear(Z: np.ndarray) -> bool:
    """Whether some column of centred Z has R² > COLLINEAR_R2 on the others (R²_j = 1 − 1/VIF_j)."""
    if Z.shape[1] < 2:
        return False
    C = np.corrcoef(Z, rowvar=False)
    try:
        vif = np.diag(np.linalg.inv(C))
    except np.linalg.LinAlgError:
        return True
    return bool(np.any(1.0 - 1.0 / np.maximum(vif, 1e-12) > COLLINEAR_R2))


@dataclass(frozen=True)
class _Average:
    """A model average fitted on some rows: what backtests and the final law both need."""

    sets: tuple[tuple[str, ...], ...]
    centre: dict[str, float]
    means: tuple[np.ndarray, ...]  # per set: (T, 1 + k_set)
    covs: tuple[np.ndarray, ...]  # per set: (T, 1 + k_set, 1 + k_set)
    log_w: np.ndarray  # (M, T) normalised log weights
    log_ev: np.ndarray  # (M,) log evidence marginalised over τ

    def predict(self, logx: Mapping[str, np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mixture mean and predictive variance (law + τ²) of log h* at `rows`."""
        w = np.exp(self.log_w)
        mean = np.zeros(rows.size)
        second = np.zeros(rows.size)
        for m, combo in enumerate(self.sets):
            X = _design(logx, rows, combo, self.centre)
            mu = self.means[m] @ X.T  # (T, n)
            var = np.einsum("ni,tij,nj->tn", X, self.covs[m], X) + TAU_GRID[:, None] ** 2
            mean += np.einsum("t,tn->n", w[m], mu)
            second += np.einsum("t,tn->n", w[m], var + mu * mu)
        return mean, np.maximum(second - mean * mean, 0.0)


def _design(
    logx: Mapping[str, np.ndarray], rows: np.ndarray, combo: Sequence[str], centre: Mapping[str, float]
) -> np.ndarray:
    return np.column_stack([np.ones(rows.size)] + [logx[v][rows] - centre[v] for v in combo])


def fit_average(
    logx: Mapping[str, np.ndarray],
    rows: np.ndarray,
    y: np.ndarray,
    se2: np.ndarray,
    priors: Mapping[str, ExponentPrior],
    sets: Sequence[tuple[str, ...]],
) -> _Average:
    """Posterior of every variable set × τ on `rows`, weighted by evidence × prior.

    Sets are a priori equally likely, except that leaving out a variable that varies and has
    a published prior asserts its exponent is exactly 0: that costs the prior's density
    ratio at 0, exp(−½(mean/sd)²) (e^−4 for the learning rate's N^−0.71 ± 0.25; nothing for
    the batch's N^0 ± 0.15).
    """
    varying = [v for v in priors if v in logx and np.all(np.isfinite(logx[v][rows])) and np.ptp(logx[v][rows]) > 1e-3]
    used = sorted({v for s in sets for v in s}, key=SCALE_VARS.index)
    centre = {v: float(np.mean(logx[v][rows])) for v in used}
    means, covs, log_ev = [], [], []
    for combo in sets:
        X = _design(logx, rows, combo, centre)
        pr = [priors.get(v, VAGUE) for v in combo]
        m0 = np.array([float(np.mean(y))] + [p.mean for p in pr])
        prec0 = np.array([1.0 / CONSTANT_SD**2] + [1.0 / p.sd**2 for p in pr])
        mu, cov, ev = posterior(X, y, se2, m0, prec0)
        means.append(mu)
        covs.append(cov)
        omitted = sum(
            0.5 * (priors[v].mean / priors[v].sd) ** 2
            for v in varying
            if v not in combo and priors[v].published and not _implied(v, combo)
        )
        log_ev.append(ev + _LOG_TAU_PRIOR - omitted)
    le = np.array(log_ev)
    log_w = le - _logsumexp(le.ravel())
    per_set = np.array([_logsumexp(r) for r in le])
    return _Average(tuple(sets), centre, tuple(means), tuple(covs), log_w, per_set)


def _implied(v: str, combo: Sequence[str]) -> bool:
    """Whether `combo` carries v's effect through compute = 6·N·D (or N, D through compute)."""
    return (v in ("n_params", "tokens") and "compute" in combo) or (
        v == "compute" and bool({"n_params", "tokens"} & set(combo))
    )


def _logsumexp(a: np.ndarray) -> float:
    m = float(np.max(a))
    return m + math.log(float(np.sum(np.exp(a - m))))


# --- backtests ---------------------------------------------------------------------------
def forward_splits(
    logx: Mapping[str, np.ndarray], rows: np.ndarray, min_train: int = MIN_SCALES_WITH_PRIORS
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) row splits holding out the largest scales along n_params, tokens and compute in turn."""
    out: list[tuple[np.ndarray, np.ndarray]] = []
    seen = set()
    for v in ("n_params", "tokens", "compute"):
        x = logx[v][rows]
        if not np.all(np.isfinite(x)) or np.ptp(x) <= 1e-3:
            continue
        test = x >= x.max() - 1e-3
        if np.count_nonzero(~test) < min_train or tuple(test) in seen:
            continue
        seen.add(tuple(test))
        out.append((rows[~test], rows[test]))
    return out


def _refit_predict(
    logx: Mapping[str, np.ndarray],
    train: np.ndarray,
    test: np.ndarray,
    y_all: np.ndarray,
    se2_all: np.ndarray,
    priors: Mapping[str, ExponentPrior],
    max_vars: int,
    cache: SetCache,
) -> tuple[np.ndarray, np.ndarray] | None:
    sets = admissible_sets(logx, train, min(max_vars, max(train.size - 1, 1)), priors, cache)
    if not sets:
        return None
    avg = fit_average(logx, train, y_all[train], se2_all[train], priors, sets)
    return avg.predict(logx, test)


def backtest(
    logx: Mapping[str, np.ndarray],
    rows: np.ndarray,
    y_all: np.ndarray,
    se2_all: np.ndarray,
    priors: Mapping[str, ExponentPrior],
    max_vars: int,
    cache: SetCache | None = None,
) -> tuple[float | None, float | None, float]:
    """(forward RMS error, leave-one-scale-out RMS error, calibration factor) of the whole procedure."""
    cache = {} if cache is None else cache
    errs, z2 = [], []
    for train, test in forward_splits(logx, rows):
        got = _refit_predict(logx, train, test, y_all, se2_all, priors, max_vars, cache)
        if got is None:
            continue
        mean, var = got
        e = mean - y_all[test]
        errs.extend(e.tolist())
        z2.extend((e * e / (var + se2_all[test])).tolist())
    forward = float(np.sqrt(np.mean(np.square(errs)))) if errs else None
    calibration = math.sqrt((sum(z2) + CALIBRATION_PRIOR_N) / (len(z2) + CALIBRATION_PRIOR_N))
    calibration = min(max(calibration, MIN_CALIBRATION), MAX_CALIBRATION)
    cv = None
    if rows.size >= MIN_SCALES:
        folds = rows if rows.size <= MAX_CV_FOLDS else rows[np.linspace(0, rows.size - 1, MAX_CV_FOLDS).astype(int)]
        cv_errs = []
        for r in folds:
            got = _refit_predict(logx, rows[rows != r], np.array([r]), y_all, se2_all, priors, max_vars, cache)
            if got is not None:
                cv_errs.append(float(got[0][0] - y_all[r]))
        cv = float(np.sqrt(np.mean(np.square(cv_errs)))) if cv_errs else None
    return forward, cv, calibration


# --- the laws of a study -----------------------------------------------------------------
def law_for_axis(
    analysis: SweepAnalysis,
    j: int,
    logx: Mapping[str, np.ndarray],
    priors: Mapping[str, ExponentPrior],
    forced: Sequence[str] | None = None,
    cache: SetCache | None = None,
) -> PowerLaw | str:
    """The averaged power law of axis j from the per-scale optima, or why there is none."""
    axis = analysis.axes[j]
    rows = np.flatnonzero(np.isfinite(analysis.centre[:, j]))
    has_prior = any(p.published for p in priors.values())
    need = MIN_SCALES_WITH_PRIORS if has_prior else MIN_SCALES
    if rows.size < need:
        return f"{AXIS_LABEL[axis]} is swept at only {rows.size} scale(s); need ≥ {need} to fit a law"
    if forced is not None:
        sets = [tuple(forced)]
    else:
        sets = admissible_sets(logx, rows, min(MAX_VARIABLES, max(rows.size - 1, 1)), priors, cache)
        if not has_prior:
            sets = [s for s in sets if len(s) <= rows.size - 2]
    if not sets:
        return (
            f"{AXIS_LABEL[axis]}: the {rows.size} scales where it is swept do not vary in any of "
            f"{', '.join(SCALE_VARS)} independently; need scales that differ in size or tokens"
        )
    y_all = analysis.centre[:, j]
    se = analysis.centre_se[:, j]
    fill = np.nanmax(se[rows]) if np.any(np.isfinite(se[rows])) else 0.1
    se_all = np.maximum(np.where(np.isfinite(se), se, fill), _beyond_good_runs(analysis, j))
    se2_all = se_all**2
    avg = fit_average(logx, rows, y_all[rows], se2_all[rows], priors, sets)
    union, components, models = _mixture(avg, sets)

    forward, cv, calibration = (
        (None, None, 1.0) if forced is not None else backtest(logx, rows, y_all, se2_all, priors, MAX_VARIABLES, cache)
    )
    centre = tuple(avg.centre[v] for v in union)
    law = PowerLaw(
        axis,
        union,
        centre,
        tuple(components),
        tuple(models),
        {v: priors.get(v, VAGUE) for v in union},
        math.nan,
        cv,
        forward,
        calibration,
        int(rows.size),
        {
            v: (float(np.exp(logx[v][rows].min())), float(np.exp(logx[v][rows].max())))
            for v in SCALE_VARS
            if np.all(np.isfinite(logx[v][rows]))
        },
    )
    object.__setattr__(law, "r2", _weighted_r2(law, logx, rows, y_all[rows], se2_all[rows]))
    return law


def _mixture(avg: _Average, sets: Sequence[tuple[str, ...]]) -> tuple[tuple[str, ...], list[Component], list[LawModel]]:
    """The average as a mixture over the union of its variables: (union, components, models).

    Variable sets below MIN_MODEL_WEIGHT are dropped (the heaviest is always kept) and the
    rest renormalised; each kept (set, τ) pair with weight ≥ 1e-6 becomes one component
    whose coefficients on the set's absent variables are 0.
    """
    w_set = np.exp(np.array([_logsumexp(r) for r in avg.log_w]))
    keep = [m for m in range(len(sets)) if w_set[m] >= MIN_MODEL_WEIGHT] or [int(np.argmax(w_set))]
    union = tuple(v for v in SCALE_VARS if any(v in sets[m] for m in keep))
    idx = {v: 1 + i for i, v in enumerate(union)}
    components: list[Component] = []
    models: list[LawModel] = []
    for new, m in enumerate(sorted(keep, key=lambda m: -w_set[m])):
        combo = sets[m]
        pos = [0] + [idx[v] for v in combo]
        for t in range(TAU_GRID.size):
            wt = float(np.exp(avg.log_w[m, t]))
            if wt < 1e-6:
                continue
            mean = np.zeros(1 + len(union))
            cov = np.zeros((1 + len(union),) * 2)
            mean[pos] = avg.means[m][t]
            cov[np.ix_(pos, pos)] = avg.covs[m][t]
            components.append(Component(wt, float(TAU_GRID[t]), mean, cov, new))
        models.append(LawModel(combo, float(w_set[m]), float(avg.log_ev[m])))
    total = sum(mo.weight for mo in models)
    models = [LawModel(mo.variables, mo.weight / total, mo.log_evidence) for mo in models]
    return union, components, models


def _weighted_r2(
    law: PowerLaw, logx: Mapping[str, np.ndarray], rows: np.ndarray, y: np.ndarray, se2: np.ndarray
) -> float:
    """R² of the averaged law's mean over the optima `y`, weighted by their total variance (se² + τ²)."""
    pred = np.array([law.predict_log({v: math.exp(logx[v][r]) for v in law.variables}, n=1)[0] for r in rows])
    w = 1.0 / (se2 + law.scatter**2)
    ybar = np.sum(w * y) / np.sum(w)
    ss_tot = float(np.sum(w * (y - ybar) ** 2))
    return 1.0 - float(np.sum(w * (y - pred) ** 2)) / ss_tot if ss_tot > 0 else math.nan


def _beyond_good_runs(analysis: SweepAnalysis, j: int) -> np.ndarray:
    """Per scale, how far (log units) the optimum lies outside the range of its near-optimal runs.

    An optimum placed beyond every good run (an unbracketed sweep, a bowl the runs barely
    curve) is a bound more than a value: its standard error is at least that distance, so
    one such scale cannot drag a law.
    """
    axis = analysis.axes[j]
    out = np.zeros(len(analysis.scales))
    offset = analysis.wd_offset if axis == "weight_decay" else 0.0
    for s, opt in enumerate(analysis.optima):
        near = opt.near_optimal.get(axis)
        c = analysis.centre[s, j]
        if near is None or not np.isfinite(c) or near[0] + offset <= 0:
            continue
        lo, hi = math.log(near[0] + offset), math.log(near[1] + offset)
        out[s] = max(0.0, lo - c, c - hi)
    return out


def fit_laws(
    analysis: SweepAnalysis,
    *,
    bootstrap: int = 200,
    seed: int = 0,
    priors: Mapping[str, Mapping[str, ExponentPrior]] | None = None,
    variables: Mapping[str, Sequence[str]] | None = None,
) -> LawSet:
    """The averaged power law of every swept axis, and the bowl shape with scale-bootstrap samples.

    log h*_a = c_a + Σ a_aj (log x_j − m_j) per axis (see the module docstring).
    `priors` maps axis → variable → prior (absent: vague); `variables` forces an axis's
    variable set (backtests of fixed forms).
    """
    missing: dict[str, str] = {}
    if analysis.bowl is None or analysis.data is None:
        for a in ("learning_rate", "batch_size", "weight_decay"):
            missing[a] = f"{AXIS_LABEL[a]} is not swept over ≥ 3 values at any scale"
        return LawSet({}, None, missing)
    logx = _log_vars(analysis)
    laws: dict[str, PowerLaw] = {}
    cache: SetCache = {}  # admissible variable sets per row subset, shared by the axes' backtests
    for j, axis in enumerate(analysis.axes):
        forced = None if variables is None else variables.get(axis)
        got = law_for_axis(analysis, j, logx, (priors or {}).get(axis, {}), forced, cache)
        if isinstance(got, str):
            missing[axis] = got
        else:
            laws[axis] = got
    for a in ("learning_rate", "batch_size", "weight_decay"):
        if a not in analysis.axes and a not in missing:
            missing[a] = f"{AXIS_LABEL[a]} is not swept over ≥ 3 values at any scale; no optimum to fit a law to"
    shape = _bowl_shape(analysis.bowl, analysis, bootstrap, seed) if laws else None
    return LawSet(laws, shape, missing)


def _bowl_shape(fit: BowlSolution, analysis: SweepAnalysis, bootstrap: int, seed: int) -> BowlShape:
    """The shared curvature with samples from a bootstrap over scales (one Gauss–Newton step each)."""
    S = len(analysis.scales)
    B = max(int(bootstrap), 0)
    d = len(analysis.axes)
    data = analysis.data
    assert data is not None  # fit_laws returns before this when nothing was swept
    cross = data.cross
    tri = [(j, k) for j in range(d) for k in range(j + 1) if j == k or cross[j, k]]
    if B:
        counts = np.random.default_rng(seed).multinomial(S, np.full(S, 1.0 / S), size=B).astype(float)
        samples = one_step_bootstrap(fit, data.scale, counts)
    else:
        samples = np.zeros((0, fit.params.size))
    base = fit.params.size - len(tri) - d
    L = np.zeros((samples.shape[0], d, d))
    for c, (j, k) in enumerate(tri):
        v = samples[:, base + c]
        L[:, j, k] = np.exp(v) if j == k else v
    H_s = L @ np.transpose(L, (0, 2, 1))
    return BowlShape(
        analysis.axes, fit.hessian, fit.kappa, H_s, samples[:, base + len(tri) :], cross, analysis.wd_offset
    )

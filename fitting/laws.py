"""Power laws for the optimal hyperparameters: Bayesian regression on the per-scale optima.

Model, per hyperparameter: log h*_s = c + Σ_{v∈V} a_v (log x_{s,v} − m_v) + e_s, e_s ~ N(0, se_s² + τ²),
with V the parameterization's law variables (`fitting.published.law_basis`: n_params, tokens and
the aspect ratio width/depth for SP; width, depth and tokens for the μP family), se_s the
per-scale optimum's standard error, τ the scatter of optima around the law, c flat.

- **Priors that yield.** Each a_v has a two-component Gaussian mixture prior
  (`fitting.published.ExponentPrior`): a published centre with its spread plus a heavy tail, or,
  where nothing published applies, "no effect" or "free". Every combination of components is a
  Gaussian linear model whose posterior and evidence are closed-form for each τ on a grid
  (half-normal prior on τ); the law is the evidence-weighted mixture. A study whose scales
  contradict a published exponent puts its weight on the tail and ends at its own data; the
  fit reports per exponent how far data and prior disagree and which component won.
- **Every variable, identified or not.** All law variables stay in the model even when the
  proxies never moved one (or moved it only together with another): the posterior along such a
  direction is the prior, so the interval at a target that moves it widens with the distance,
  instead of an average over variable subsets extrapolating along a direction no data saw.
- **Bounds are bounds.** A scale whose optimum lies at the edge of its sweep (or is capped by a
  divergence, or not resolved) is a censored observation, lo ≤ log h*_s ≤ hi, not a measurement:
  its likelihood P(lo < law + e < hi) enters through expectation propagation (a Gaussian site per
  bound, matched to the tilted moments; the evidence includes each site's normaliser).
- **Backtests.** `forward_error` refits without the largest scales (along n_params, tokens and
  compute in turn) and predicts them; `cv_error` leaves one scale out at a time. The RMS of the
  forward misses in units of their own predictive spread scales every interval of the law
  (`calibration`, shrunk toward 1, in [0.7, 3]).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import log_ndtr

from fitting.common import AXIS_LABEL, SCALE_VARS, FloatArray, Interval
from fitting.optima import SweepAnalysis
from fitting.published import CONSTANT_SD, DEFAULT, ExponentPrior
from fitting.surface import BowlSolution, one_step_bootstrap

# A law needs this many scales with an optimum (measured, or a bound), at least one measured.
MIN_SCALES = 2
# Between-scale scatter τ (log units): grid and half-normal prior scale. Optima of real
# sweeps scatter around their law by a few percent to ~20% (Step Law's residuals ~5–10%).
TAU_GRID = np.array([0.0, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.45, 0.7])
TAU_PRIOR_SCALE = 0.15
# Mixture components (prior combination × τ) lighter than this are dropped from the law.
MIN_COMPONENT_WEIGHT = 1e-5
# Calibration from forward backtests: the factor is shrunk toward 1 as if ν0 forecasts had
# missed by exactly their predictive spread, and kept in [MIN_CALIBRATION, MAX_CALIBRATION].
CALIBRATION_PRIOR_N = 3.0
MAX_CALIBRATION = 3.0
MIN_CALIBRATION = 0.7
# Leave-one-scale-out is capped at this many held-out scales (evenly spread) for speed.
MAX_CV_FOLDS = 24
PREDICTIVE_SAMPLES = 2000
# Expectation propagation for censored optima: sweeps and damping.
EP_SWEEPS = 12
EP_DAMPING = 0.7
# A scale's optimum is not a measurement when a coupled axis's centre lies more than this many grid
# steps beyond that axis's sweep (the joint optimum was extrapolated along the valley).
MAX_COUPLED_OVERSHOOT = 1.0
# A published exponent whose heavy tail carries more than this posterior weight "lost" to the data.
CONFLICT_SHARE = 0.5
_SYMBOL = {"learning_rate": "lr*", "batch_size": "bs*", "weight_decay": "wd*"}


# --- observations --------------------------------------------------------------------------
@dataclass(frozen=True)
class LawObservations:
    """What the per-scale stage knows of one axis's optimum at each scale (log units, rows = scales).

    Row s is a measurement y ± se when `lo`, `hi` are NaN, a bound lo ≤ log h* ≤ hi (either side
    may be infinite; `se` then is the bound's softness) when they are not, and absent when
    everything is NaN.
    """

    y: np.ndarray
    se: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @property
    def measured(self) -> np.ndarray:
        m: np.ndarray = np.isfinite(self.y) & np.isnan(self.lo) & np.isnan(self.hi)
        return m

    @property
    def censored(self) -> np.ndarray:
        c: np.ndarray = ~np.isnan(self.lo) | ~np.isnan(self.hi)
        return c

    @property
    def rows(self) -> np.ndarray:
        r: np.ndarray = np.flatnonzero(self.measured | self.censored)
        return r


@dataclass(frozen=True)
class Component:
    """One term of the mixture: coefficients over (1, variables) ~ N(mean, cov), scatter τ."""

    weight: float
    tau: float
    mean: np.ndarray
    cov: np.ndarray
    model: int  # index of the prior combination
    tails: tuple[bool, ...] = ()  # per variable: whether this combination uses the tail ("free") component

    def to_state(self) -> dict[str, Any]:
        return {
            "weight": self.weight,
            "tau": self.tau,
            "mean": self.mean.tolist(),
            "cov": self.cov.tolist(),
            "model": self.model,
            "tails": list(self.tails),
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
            tuple(bool(t) for t in d.get("tails", ())),
        )


@dataclass(frozen=True)
class LawModel:
    """The variable set of the law, with its evidence (one per law since the mixture-prior engine)."""

    variables: tuple[str, ...]
    weight: float
    log_evidence: float

    def to_dict(self) -> dict[str, Any]:
        return {"variables": list(self.variables), "weight": self.weight, "log_evidence": self.log_evidence}


@dataclass(frozen=True)
class ExponentReport:
    """How data and prior shaped one exponent: the tail's (or free component's) posterior share,
    the data's own estimate (under that component) and its distance from the published centre."""

    tail_share: float
    data_mean: float
    data_sd: float
    conflict: float  # (data_mean − prior mean) / √(prior sd² + data sd²); NaN without a published prior
    centre_sd: float = math.nan  # posterior sd under the prior's centre component (what the data left of its spread)

    def data_share(self, prior_sd: float) -> float:
        """Share of the posterior precision that is the data's: 1 when the tail won, else 1 − (centre sd / prior sd)²."""
        if self.tail_share > CONFLICT_SHARE or math.isnan(self.centre_sd):
            return 1.0
        return max(0.0, 1.0 - (self.centre_sd / prior_sd) ** 2)

    def to_dict(self) -> dict[str, float | None]:
        return {
            "tail_share": self.tail_share,
            "data_mean": self.data_mean,
            "data_sd": self.data_sd,
            "conflict": None if math.isnan(self.conflict) else self.conflict,
        }


@dataclass(frozen=True, eq=False)
class PowerLaw:
    """log h* = c + Σ a_j (log x_j − m_j) for one hyperparameter: a mixture over prior components and τ.

    `calibration` multiplies every predictive deviation from the mean.
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
    method: str = "Bayesian regression on the per-scale optima (bounds censored) with mixture priors on the exponents"
    n_bounds: int = 0
    prior_notes: tuple[str, ...] = ()
    _weights: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        w = np.array([c.weight for c in self.components])
        object.__setattr__(self, "_weights", w / w.sum())

    # --- coefficients --------------------------------------------------------------------
    @property
    def coef(self) -> FloatArray:
        """Posterior mean of (c, a_1, …)."""
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
        # a₁, a₂, …: the exponents, never the constant's letter c.
        terms = " + ".join(f"a{i + 1}·log {v}" for i, v in enumerate(self.variables))
        return f"log {_SYMBOL[self.axis]} = c" + (f" + {terms}" if terms else "")

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

    def report(self, var: str) -> ExponentReport:
        """Prior–data conflict of one exponent (see ExponentReport)."""
        j = self.variables.index(var)
        tail = np.array([c.tails[j] if len(c.tails) > j else False for c in self.components])
        share = float(self._weights[tail].sum())
        # The data's own estimate: the components that give this exponent its broad (tail / free)
        # prior, weighted by their within-group posterior weights.
        grp = tail if tail.any() else np.ones_like(tail)
        w = self._weights[grp] / self._weights[grp].sum()
        means = np.array([c.mean[1 + j] for c in self.components])[grp]
        var_ = np.array([c.cov[1 + j, 1 + j] for c in self.components])[grp]
        m = float(w @ means)
        sd = float(math.sqrt(max(float(w @ (var_ + (means - m) ** 2)), 0.0)))
        p = self.priors.get(var, DEFAULT)
        conflict = (m - p.mean) / math.sqrt(p.sd**2 + sd**2) if p.published else math.nan
        centre_sd = math.nan
        if (~tail).any():
            wc = self._weights[~tail] / self._weights[~tail].sum()
            mc = np.array([c.mean[1 + j] for c in self.components])[~tail]
            vc = np.array([c.cov[1 + j, 1 + j] for c in self.components])[~tail]
            centre_sd = float(math.sqrt(max(float(wc @ (vc + (mc - wc @ mc) ** 2)), 0.0))) * self.calibration
        return ExponentReport(share, m, sd, conflict, centre_sd)

    def conflicts(self) -> list[tuple[str, ExponentReport]]:
        """Exponents whose published prior lost to the data (the heavy tail carries most weight)."""
        out = []
        for v in self.variables:
            if self.priors.get(v, DEFAULT).published:
                r = self.report(v)
                if r.tail_share > CONFLICT_SHARE:
                    out.append((v, r))
        return out

    # --- prediction ----------------------------------------------------------------------
    def design(self, target: Mapping[str, float]) -> np.ndarray:
        return np.array([1.0] + [math.log(float(target[v])) - m for v, m in zip(self.variables, self.log_centre)])

    def usable_components(self, available: Sequence[str]) -> tuple[np.ndarray, float]:
        """Mixture weights and their share if `available` gives every law variable; zeros and 0 otherwise."""
        if set(self.variables) <= set(available):
            return self._weights.copy(), 1.0
        return self._weights * 0.0, 0.0

    def predict_log(
        self,
        target: Mapping[str, float],
        *,
        seed: int = 0,
        n: int = PREDICTIVE_SAMPLES,
        weights: np.ndarray | None = None,
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """log h* at `target`: posterior mean, draws of the law's mean, draws of the scatter τ·ε.

        Both draw sets include the calibration factor; a predictive draw is their sum. A variable
        absent from `target` is taken at the proxies' centre.
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
        for v in self.variables:
            e: dict[str, Any] = self.exponent(v).to_dict()
            p = self.priors.get(v, DEFAULT)
            rep = self.report(v)
            if p.published:
                e["prior"] = {"mean": p.mean, "sd": p.sd, "tail_weight": p.tail_weight, "tail_sd": p.tail_sd}
                e["prior_source"] = p.source
                # How far the data moved it, in prior standard deviations, and the share of
                # the posterior's precision that comes from the data (0: prior only).
                e["shift"] = (e["value"] - p.mean) / p.sd
                e["data_share"] = rep.data_share(p.sd)
                e["conflict"] = rep.to_dict()
                e["followed"] = "data" if rep.tail_share > CONFLICT_SHARE else "published prior"
            else:
                e["prior"] = None
                e["prior_source"] = DEFAULT.source
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
            "n_bounds": self.n_bounds,
            "scatter": self.scatter,
            "method": self.method,
            "prior_notes": list(self.prior_notes),
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
            {v: ExponentPrior.from_dict(p) for v, p in d.get("priors", {}).items()},
            float(d["r2"]) if d.get("r2") is not None else math.nan,
            None if d.get("cv_error") is None else float(d["cv_error"]),
            None if d.get("forward_error") is None else float(d["forward_error"]),
            float(d.get("calibration", 1.0)),
            int(d["n_scales"]),
            {k: (float(v[0]), float(v[1])) for k, v in d.get("ranges", {}).items()},
            d.get("method", cls.method),
            int(d.get("n_bounds", 0)),
            tuple(d.get("prior_notes", ())),
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


@dataclass(frozen=True)
class LawSpec:
    """What one axis's law is fitted with: its variables and the prior of each (absent: DEFAULT)."""

    variables: tuple[str, ...]
    priors: Mapping[str, ExponentPrior]
    notes: tuple[str, ...] = ()


# --- the Gaussian linear model, with censored rows by expectation propagation ----------------
def _tau_log_prior() -> FloatArray:
    """Log prior mass of each τ grid point: half-normal density × the point's share of the axis."""
    edges = np.concatenate([[0.0], (TAU_GRID[1:] + TAU_GRID[:-1]) / 2, [TAU_GRID[-1] * 1.25]])
    mass = np.exp(-0.5 * (TAU_GRID / TAU_PRIOR_SCALE) ** 2) * np.diff(edges)
    log_mass: FloatArray = np.log(mass / mass.sum())
    return log_mass


_LOG_TAU_PRIOR = _tau_log_prior()


def gaussian_posterior(
    X: np.ndarray, y: np.ndarray, v: np.ndarray, m0: np.ndarray, prec0: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Posterior and log evidence of y = Xb + e, e ~ N(0, diag(v_t)), b ~ N(m0, diag(1/prec0)), per row t of v.

    `y` is (n,) or (T, n), `v` is (T, n). Returns means (T, p), covariances (T, p, p), log evidences (T,).
    """
    Y = np.broadcast_to(y, v.shape)
    w = 1.0 / np.maximum(v, 1e-12)
    P = np.einsum("ni,tn,nj->tij", X, w, X) + np.diag(prec0)[None]
    rhs = np.einsum("ni,tn,tn->ti", X, w, Y) + (prec0 * m0)[None]
    L = np.linalg.cholesky(P)
    cov = np.linalg.inv(P)
    mean = np.einsum("tij,tj->ti", cov, rhs)
    logdet_p = 2 * np.sum(np.log(np.einsum("tii->ti", L)), axis=1)
    quad = np.einsum("tn,tn->t", w, Y * Y) + float(np.sum(prec0 * m0 * m0)) - np.einsum("ti,ti->t", mean, rhs)
    log_ev = -0.5 * (np.sum(np.log(2 * np.pi * np.maximum(v, 1e-12)), axis=1) - np.sum(np.log(prec0)) + logdet_p + quad)
    return mean, cov, log_ev


def _log_normal_pdf(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.where(np.isfinite(x), -0.5 * x * x - 0.5 * math.log(2 * math.pi), -np.inf)
    return out


def tilted_moments(
    mu: np.ndarray, var: np.ndarray, lo: np.ndarray, hi: np.ndarray, s2: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Moments of f ~ N(mu, var) times P(lo < f + e < hi), e ~ N(0, s2): (log Z, mean, variance)."""
    s = np.sqrt(var + s2)
    a = (lo - mu) / s
    b = (hi - mu) / s
    with np.errstate(invalid="ignore", over="ignore"):
        # log(Φ(b) − Φ(a)), accurate in both tails: mirror when the interval lies in the upper tail.
        upper = a > 0
        la = np.where(upper, log_ndtr(-b), log_ndtr(a))
        lb = np.where(upper, log_ndtr(-a), log_ndtr(b))
        log_z = lb + np.log1p(-np.exp(np.minimum(la - lb, -1e-300)))
        log_z = np.where(np.isfinite(log_z), log_z, -745.0)
        ra = np.exp(_log_normal_pdf(a) - log_z)
        rb = np.exp(_log_normal_pdf(b) - log_z)
        ara = np.where(np.isfinite(a), a * ra, 0.0)
        brb = np.where(np.isfinite(b), b * rb, 0.0)
    mean = mu + var / s * (ra - rb)
    v_hat = var - var * var / (s * s) * ((brb - ara) + (ra - rb) ** 2)
    v_hat = np.clip(v_hat, 1e-12, var * (1 - 1e-9))
    return log_z, mean, v_hat


def posterior(
    X: np.ndarray,
    obs: LawObservations,
    rows: np.ndarray,
    m0: np.ndarray,
    prec0: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Posterior of the law's coefficients and log evidence per τ on TAU_GRID, from the measured and censored `rows`.

    X holds the design rows of `rows`. Measured rows are Gaussian: y ~ N(xb, se² + τ²). A censored
    row contributes P(lo < xb + e < hi), e ~ N(0, se² + τ²), approximated by expectation propagation.
    """
    tau2 = TAU_GRID[:, None] ** 2
    meas = obs.measured[rows]
    cens = obs.censored[rows]
    Xm, ym = X[meas], obs.y[rows][meas]
    vm = obs.se[rows][meas] ** 2 + tau2
    if not cens.any():
        return gaussian_posterior(Xm, ym, vm, m0, prec0)
    Xc = X[cens]
    lo = np.where(np.isnan(obs.lo[rows][cens]), -np.inf, obs.lo[rows][cens])
    hi = np.where(np.isnan(obs.hi[rows][cens]), np.inf, obs.hi[rows][cens])
    s2 = obs.se[rows][cens] ** 2 + tau2  # (T, nc)
    T, nc = s2.shape
    site_prec = np.zeros((T, nc))
    site_pm = np.zeros((T, nc))
    for _ in range(EP_SWEEPS):
        mean, cov, _ = _with_sites(Xm, ym, vm, Xc, site_prec, site_pm, m0, prec0)
        f_mu = np.einsum("ni,ti->tn", Xc, mean)
        f_var = np.einsum("ni,tij,nj->tn", Xc, cov, Xc)
        cav_prec = np.maximum(1.0 / f_var - site_prec, 1e-12)
        cav_var = 1.0 / cav_prec
        cav_mu = cav_var * (f_mu / f_var - site_pm)
        _, m_hat, v_hat = tilted_moments(cav_mu, cav_var, lo, hi, s2)
        new_prec = np.maximum(1.0 / v_hat - cav_prec, 0.0)
        new_pm = m_hat / v_hat - cav_mu * cav_prec
        change = float(np.max(np.abs(new_prec - site_prec) / (new_prec + site_prec + 1e-9)))
        site_prec = EP_DAMPING * new_prec + (1 - EP_DAMPING) * site_prec
        site_pm = EP_DAMPING * new_pm + (1 - EP_DAMPING) * site_pm
        if change < 1e-4:
            break
    mean, cov, log_ev = _with_sites(Xm, ym, vm, Xc, site_prec, site_pm, m0, prec0)
    # Each site's normaliser: log Z_i − log N(ỹ_i; cavity mean, cavity var + ṽ_i) (sites ≈ 0 give log Z_i).
    f_mu = np.einsum("ni,ti->tn", Xc, mean)
    f_var = np.einsum("ni,tij,nj->tn", Xc, cov, Xc)
    cav_prec = np.maximum(1.0 / f_var - site_prec, 1e-12)
    cav_var = 1.0 / cav_prec
    cav_mu = cav_var * (f_mu / f_var - site_pm)
    log_z, _, _ = tilted_moments(cav_mu, cav_var, lo, hi, s2)
    live = site_prec > 1e-10
    v_site = np.where(live, 1.0 / np.where(live, site_prec, 1.0), 1.0)
    y_site = np.where(live, site_pm * v_site, 0.0)
    dev = y_site - cav_mu
    log_n = -0.5 * (np.log(2 * np.pi * (cav_var + v_site)) + dev * dev / (cav_var + v_site))
    log_ev = log_ev + np.sum(log_z - np.where(live, log_n, 0.0), axis=1)
    return mean, cov, log_ev


def _with_sites(
    Xm: np.ndarray,
    ym: np.ndarray,
    vm: np.ndarray,
    Xc: np.ndarray,
    site_prec: np.ndarray,
    site_pm: np.ndarray,
    m0: np.ndarray,
    prec0: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Gaussian posterior with each live EP site as a pseudo-observation ỹ = pm/prec of variance 1/prec."""
    live = np.any(site_prec > 1e-10, axis=0)
    if not live.any():
        return gaussian_posterior(Xm, ym, vm, m0, prec0)
    sp = np.maximum(site_prec[:, live], 1e-10)
    X = np.vstack([Xm, Xc[live]])
    y = np.concatenate([np.broadcast_to(ym, vm.shape), site_pm[:, live] / sp], axis=1)
    v = np.concatenate([vm, 1.0 / sp], axis=1)
    return gaussian_posterior(X, y, v, m0, prec0)


# --- the mixture over prior components -----------------------------------------------------
@dataclass(frozen=True)
class _Average:
    """The law fitted on some rows: every prior combination × τ, with normalised log weights."""

    variables: tuple[str, ...]
    centre: dict[str, float]
    tails: np.ndarray  # (K, k) bool: combination K uses the tail ("free") component of variable k
    means: np.ndarray  # (K, T, 1 + k)
    covs: np.ndarray  # (K, T, 1 + k, 1 + k)
    log_w: np.ndarray  # (K, T) normalised
    log_ev: float  # log evidence of the whole mixture

    def predict(self, logx: Mapping[str, np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mixture mean and predictive variance (law + τ²) of log h* at `rows`."""
        X = _design(logx, rows, self.variables, self.centre)
        w = np.exp(self.log_w)
        mu = np.einsum("ktp,np->ktn", self.means, X)
        var = np.einsum("np,ktpq,nq->ktn", X, self.covs, X) + TAU_GRID[None, :, None] ** 2
        mean = np.einsum("kt,ktn->n", w, mu)
        second = np.einsum("kt,ktn->n", w, var + mu * mu)
        return mean, np.maximum(second - mean * mean, 0.0)


def _design(
    logx: Mapping[str, np.ndarray], rows: np.ndarray, variables: Sequence[str], centre: Mapping[str, float]
) -> np.ndarray:
    return np.column_stack([np.ones(rows.size)] + [logx[v][rows] - centre[v] for v in variables])


def fit_average(logx: Mapping[str, np.ndarray], rows: np.ndarray, obs: LawObservations, spec: LawSpec) -> _Average:
    """Posterior of every combination of the exponents' prior components × τ on `rows`, weighted by evidence × prior."""
    variables = spec.variables
    centre = {v: float(np.mean(logx[v][rows])) for v in variables}
    X = _design(logx, rows, variables, centre)
    comps = [spec.priors.get(v, DEFAULT).components() for v in variables]
    meas = obs.measured[rows]
    ybar = float(np.mean(obs.y[rows][meas])) if meas.any() else float(np.nanmean(np.r_[obs.lo[rows], obs.hi[rows]]))
    K = 2 ** len(variables)
    tails = np.array([[(k >> i) & 1 == 1 for i in range(len(variables))] for k in range(K)], dtype=bool).reshape(
        K, len(variables)
    )
    means, covs, log_w = [], [], []
    for k in range(K):
        chosen = [comps[i][int(tails[k, i])] for i in range(len(variables))]
        m0 = np.array([ybar] + [c[1] for c in chosen])
        prec0 = np.array([1.0 / CONSTANT_SD**2] + [1.0 / c[2] ** 2 for c in chosen])
        mu, cov, ev = posterior(X, obs, rows, m0, prec0)
        means.append(mu)
        covs.append(cov)
        log_w.append(ev + _LOG_TAU_PRIOR + sum(math.log(c[0]) for c in chosen))
    lw = np.array(log_w)
    total = _logsumexp(lw.ravel())
    return _Average(variables, centre, tails, np.array(means), np.array(covs), lw - total, total)


def _logsumexp(a: np.ndarray) -> float:
    m = float(np.max(a))
    return m + math.log(float(np.sum(np.exp(a - m))))


# --- backtests ---------------------------------------------------------------------------
def forward_splits(
    logx: Mapping[str, np.ndarray], rows: np.ndarray, obs: LawObservations, min_train: int = MIN_SCALES
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) row splits holding out the largest scales along n_params, tokens and compute in turn.

    Only measured scales are held out (a bound cannot be missed by a number); the training rows
    must keep at least one measurement.
    """
    out: list[tuple[np.ndarray, np.ndarray]] = []
    seen = set()
    for v in ("n_params", "tokens", "compute"):
        x = logx[v][rows]
        if not np.all(np.isfinite(x)) or np.ptp(x) <= 1e-3:
            continue
        test = x >= x.max() - 1e-3
        train = rows[~test]
        if train.size < min_train or not obs.measured[train].any() or tuple(test) in seen:
            continue
        seen.add(tuple(test))
        held = rows[test][obs.measured[rows[test]]]
        if held.size:
            out.append((train, held))
    return out


def backtest(
    logx: Mapping[str, np.ndarray], rows: np.ndarray, obs: LawObservations, spec: LawSpec
) -> tuple[float | None, float | None, float]:
    """(forward RMS error, leave-one-scale-out RMS error, calibration factor) of the whole procedure."""
    errs, z2 = [], []
    for train, test in forward_splits(logx, rows, obs):
        mean, var = fit_average(logx, train, obs, spec).predict(logx, test)
        e = mean - obs.y[test]
        errs.extend(e.tolist())
        z2.extend((e * e / (var + obs.se[test] ** 2)).tolist())
    forward = float(np.sqrt(np.mean(np.square(errs)))) if errs else None
    calibration = math.sqrt((sum(z2) + CALIBRATION_PRIOR_N) / (len(z2) + CALIBRATION_PRIOR_N))
    calibration = min(max(calibration, MIN_CALIBRATION), MAX_CALIBRATION)
    cv = None
    measured = rows[obs.measured[rows]]
    if rows.size >= MIN_SCALES + 1 and measured.size >= 2:
        folds = (
            measured
            if measured.size <= MAX_CV_FOLDS
            else measured[np.linspace(0, measured.size - 1, MAX_CV_FOLDS).astype(int)]
        )
        cv_errs = []
        for r in folds:
            train = rows[rows != r]
            if not obs.measured[train].any():
                continue
            got = fit_average(logx, train, obs, spec).predict(logx, np.array([r]))
            cv_errs.append(float(got[0][0] - obs.y[r]))
        cv = float(np.sqrt(np.mean(np.square(cv_errs)))) if cv_errs else None
    return forward, cv, calibration


# --- the laws of a study -----------------------------------------------------------------
def observations(analysis: SweepAnalysis, j: int) -> LawObservations:
    """Axis j's per-scale optima as measurements (bracketed bowl centres) or bounds (`SweepAnalysis.bounds`)."""
    axis = analysis.axes[j]
    y = analysis.centre[:, j].copy()
    se = analysis.centre_se[:, j].copy()
    lo = analysis.bounds[:, j, 0].copy()
    hi = analysis.bounds[:, j, 1].copy()
    cens = ~np.isnan(lo) | ~np.isnan(hi)
    # Only a bowl centre inside its sweep is a measurement; one beyond it is a bound or nothing. So is
    # a centre coupled (an identified cross term) to another axis whose centre ran more than a grid
    # step beyond its sweep: the joint optimum moves along the valley, and this coordinate was placed
    # at that extrapolation.
    status = [{a: o.optimum[a].status for a in analysis.axes if a in o.optimum} for o in analysis.optima]
    cross = analysis.data.cross if analysis.data is not None else np.zeros((len(analysis.axes),) * 2, bool)
    coupled = [k for k in range(len(analysis.axes)) if k != j and (cross[j, k] or cross[k, j])]
    runaway = np.zeros(len(status), dtype=bool)
    if coupled and analysis.overshoot.size:
        runaway = np.any(np.nan_to_num(analysis.overshoot[:, coupled]) > MAX_COUPLED_OVERSHOOT, axis=1)
    bracketed = np.array([st.get(axis) == "bracketed" for st in status]) & ~runaway
    y[cens | ~bracketed] = np.nan
    se[cens] = analysis.bound_softness[cens, j]
    meas = np.isfinite(y)
    fill = float(np.nanmax(se[meas])) if np.any(meas & np.isfinite(se)) else 0.1
    se = np.where(meas & ~np.isfinite(se), fill, se)
    se = np.where(meas, np.maximum(se, _beyond_good_runs(analysis, j)), se)
    return LawObservations(y, se, lo, hi)


def law_for_axis(
    analysis: SweepAnalysis,
    j: int,
    logx: Mapping[str, np.ndarray],
    spec: LawSpec,
    *,
    backtests: bool = True,
) -> PowerLaw | str:
    """The power law of axis j from the per-scale optima and bounds, or why there is none."""
    axis = analysis.axes[j]
    obs = observations(analysis, j)
    rows = obs.rows
    n_meas = int(obs.measured.sum())
    variables = tuple(v for v in spec.variables if np.all(np.isfinite(logx[v][rows])))
    if rows.size < MIN_SCALES or n_meas < 1:
        return _too_few(analysis, j, obs)
    spec = LawSpec(variables, spec.priors, spec.notes)
    avg = fit_average(logx, rows, obs, spec)
    components, model = _mixture(avg)
    forward, cv, calibration = backtest(logx, rows, obs, spec) if backtests else (None, None, 1.0)
    law = PowerLaw(
        axis,
        variables,
        tuple(avg.centre[v] for v in variables),
        tuple(components),
        (model,),
        {v: spec.priors[v] for v in variables if v in spec.priors},
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
        n_bounds=int(obs.censored.sum()),
        prior_notes=spec.notes,
    )
    meas = rows[obs.measured[rows]]
    object.__setattr__(law, "r2", _weighted_r2(law, logx, meas, obs.y[meas], obs.se[meas] ** 2))
    return law


def _too_few(analysis: SweepAnalysis, j: int, obs: LawObservations) -> str:
    """Why axis j has no law: how many scales sweep it, how many of them resolve an optimum, what to run."""
    axis = analysis.axes[j]
    n_meas, n_bound = int(obs.measured.sum()), int(obs.censored.sum())
    swept = sum(1 for o in analysis.optima if axis in o.optimum and o.optimum[axis].status != "not_swept")
    what = f"{AXIS_LABEL[axis]} is swept at {swept} scale(s)"
    if n_bound:
        what += f"; at {n_bound} of them the optimum is only a bound (best run at the sweep's edge or not resolved)"
    unresolved = swept - n_meas - n_bound
    if unresolved:
        what += (
            f"; at {unresolved} the loss surface puts the optimum beyond the sweep in coupled hyperparameters "
            "(no single one bounds it)"
        )
    if n_meas < 1 and swept:
        return f"{what}; need the optimum bracketed (a worse run on each side of the best) at ≥ 1 scale"
    return (
        f"{what}; need ≥ {MIN_SCALES} scales with an optimum to fit a law: sweep it at another model size "
        "or token budget, around where its best runs were"
    )


def _mixture(avg: _Average) -> tuple[list[Component], LawModel]:
    """The average as a list of components (prior combination × τ) above MIN_COMPONENT_WEIGHT, renormalised."""
    w = np.exp(avg.log_w)
    keep = np.argwhere(w >= MIN_COMPONENT_WEIGHT * w.max())
    total = float(sum(w[k, t] for k, t in keep))
    comps = [
        Component(
            float(w[k, t] / total),
            float(TAU_GRID[t]),
            avg.means[k, t],
            avg.covs[k, t],
            int(k),
            tuple(bool(x) for x in avg.tails[k]),
        )
        for k, t in keep
    ]
    return comps, LawModel(avg.variables, 1.0, avg.log_ev)


def _weighted_r2(
    law: PowerLaw, logx: Mapping[str, np.ndarray], rows: np.ndarray, y: np.ndarray, se2: np.ndarray
) -> float:
    """R² of the law's mean over the measured optima `y`, weighted by their total variance (se² + τ²)."""
    if rows.size < 2:
        return math.nan
    pred = np.array([law.predict_log({v: math.exp(logx[v][r]) for v in law.variables}, n=1)[0] for r in rows])
    w = 1.0 / (se2 + law.scatter**2)
    ybar = np.sum(w * y) / np.sum(w)
    ss_tot = float(np.sum(w * (y - ybar) ** 2))
    return 1.0 - float(np.sum(w * (y - pred) ** 2)) / ss_tot if ss_tot > 0 else math.nan


def _beyond_good_runs(analysis: SweepAnalysis, j: int) -> np.ndarray:
    """Per scale, how far (log units) the optimum lies outside the range of its near-optimal runs.

    An optimum placed beyond every good run (a bowl the runs barely curve) is less a value than
    its standard error says: its standard error is at least that distance.
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


def log_scale_variables(analysis: SweepAnalysis) -> dict[str, np.ndarray]:
    """log of every scale variable per scale (NaN where unknown)."""
    out = {}
    for v in SCALE_VARS:
        x = np.array([s.variables()[v] for s in analysis.scales], dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[v] = np.where(np.isfinite(x) & (x > 0), np.log(np.where(x > 0, x, 1.0)), np.nan)
    return out


def fit_laws(
    analysis: SweepAnalysis,
    specs: Mapping[str, LawSpec],
    *,
    bootstrap: int = 200,
    seed: int = 0,
    backtests: bool = True,
) -> LawSet:
    """The power law of every swept axis, and the bowl shape with scale-bootstrap samples.

    log h*_a = c_a + Σ a_aj (log x_j − m_j) per axis (see the module docstring); `specs` gives
    each axis's variables and priors.
    """
    missing: dict[str, str] = {}
    if analysis.bowl is None or analysis.data is None:
        for a in ("learning_rate", "batch_size", "weight_decay"):
            missing[a] = f"{AXIS_LABEL[a]} is not swept over ≥ 3 values at any scale"
        return LawSet({}, None, missing)
    logx = log_scale_variables(analysis)
    laws: dict[str, PowerLaw] = {}
    for j, axis in enumerate(analysis.axes):
        got = law_for_axis(analysis, j, logx, specs[axis], backtests=backtests)
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

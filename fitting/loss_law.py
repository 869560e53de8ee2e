"""Chinchilla-style loss law L(N, D) = E + A/N^alpha + B/D^beta (RULES.md §5).

The fit follows Hoffmann et al. (2022) as replicated by Besiroglu et al. (Epoch,
arXiv 2404.10102): minimise the *sum* of Huber_δ(LSE(a − α log N, b − β log D, e) − log L)
with δ = 1e-3 by L-BFGS-B from a grid of starting points, with A = eᵃ, B = eᵇ, E = eᵉ.
Uncertainty comes from a nonparametric bootstrap over the points.

Speed: the full grid (α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5, …, 1}, a, b ∈ {0, 5, …, 25},
4,500 starts) is evaluated in one vectorised pass; the `polish` (default 64) starts with the
lowest grid objective are run together through a batched damped Newton screen
(`_newton_batch`, exact 5×5 Hessians), and the `LBFGS_STARTS` (4) starts whose screen
ended lowest are refined by L-BFGS-B with an analytic gradient. On the shared Chinchilla
points (5 highest-loss dropped) polishing all 4,500 starts reaches objective 1.018274e-3
from 1,514 of them, and this path returns the same parameters to 1e-7
(`tests/test_fitting_loss_transfer.py` re-checks it against other starts).

Bootstrap: every resample is the point problem with multinomial weights, so all of them
are refitted at once by the same batched Newton from the point estimate; only resamples
it does not converge on get the per-resample L-BFGS-B refit. On Chinchilla this gives the
L-BFGS-B bootstrap's intervals to ~1e-6 relative, about 30× faster.

Threads: L-BFGS-B still calls scipy's OpenBLAS. With its default thread pool on busy
cores a fit was 8–25× slower in our measurements, so run processes that fit with
OPENBLAS_NUM_THREADS=1 (`bench/fit.py` does; `hpscale serve` should).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import OptimizeResult, minimize

from fitting.common import LEVEL as INTERVAL_LEVEL
from fitting.common import FloatArray, InsufficientData, Interval
from fitting.published import FLOPS_PER_PARAM_TOKEN

FORM = "L = E + A/N^alpha + B/D^beta"
PARAM_NAMES: tuple[str, ...] = ("E", "A", "B", "alpha", "beta")
HUBER_DELTA = 1e-3
MIN_POINTS = 5
MAX_STORED_SAMPLES = 200
DEFAULT_POLISH = 64
# Default L-BFGS-B tolerances stop a warm-started bootstrap refit after a dozen steps,
# long before the tiny Huber gradients (δ = 1e-3) have settled.
_LBFGS_OPTIONS = {"ftol": 1e-14, "gtol": 1e-10, "maxiter": 10_000}
NEWTON_MAX_ITER = 200
# Bootstrap refits whose Newton steps do not settle: more than this share of them means the
# objective has a flat valley (B/D^beta trading B against beta, say) and the law is refused;
# fewer are re-polished by L-BFGS-B within a total iteration budget (a few hundred each on
# identified data; a valley took 28,000 over 184 refits and 3 s at a million runs).
UNSETTLED_SHARE = 0.25
BOOTSTRAP_POLISH_BUDGET = 20_000
# Grid starts refined by L-BFGS-B after the batched Newton screen ranks all `polish` of them.
LBFGS_STARTS = 4


def _log_params(params: Mapping[str, float]) -> np.ndarray:
    return np.array(
        [math.log(params["A"]), math.log(params["B"]), math.log(params["E"]), params["alpha"], params["beta"]]
    )


def _theta_to_params(theta: np.ndarray) -> np.ndarray:
    """(…, 5) internal [a, b, e, alpha, beta] → (…, 5) [E, A, B, alpha, beta]."""
    theta = np.asarray(theta, dtype=float)
    return np.stack(
        [np.exp(theta[..., 2]), np.exp(theta[..., 0]), np.exp(theta[..., 1]), theta[..., 3], theta[..., 4]],
        axis=-1,
    )


def _params_to_theta(params: np.ndarray) -> np.ndarray:
    params = np.asarray(params, dtype=float)
    return np.stack(
        [np.log(params[..., 1]), np.log(params[..., 2]), np.log(params[..., 0]), params[..., 3], params[..., 4]],
        axis=-1,
    )


def _log_predict(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """log L = LSE(a − α log N, b − β log D, e); theta (K, 5), points (P,) → (K, P)."""
    theta = np.atleast_2d(theta)
    z1 = theta[:, [0]] - theta[:, [3]] * log_n
    z2 = theta[:, [1]] - theta[:, [4]] * log_d
    z3 = np.broadcast_to(theta[:, [2]], z1.shape)
    m = np.maximum(np.maximum(z1, z2), z3)
    out: FloatArray = m + np.log(np.exp(z1 - m) + np.exp(z2 - m) + np.exp(z3 - m))
    return out


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    out: FloatArray = np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))
    return out


def _objective_and_grad(
    theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float
) -> tuple[float, np.ndarray]:
    """Σ Huber_δ(LSE(a − α log N, b − β log D, e) − log L) and its exact gradient."""
    a, b, e, alpha, beta = theta
    z = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    m = z.max(axis=0)
    w = np.exp(z - m)
    s = w.sum(axis=0)
    w /= s
    r = m + np.log(s) - log_l
    g = np.clip(r, -delta, delta)  # Huber'(r)
    gw0, gw1 = g * w[0], g * w[1]
    grad = np.array([gw0.sum(), gw1.sum(), (g * w[2]).sum(), -(gw0 * log_n).sum(), -(gw1 * log_d).sum()])
    return float(_huber(r, delta).sum()), grad


def initial_grid() -> np.ndarray:
    """RULES.md §5 starting grid as rows [a, b, e, alpha, beta] (4,500 rows)."""
    a = np.arange(0.0, 25.0 + 1e-9, 5.0)
    e = np.arange(-1.0, 1.0 + 1e-9, 0.5)
    ab = np.arange(0.0, 2.0 + 1e-9, 0.5)
    return np.array(list(itertools.product(a, a, e, ab, ab)), dtype=float)


def _polish(
    theta0: np.ndarray,
    log_n: np.ndarray,
    log_d: np.ndarray,
    log_l: np.ndarray,
    delta: float,
    maxiter: int = int(_LBFGS_OPTIONS["maxiter"]),
) -> OptimizeResult:
    return minimize(
        _objective_and_grad,
        theta0,
        args=(log_n, log_d, log_l, delta),
        jac=True,
        method="L-BFGS-B",
        options={**_LBFGS_OPTIONS, "maxiter": maxiter},
    )


def _batch_derivs(
    theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, w: np.ndarray, delta: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Σ_i w_ki Huber_δ(r_ki), its gradient (K, 5) and exact Hessian (K, 5, 5) for K parameter rows.

    r = LSE(z) − log L with z = (a − α log N, b − β log D, e), p = softmax(z), J = ∇r;
    ∇²r = Σ_k p_k d_k d_kᵀ − J Jᵀ with d_k = ∂z_k/∂θ, so H = Σ w[ψ'' J Jᵀ + ψ' ∇²r].
    """
    z1 = theta[:, [0]] - theta[:, [3]] * log_n
    z2 = theta[:, [1]] - theta[:, [4]] * log_d
    z3 = np.broadcast_to(theta[:, [2]], z1.shape)
    m = np.maximum(np.maximum(z1, z2), z3)
    e1, e2, e3 = np.exp(z1 - m), np.exp(z2 - m), np.exp(z3 - m)
    s = e1 + e2 + e3
    p1, p2, p3 = e1 / s, e2 / s, e3 / s
    r = m + np.log(s) - log_l
    f = (w * _huber(r, delta)).sum(axis=1)
    d1 = w * np.clip(r, -delta, delta)
    d2 = w * (np.abs(r) <= delta)
    jac = np.stack([p1, p2, p3, -p1 * log_n, -p2 * log_d], axis=-1)
    g = np.einsum("kp,kpi->ki", d1, jac)
    h = np.einsum("kp,kpi,kpj->kij", d2 - d1, jac, jac)
    c1, c2, c3 = d1 * p1, d1 * p2, d1 * p3
    t1, t2 = (c1 * log_n).sum(axis=1), (c2 * log_d).sum(axis=1)
    h[:, 0, 0] += c1.sum(axis=1)
    h[:, 3, 3] += (c1 * log_n**2).sum(axis=1)
    h[:, 0, 3] -= t1
    h[:, 3, 0] -= t1
    h[:, 1, 1] += c2.sum(axis=1)
    h[:, 4, 4] += (c2 * log_d**2).sum(axis=1)
    h[:, 1, 4] -= t2
    h[:, 4, 1] -= t2
    h[:, 2, 2] += c3.sum(axis=1)
    return f, g, h


def _newton_batch(
    theta0: np.ndarray,
    log_n: np.ndarray,
    log_d: np.ndarray,
    log_l: np.ndarray,
    w: np.ndarray,
    delta: float,
    max_iter: int = NEWTON_MAX_ITER,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Levenberg–Marquardt-damped Newton on K weighted problems at once → (theta, objective, converged).

    A row has converged when its gradient is below L-BFGS-B's gtol or an accepted step
    lowered the objective by less than its ftol·max(1, f) — the same stopping rules the
    L-BFGS-B refit uses — or when no damping makes a descent step (a flat minimum).
    """
    theta = np.array(theta0, dtype=float)
    ftol, gtol = _LBFGS_OPTIONS["ftol"], _LBFGS_OPTIONS["gtol"]
    mu = np.full(len(theta), 1e-3)
    conv = np.zeros(len(theta), dtype=bool)
    f, g, h = _batch_derivs(theta, log_n, log_d, log_l, w, delta)
    conv |= np.abs(g).max(axis=1) <= gtol
    eye = np.eye(5)
    for _ in range(max_iter):
        idx = np.flatnonzero(~conv)
        if idx.size == 0:
            break
        # Marquardt scaling: α and β carry log N, log D (~20) factors a, b, e lack.
        dg = np.abs(np.diagonal(h[idx], axis1=1, axis2=2))
        dg = np.maximum(dg, 1e-12 * dg.max(axis=1, keepdims=True) + 1e-300)
        with np.errstate(all="ignore"):
            step = -np.linalg.solve(h[idx] + mu[idx, None, None] * dg[:, :, None] * eye, g[idx][:, :, None])[..., 0]
            ok = np.all(np.isfinite(step), axis=1) & ((step * g[idx]).sum(axis=1) < 0)
            trial = theta[idx] + np.where(ok[:, None], step, 0.0)
            f_new = (w[idx] * _huber(_log_predict(trial, log_n, log_d) - log_l, delta)).sum(axis=1)
        acc = ok & np.isfinite(f_new) & (f_new <= f[idx])
        up, down = idx[acc], idx[~acc]
        decrease = f[up] - f_new[acc]
        theta[up] = trial[acc]
        mu[up] = np.maximum(mu[up] / 10, 1e-12)
        mu[down] *= 10
        conv[down] = mu[down] > 1e12
        if up.size:
            f[up], g[up], h[up] = _batch_derivs(theta[up], log_n, log_d, log_l, w[up], delta)
            conv[up] = (np.abs(g[up]).max(axis=1) <= gtol) | (decrease <= ftol * np.maximum(1.0, f[up]))
    return theta, f, conv


def _validate(n_params: ArrayLike, tokens: ArrayLike, loss: ArrayLike) -> tuple[np.ndarray, ...]:
    arrays = []
    for name, values in (("n_params", n_params), ("tokens", tokens), ("loss", loss)):
        arr = np.asarray(values, dtype=float).ravel()
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError(f"{name} must be finite and > 0 (the law is fitted in log space)")
        arrays.append(arr)
    if not (arrays[0].size == arrays[1].size == arrays[2].size):
        raise ValueError(
            f"n_params, tokens and loss must have equal lengths, got "
            f"{arrays[0].size}, {arrays[1].size}, {arrays[2].size}"
        )
    n = arrays[0].size
    if n < MIN_POINTS:
        raise InsufficientData(
            f"the loss law has 5 parameters and needs at least {MIN_POINTS} (n_params, tokens, loss) points; got {n}",
            missing=f"{MIN_POINTS - n} more completed run(s)",
        )
    for name, arr in (("n_params", arrays[0]), ("tokens", arrays[1])):
        distinct = np.unique(arr).size
        if distinct < 2:
            raise InsufficientData(
                f"the loss law needs runs at >= 2 distinct {name} to separate its {name} term; "
                f"all {n} points have {name} = {arr[0]:.6g}",
                missing=f"runs at a second value of {name}",
            )
    corr = float(np.corrcoef(np.log(arrays[0]), np.log(arrays[1]))[0, 1])
    if abs(corr) > 0.9999:
        raise InsufficientData(
            "n_params and tokens vary together (log-log correlation "
            f"{corr:.4f}), so the N and D terms of the loss law cannot be told apart",
            missing="runs at different token budgets for the same n_params",
        )
    return tuple(arrays)


@dataclass(frozen=True, eq=False)
class LossLawPrediction:
    """Predicted loss with a 90% bootstrap interval of the fitted law (not of a new run's noise)."""

    value: np.ndarray
    low: np.ndarray
    high: np.ndarray

    def interval(self, i: int = 0) -> Interval:
        return Interval(float(self.value.flat[i]), float(self.low.flat[i]), float(self.high.flat[i]))

    def to_dict(self) -> dict[str, Any]:
        if self.value.ndim == 0:
            return self.interval().to_dict()
        return {"value": self.value.tolist(), "low": self.low.tolist(), "high": self.high.tolist()}


@dataclass(frozen=True, eq=False)
class LossLaw:
    """Result of `fit_loss_law`.

    `params` maps E, A, B, alpha, beta to 90% bootstrap intervals around the point
    estimate. `samples` holds up to 200 bootstrap parameter vectors (columns E, A, B,
    alpha, beta) so predictions made after a JSON round trip still carry intervals.
    """

    params: Mapping[str, Interval]
    n_points: int
    n_bootstrap: int
    n_bootstrap_failed: int
    objective: float
    residual_mad: float
    n_params_range: tuple[float, float]
    tokens_range: tuple[float, float]
    n_starts_polished: int
    samples: np.ndarray = field(repr=False)
    warnings: tuple[str, ...] = ()
    form: str = FORM
    huber_delta: float = HUBER_DELTA

    def point(self) -> dict[str, float]:
        return {k: v.value for k, v in self.params.items()}

    def unidentified(self) -> str | None:
        """Why the data do not identify the law (a 90% interval of E, alpha or beta at least as wide as
        its value), or None when they do. An unidentified law is withheld, not reported as a result."""
        loose = [
            f"{k} = {iv.value:.3g} [{iv.low:.3g}, {iv.high:.3g}]"
            for k in ("E", "alpha", "beta")
            if (iv := self.params[k]).high - iv.low >= abs(iv.value)
        ]
        if not loose:
            return None
        return (
            "its 90% intervals are wider than the values (" + "; ".join(loose) + "): the runs do not "
            "identify it; add final losses at more model sizes and token budgets (≥ 3 of each, "
            "spread over ≥ 10×)"
        )

    def predict(self, n_params: ArrayLike, tokens: ArrayLike) -> LossLawPrediction:
        """L = E + A/N^alpha + B/D^beta at (n_params, tokens); interval from the stored bootstrap samples."""
        n = np.asarray(n_params, dtype=float)
        d = np.asarray(tokens, dtype=float)
        if np.any(~np.isfinite(n)) or np.any(n <= 0) or np.any(~np.isfinite(d)) or np.any(d <= 0):
            raise ValueError("n_params and tokens must be finite and > 0")
        n, d = np.broadcast_arrays(n, d)
        shape = n.shape
        log_n, log_d = np.log(n).ravel(), np.log(d).ravel()
        theta = _log_params(self.point())
        value = np.exp(_log_predict(theta, log_n, log_d)[0])
        if len(self.samples):
            boot = np.exp(_log_predict(_params_to_theta(self.samples), log_n, log_d))
            tail = 100 * (1 - INTERVAL_LEVEL) / 2
            low, high = np.percentile(boot, [tail, 100 - tail], axis=0)
            low, high = np.minimum(low, value), np.maximum(high, value)
        else:
            low, high = value.copy(), value.copy()
        return LossLawPrediction(value.reshape(shape), low.reshape(shape), high.reshape(shape))

    def to_dict(self) -> dict[str, Any]:
        return {
            "form": self.form,
            "params": {k: v.to_dict() for k, v in self.params.items()},
            "n_points": self.n_points,
            "n_bootstrap": self.n_bootstrap,
            "n_bootstrap_failed": self.n_bootstrap_failed,
            "objective": self.objective,
            "huber_delta": self.huber_delta,
            "residual_mad": self.residual_mad,
            "data_range": {"n_params": list(self.n_params_range), "tokens": list(self.tokens_range)},
            "n_starts_polished": self.n_starts_polished,
            "bootstrap_samples": {name: self.samples[:, j].tolist() for j, name in enumerate(PARAM_NAMES)},
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LossLaw:
        if d.get("form", FORM) != FORM:
            raise ValueError(f"unsupported loss-law form {d.get('form')!r}; expected {FORM!r}")
        raw = d.get("bootstrap_samples") or {}
        cols = [np.asarray(raw.get(name, []), dtype=float) for name in PARAM_NAMES]
        samples = np.stack(cols, axis=1) if cols[0].size else np.empty((0, len(PARAM_NAMES)))
        rng = d.get("data_range", {})
        return cls(
            params={k: Interval.from_dict(d["params"][k]) for k in PARAM_NAMES},
            n_points=int(d["n_points"]),
            n_bootstrap=int(d.get("n_bootstrap", 0)),
            n_bootstrap_failed=int(d.get("n_bootstrap_failed", 0)),
            objective=float(d.get("objective", math.nan)),
            residual_mad=float(d.get("residual_mad", math.nan)),
            n_params_range=_pair(rng.get("n_params", (math.nan, math.nan))),
            tokens_range=_pair(rng.get("tokens", (math.nan, math.nan))),
            n_starts_polished=int(d.get("n_starts_polished", 0)),
            samples=samples,
            warnings=tuple(d.get("warnings", ())),
            huber_delta=float(d.get("huber_delta", HUBER_DELTA)),
        )


def _pair(values: Sequence[Any]) -> tuple[float, float]:
    low, high = values
    return float(low), float(high)


# A fitted E below this fraction of the smallest observed loss is "at its bound": unidentified.
E_IDENTIFIED_FRACTION = 0.01


def fit_loss_law(
    n_params: ArrayLike,
    tokens: ArrayLike,
    loss: ArrayLike,
    *,
    bootstrap: int = 200,
    seed: int | None = 0,
    polish: int = DEFAULT_POLISH,
) -> LossLaw:
    """Fit L = E + A/N^alpha + B/D^beta by Huber(δ=1e-3) on log L, multi-start L-BFGS-B, bootstrap intervals.

    `bootstrap` resamples of the points are refitted warm-started from the point
    estimate; `polish` grid starts (lowest grid objective first) are refined, or all
    4,500 when `polish` ≥ 4,500. Raises `InsufficientData` (with `.missing`) with fewer than 5
    points, fewer than 2 distinct n_params or tokens, n_params and tokens that vary
    together (D ∝ N^k), or a best fit that diverges; `ValueError` on invalid input.
    """
    if bootstrap < 0 or polish < 1:
        raise ValueError("bootstrap must be >= 0 and polish >= 1")
    n, d, l = _validate(n_params, tokens, loss)
    return _fit_validated(n, d, l, bootstrap=bootstrap, seed=seed, polish=polish)


def _fit_validated(
    n: np.ndarray, d: np.ndarray, l: np.ndarray, *, bootstrap: int, seed: int | None, polish: int
) -> LossLaw:
    """The fit on validated points: best start, identification checks, warnings, bootstrap."""
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(l)
    delta = HUBER_DELTA
    best, n_starts = _best_fit(log_n, log_d, log_l, polish, delta)
    theta = best.x
    point = _identified_params(theta, l)
    warnings = _fit_warnings(best, theta, n, d)
    boot_params, failed = _bootstrap_params(theta, n, d, l, bootstrap, seed, delta)
    if bootstrap == 0:
        warnings.append("bootstrap=0: intervals are collapsed onto the point estimate and carry no uncertainty")
    if failed:
        warnings.append(f"{failed} of {bootstrap} bootstrap resamples were unidentifiable or failed and were skipped")
    if bootstrap > 0 and len(boot_params) < 50:
        warnings.append(f"only {len(boot_params)} bootstrap refits succeeded: the 90% intervals are rough")

    params = {name: Interval.from_samples(float(point[j]), boot_params[:, j]) for j, name in enumerate(PARAM_NAMES)}
    resid = _log_predict(theta, log_n, log_d)[0] - log_l
    return LossLaw(
        params=params,
        n_points=int(n.size),
        n_bootstrap=len(boot_params),
        n_bootstrap_failed=failed,
        objective=float(best.fun),
        residual_mad=float(np.median(np.abs(resid - np.median(resid)))),
        n_params_range=(float(n.min()), float(n.max())),
        tokens_range=(float(d.min()), float(d.max())),
        n_starts_polished=n_starts,
        samples=boot_params[:MAX_STORED_SAMPLES],
        warnings=tuple(warnings),
    )


def _best_fit(
    log_n: FloatArray, log_d: FloatArray, log_l: FloatArray, polish: int, delta: float
) -> tuple[OptimizeResult, int]:
    """The lowest-objective L-BFGS-B polish, and how many grid starts were screened.

    The `polish` best grid starts are screened by batched Newton steps; the LBFGS_STARTS
    best of those are polished. Raises InsufficientData when none reaches a finite objective.
    """
    grid = initial_grid()
    grid_obj = _huber(_log_predict(grid, log_n, log_d) - log_l, delta).sum(axis=1)
    starts = grid[np.argsort(grid_obj, kind="stable")[: min(polish, len(grid))]]
    _, screen_obj, _ = _newton_batch(starts, log_n, log_d, log_l, np.ones((len(starts), log_n.size)), delta)
    screen_obj = np.where(np.isfinite(screen_obj), screen_obj, np.inf)
    best = None
    for theta0 in starts[np.argsort(screen_obj, kind="stable")[:LBFGS_STARTS]]:
        res = _polish(theta0, log_n, log_d, log_l, delta)
        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        raise InsufficientData(
            "the loss-law optimiser found no start with a finite objective: the losses are "
            "not described by E + A/N^alpha + B/D^beta",
            missing="final losses that fall with n_params and tokens",
        )
    return best, len(starts)


def _identified_params(theta: FloatArray, l: FloatArray) -> FloatArray:
    """(E, A, B, alpha, beta) of the best fit; InsufficientData when the data do not pin them down."""
    with np.errstate(over="ignore"):
        point = _theta_to_params(theta)
    if not np.all(np.isfinite(point)):
        raise InsufficientData(
            "the data do not constrain the loss law: the best fit sends a parameter to infinity "
            f"(E, A, B, alpha, beta = {', '.join(f'{v:.3g}' for v in point)})",
            missing="runs spanning a wider range of n_params and tokens",
        )
    if point[0] < E_IDENTIFIED_FRACTION * float(np.min(l)):
        # E → 0 means the points never show the loss levelling off: every E from 0 up to a
        # sizeable fraction of the loss fits about as well, and extrapolated losses (and the
        # compute-optimal split) would be an artefact of the optimiser, not of the data.
        raise InsufficientData(
            f"the irreducible loss E is not identified: the best fit puts it at {point[0]:.2g}, "
            f"against observed losses ≥ {float(np.min(l)):.3g} (the data never show the loss levelling off)",
            missing="runs at larger n_params and tokens, where the loss flattens",
        )
    return point


def _fit_warnings(best: OptimizeResult, theta: FloatArray, n: FloatArray, d: FloatArray) -> list[str]:
    """What makes the point fit doubtful: no convergence, exponents ≤ 0, N and D (nearly) tied."""
    warnings: list[str] = []
    if not best.success:
        warnings.append(f"L-BFGS-B did not report convergence at the best start: {best.message}")
    if theta[3] <= 0 or theta[4] <= 0:
        warnings.append(
            f"fitted exponents are not positive (alpha={theta[3]:.3g}, beta={theta[4]:.3g}): loss does not "
            "fall with scale in these data; the law is not meaningful for extrapolation"
        )
    corr = float(np.corrcoef(np.log(n), np.log(d))[0, 1])
    if abs(corr) > 0.99:
        warnings.append(
            f"log n_params and log tokens are nearly collinear (correlation {corr:.3f}): "
            "A/alpha and B/beta trade off and their intervals are wide"
        )
    for name, arr in (("n_params", n), ("tokens", d)):
        if np.unique(arr).size < 3:
            warnings.append(f"only {np.unique(arr).size} distinct {name}: the {name} exponent is barely identified")
    return warnings


def _bootstrap_params(
    theta: FloatArray, n: FloatArray, d: FloatArray, l: FloatArray, bootstrap: int, seed: int | None, delta: float
) -> tuple[FloatArray, int]:
    """Finite (E, A, B, alpha, beta) rows of `bootstrap` point resamples, and how many failed.

    Each resample is refitted warm-started from `theta` by batched Newton steps; one that
    does not converge is re-polished by L-BFGS-B (within BOOTSTRAP_POLISH_BUDGET iterations in
    all) and the lower objective kept. Resamples with < 2 distinct n_params or tokens are
    unidentifiable and count as failed. Raises InsufficientData when more than UNSETTLED_SHARE
    of the refits do not settle: the objective is flat along some direction.
    """
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(l)
    rng = np.random.default_rng(seed)
    resamples = [rng.integers(0, n.size, n.size) for _ in range(bootstrap)]
    usable = [i for i in resamples if np.unique(n[i]).size >= 2 and np.unique(d[i]).size >= 2]
    failed = bootstrap - len(usable)
    boot_theta = np.empty((0, 5))
    if usable:
        counts = np.stack([np.bincount(i, minlength=n.size) for i in usable]).astype(float)
        boot_theta, boot_obj, conv = _newton_batch(np.tile(theta, (len(usable), 1)), log_n, log_d, log_l, counts, delta)
        unsettled = np.flatnonzero(~conv)
        if unsettled.size > UNSETTLED_SHARE * len(usable):
            raise InsufficientData(
                f"{unsettled.size} of {len(usable)} bootstrap refits do not settle: the fit's objective is "
                "flat along some direction (e.g. B against beta), so the runs do not identify the law",
                missing="final losses at more model sizes and token budgets (≥ 3 of each, spread over ≥ 10×)",
            )
        budget = BOOTSTRAP_POLISH_BUDGET
        for k in unsettled:
            if budget <= 0:
                break  # the rest keep their Newton refit
            i = usable[k]
            res = _polish(
                theta, log_n[i], log_d[i], log_l[i], delta, maxiter=min(budget, int(_LBFGS_OPTIONS["maxiter"]))
            )
            budget -= int(res.nit)
            if not res.fun >= boot_obj[k]:  # keep whichever refit reached the lower objective
                boot_theta[k] = res.x
        keep = np.all(np.isfinite(boot_theta), axis=1)
        failed += int((~keep).sum())
        boot_theta = boot_theta[keep]

    with np.errstate(over="ignore"):
        boot_params = _theta_to_params(boot_theta)
    finite = np.all(np.isfinite(boot_params), axis=1)
    failed += int((~finite).sum())
    return boot_params[finite], failed


@dataclass(frozen=True)
class ComputeOptimal:
    """Compute-optimal allocation for a FLOP budget C = 6·N·D; unpacks as (n_params, tokens)."""

    flops: float
    n_params: Interval
    tokens: Interval
    tokens_per_param: Interval
    warnings: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Interval]:
        return iter((self.n_params, self.tokens))

    def to_dict(self) -> dict[str, Any]:
        return {
            "flops": self.flops,
            "n_params": self.n_params.to_dict(),
            "tokens": self.tokens.to_dict(),
            "tokens_per_param": self.tokens_per_param.to_dict(),
            "warnings": list(self.warnings),
        }


def _log_n_opt(params: np.ndarray, log_c6: float) -> np.ndarray:
    """log N* = log G + β/(α+β)·log(C/6), G = (αA/(βB))^(1/(α+β)); params (K, 5) [E, A, B, alpha, beta]."""
    A, B, alpha, beta = params[:, 1], params[:, 2], params[:, 3], params[:, 4]
    with np.errstate(invalid="ignore", divide="ignore"):
        s = alpha + beta
        log_g = (np.log(alpha) + np.log(A) - np.log(beta) - np.log(B)) / s
        out = log_g + beta / s * log_c6
    return np.where((alpha > 0) & (beta > 0), out, np.nan)


def compute_optimal(fit: LossLaw, flops: float) -> ComputeOptimal:
    """N*, D* minimising E + A/N^alpha + B/D^beta subject to 6·N·D = C (closed form, bootstrap intervals).

    Raises ValueError for a budget that is not a positive number (the caller's error) and
    InsufficientData when the law has no such minimum (alpha or beta ≤ 0: the data's).
    """
    c = float(flops)
    if not math.isfinite(c) or c <= 0:
        raise ValueError("flops must be finite and > 0")
    point = np.array([[fit.params[k].value for k in PARAM_NAMES]])
    if not (point[0, 3] > 0 and point[0, 4] > 0):
        # The data's refusal, not a caller's mistake: the engine's one refusal type.
        raise InsufficientData(
            "compute-optimal allocation needs positive alpha and beta; the fitted law has "
            f"alpha={point[0, 3]:.3g}, beta={point[0, 4]:.3g}",
            missing="runs at more model sizes and token budgets, so the loss law's exponents are identified",
        )
    log_c6 = math.log(c / FLOPS_PER_PARAM_TOKEN)
    log_n = float(_log_n_opt(point, log_c6)[0])
    log_n_boot = _log_n_opt(fit.samples, log_c6) if len(fit.samples) else np.empty(0)
    log_n_boot = log_n_boot[np.isfinite(log_n_boot)]
    log_d, log_d_boot = log_c6 - log_n, log_c6 - log_n_boot
    n_iv = Interval.from_samples(log_n, log_n_boot)
    d_iv = Interval.from_samples(log_d, log_d_boot)
    r_iv = Interval.from_samples(log_d - log_n, log_d_boot - log_n_boot)

    def exp_iv(iv: Interval) -> Interval:
        return Interval(math.exp(iv.value), math.exp(iv.low), math.exp(iv.high))

    warnings = []
    for name, value, (lo, hi) in (
        ("n_params", math.exp(log_n), fit.n_params_range),
        ("tokens", math.exp(log_d), fit.tokens_range),
    ):
        if value > hi or value < lo:
            factor = max(value / hi, lo / value)
            warnings.append(
                f"optimal {name} {value:.3g} is {factor:.3g}x outside the fitted range [{lo:.3g}, {hi:.3g}]"
            )
    return ComputeOptimal(c, exp_iv(n_iv), exp_iv(d_iv), exp_iv(r_iv), tuple(warnings))


__all__: Sequence[str] = (
    "FORM",
    "ComputeOptimal",
    "InsufficientData",
    "Interval",
    "LossLaw",
    "LossLawPrediction",
    "compute_optimal",
    "fit_loss_law",
    "initial_grid",
)

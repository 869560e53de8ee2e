"""Joint loss-surface ("bowl") model over the swept hyperparameters of many scales.

Model, per run i at scale s(i), with u = log of the swept hyperparameters (lr, bs, wd):

    log loss_i = l0_s + ½·zᵀ(L Lᵀ)z + Σ_a κ_a z_a³,   z = u_i − μ_s,   μ_{s,a} = X_a[s] · β_a

The curvature L Lᵀ (positive definite by construction) and the asymmetry κ are shared by
all scales: each scale then only has to locate its centre, which is what lets sparse or
incomplete sweeps still place an optimum. Because the cubic terms have zero gradient and
Hessian at z = 0, μ_s is exactly the local minimum. The centre design X_a is either
one-hot (a free centre per scale: the per-scale optima) or [1, log x − x̄] (a power law:
the centres follow log h* = c + Σ a_j log x_j and every run informs the law directly).

Only the bottom of each bowl is modelled: runs more than `band` above the scale's best
loss are left out, because far from the optimum (divergence walls, tiny learning rates)
no low-order polynomial describes the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import OptimizeResult, least_squares

DEFAULT_BAND = 0.01
# A scale needs at least this many runs in its band; lower-loss runs are added up to this
# count (never beyond MAX_BAND above the best) so that sparse sweeps still inform the shape.
MIN_BAND_RUNS = 6
MAX_BAND = 0.05
_INIT_CURVATURE = 0.1
# Trust-region steps allowed to each least-squares pass. From `quadratic_start` a pass needs a
# few dozen; a pass that stops here reports success=False (and the fit says so), never retried.
MAX_STEPS = 200
# The linear start's curvature is made positive definite by flooring its eigenvalues at this
# share of the largest.
_MIN_EIG_SHARE = 1e-3


@dataclass(frozen=True)
class BowlData:
    """Runs prepared for the bowl model (rows = runs inside the band of their scale)."""

    u: np.ndarray  # (n, d) log hyperparameters
    y: np.ndarray  # (n,) log loss
    scale: np.ndarray  # (n,) scale index
    active: np.ndarray  # (S, d) axis swept (≥ 2 distinct values) at the scale
    cross: np.ndarray  # (d, d) bool, lower-triangular pairs whose interaction is identified
    n_scales: int
    # Runs behind each row when replicates (same scale and hyperparameters) were pooled into
    # their mean log loss; None: one run per row. A row's residual counts √weight times, so
    # least squares on the pooled rows equals least squares on the runs up to a constant.
    weight: np.ndarray | None = None


@dataclass(frozen=True)
class BowlSolution:
    """Fitted bowl: centre coefficients per axis, shared shape, per-scale base loss."""

    beta: tuple[np.ndarray, ...]
    chol: np.ndarray  # (d, d) lower-triangular L, curvature H = L Lᵀ
    kappa: np.ndarray  # (d,)
    l0: np.ndarray  # (S,)
    noise: float  # robust residual scale of log loss
    params: np.ndarray  # packed parameter vector
    jac: np.ndarray  # (n, P) Jacobian of residuals at the solution
    resid: np.ndarray
    weights: np.ndarray  # IRLS weights of the robust loss at the solution
    success: bool  # both least-squares passes converged

    @property
    def dof(self) -> int:
        """Residual degrees of freedom: runs in the fit minus identified parameters (rank of J), ≥ 0."""
        if self.resid.size == 0:
            return 0
        return max(int(self.resid.size) - int(np.linalg.matrix_rank(self.jac)), 0)

    @property
    def hessian(self) -> np.ndarray:
        h: np.ndarray = self.chol @ self.chol.T
        return h


def select_band(y: np.ndarray, scale: np.ndarray, n_scales: int, band: float = DEFAULT_BAND) -> np.ndarray:
    """Boolean mask of runs within `band` (relative loss) of their scale's best, padded to MIN_BAND_RUNS."""
    keep = np.zeros(y.shape[0], dtype=bool)
    for s in range(n_scales):
        idx = np.flatnonzero(scale == s)
        if idx.size == 0:
            continue
        excess = np.exp(y[idx] - y[idx].min()) - 1
        order = np.argsort(excess)
        k = max(int(np.count_nonzero(excess <= band)), min(MIN_BAND_RUNS, idx.size))
        chosen = order[:k]
        chosen = chosen[excess[chosen] <= max(band, MAX_BAND)]
        keep[idx[chosen]] = True
    return keep


def _layout(
    designs: tuple[np.ndarray, ...], d: int, n_scales: int, cross: np.ndarray
) -> tuple[list[int], np.ndarray, list[tuple[int, int]]]:
    sizes = [x.shape[1] for x in designs]
    off = np.cumsum([n_scales, *sizes])
    tri = [(j, k) for j in range(d) for k in range(j + 1) if j == k or cross[j, k]]
    return sizes, off, tri


def _unpack(
    p: np.ndarray, designs: tuple[np.ndarray, ...], d: int, n_scales: int, cross: np.ndarray
) -> tuple[np.ndarray, tuple[np.ndarray, ...], np.ndarray, np.ndarray, list[tuple[int, int]]]:
    _, off, tri = _layout(designs, d, n_scales, cross)
    l0 = p[:n_scales]
    beta = tuple(p[off[a] : off[a + 1]] for a in range(d))
    lp = p[off[-1] : off[-1] + len(tri)]
    chol = np.zeros((d, d))
    for v, (j, k) in zip(lp, tri):
        chol[j, k] = np.exp(v) if j == k else v
    kappa = p[off[-1] + len(tri) :]
    return l0, beta, chol, kappa, tri


def residuals_and_jacobian(
    p: np.ndarray, data: BowlData, designs: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Residuals (model − log loss) of the bowl model and their analytic Jacobian."""
    d = data.u.shape[1]
    l0, beta, chol, kappa, tri = _unpack(p, designs, d, data.n_scales, data.cross)
    s = data.scale
    mask = data.active[s].astype(float)
    mu = np.stack([(designs[a] @ beta[a])[s] for a in range(d)], axis=1)
    z = (data.u - mu) * mask
    m = z @ chol
    f = 0.5 * np.sum(m * m, axis=1) + (z**3) @ kappa
    r = l0[s] + f - data.y
    grad_z = (m @ chol.T + 3 * kappa * z * z) * mask
    cols = [np.zeros((r.size, data.n_scales))]
    cols[0][np.arange(r.size), s] = 1.0
    for a in range(d):
        cols.append(-grad_z[:, [a]] * designs[a][s])
    lcols = np.empty((r.size, len(tri)))
    for c, (j, k) in enumerate(tri):
        lcols[:, c] = m[:, k] * z[:, j] * (chol[j, j] if j == k else 1.0)
    cols.append(lcols)
    cols.append(z**3)
    J = np.concatenate(cols, axis=1)
    if data.weight is not None:
        root = np.sqrt(data.weight)
        return r * root, J * root[:, None]
    return r, J


def pack(
    l0: np.ndarray, beta: Sequence[np.ndarray], chol: np.ndarray, kappa: np.ndarray, cross: np.ndarray
) -> np.ndarray:
    d = chol.shape[0]
    lp = [np.log(chol[j, k]) if j == k else chol[j, k] for j in range(d) for k in range(j + 1) if j == k or cross[j, k]]
    return np.concatenate(
        [np.asarray(l0, float), *[np.asarray(b, float) for b in beta], np.asarray(lp, float), np.asarray(kappa, float)]
    )


def initial_shape(d: int, cross: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.eye(d) * _INIT_CURVATURE, np.zeros(d)


def fit_bowl(
    data: BowlData,
    designs: tuple[np.ndarray, ...],
    beta0: tuple[np.ndarray, ...],
    chol0: np.ndarray | None = None,
    kappa0: np.ndarray | None = None,
    *,
    cubic: bool = True,
) -> BowlSolution:
    """Robust (soft-L1) least squares of the bowl model; returns the shape, centres and Jacobian.

    log loss = l0_s + ½ zᵀ L Lᵀ z + Σ κ_a z_a³ with z = log h − X β. `cubic=False` holds
    κ at 0 (for sweeps with too few runs to identify the asymmetry). Without a given shape
    (`chol0`, `kappa0`) the fit starts from `quadratic_start`, the linear least-squares
    solution of the quadratic bowl, so each pass takes a bounded number of steps (at most
    MAX_STEPS) whatever the shape of the data. `success` is False when either pass stopped
    without meeting its tolerance; callers must say so.
    """
    d = data.u.shape[1]
    l0 = np.array([data.y[data.scale == s].min() if np.any(data.scale == s) else 0.0 for s in range(data.n_scales)])
    start = quadratic_start(data, designs) if chol0 is None or kappa0 is None else None
    if start is not None:
        l0, beta0, chol0 = start
        kappa0 = np.zeros(d)
    elif chol0 is None or kappa0 is None:
        chol0, kappa0 = initial_shape(d, data.cross)
    p0 = pack(l0, beta0, chol0, kappa0 if cubic else np.zeros(d), data.cross)
    free = np.ones(p0.size, dtype=bool)
    if not cubic:
        free[-d:] = False
    # An axis no scale sweeps inside its band has no rows to shape it: its curvature and
    # asymmetry stay at their start (their Jacobian columns are zero) instead of drifting.
    dead: np.ndarray = ~np.any(data.active, axis=0)
    if dead.any():
        _, off, tri = _layout(designs, d, data.n_scales, data.cross)
        for c, (j, k) in enumerate(tri):
            free[off[-1] + c] &= not (dead[j] or dead[k])
        free[off[-1] + len(tri) :] &= ~dead

    def full(q: np.ndarray) -> np.ndarray:
        p = p0.copy()
        p[free] = q
        return p

    def fun(q: np.ndarray) -> np.ndarray:
        return residuals_and_jacobian(full(q), data, designs)[0]

    def jac(q: np.ndarray) -> np.ndarray:
        return residuals_and_jacobian(full(q), data, designs)[1][:, free]

    # Two passes: plain least squares to get a residual scale, then soft-L1 at that scale so
    # a few odd runs (spikes, half-diverged runs inside the band) cannot drag the centre.
    sol = _solve(fun, jac, p0[free])
    r = sol.fun
    noise = max(1.4826 * float(np.median(np.abs(r - np.median(r)))), 1e-5)
    sol2 = _solve(fun, jac, sol.x, loss="soft_l1", f_scale=noise)
    p = full(sol2.x)
    r, J = residuals_and_jacobian(p, data, designs)
    if not cubic:
        J[:, -d:] = 0.0
    w = 1.0 / np.sqrt(1.0 + (r / noise) ** 2)
    l0, beta, chol, kappa, _ = _unpack(p, designs, d, data.n_scales, data.cross)
    return BowlSolution(
        beta=tuple(np.array(b) for b in beta),
        chol=chol,
        kappa=np.array(kappa),
        l0=np.array(l0),
        noise=noise,
        params=p,
        jac=J,
        resid=r,
        weights=w,
        success=bool(sol.success and sol2.success),
    )


def _solve(
    fun: Callable[[np.ndarray], np.ndarray],
    jac: Callable[[np.ndarray], np.ndarray],
    x0: np.ndarray,
    **kw: Any,
) -> OptimizeResult:
    """least_squares from a start already near the solution (`quadratic_start`): a bounded
    number of steps, and a status that says whether it converged (no silent retries)."""
    return least_squares(fun, x0, jac=jac, method="trf", x_scale="jac", max_nfev=MAX_STEPS, **kw)


def quadratic_start(
    data: BowlData, designs: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, tuple[np.ndarray, ...], np.ndarray] | None:
    """(l0, beta, chol) of the quadratic bowl (κ = 0) from one linear least squares; None when
    the rows identify no curvature (then the caller starts from `initial_shape`).

    With a free centre per scale, ½(u − μ_s)ᵀH(u − μ_s) = ½uᵀHu − uᵀHμ_s + const_s: the bowl
    is linear in (const_s, g_s = −Hμ_s, H). Solving that once puts the nonlinear fit's start
    next to its solution, whatever the shape of the data (a sharp bowl seen at two learning
    rates per scale took the old start, a unit curvature at the band's centroid, thousands of
    trust-region steps). H is made positive definite (eigenvalues floored) before μ_s = −H⁻¹g_s.
    """
    n, d = data.u.shape
    S = data.n_scales
    if n == 0 or d == 0:
        return None
    s = data.scale
    act = data.active[s]
    w = np.ones(n) if data.weight is None else data.weight
    centre = np.array([np.average(data.u[:, a], weights=w) for a in range(d)])
    uc = (data.u - centre) * act
    tri = [(j, k) for j in range(d) for k in range(j + 1) if j == k or data.cross[j, k]]
    lin = [(t, a) for t in range(S) for a in range(d) if data.active[t, a]]
    A = np.zeros((n, S + len(lin) + len(tri)))
    A[np.arange(n), s] = 1.0
    for c, (t, a) in enumerate(lin):
        A[:, S + c] = np.where(s == t, uc[:, a], 0.0)
    for c, (j, k) in enumerate(tri):
        A[:, S + len(lin) + c] = uc[:, j] * uc[:, k] * (0.5 if j == k else 1.0)
    root = np.sqrt(w)
    coef = np.linalg.lstsq(A * root[:, None], data.y * root, rcond=None)[0]
    if not np.all(np.isfinite(coef)):
        return None
    H = np.zeros((d, d))
    for c, (j, k) in enumerate(tri):
        H[j, k] = H[k, j] = coef[S + len(lin) + c]
    eig, vec = np.linalg.eigh(H)
    if eig.max() <= 0:
        return None
    H = (vec * np.maximum(eig, _MIN_EIG_SHARE * eig.max())) @ vec.T
    g = np.zeros((S, d))
    for c, (t, a) in enumerate(lin):
        g[t, a] = coef[S + c]
    mu = np.full((S, d), np.nan)
    for t in range(S):
        on = np.flatnonzero(data.active[t])
        rows = s == t
        if on.size == 0 or not rows.any():
            continue
        m = -np.linalg.solve(H[np.ix_(on, on)], g[t, on])
        # A bowl the rows barely curve can put its centre anywhere: start within reach of them.
        lo, hi = uc[rows][:, on].min(axis=0), uc[rows][:, on].max(axis=0)
        reach = np.maximum(hi - lo, 1.0)
        mu[t, on] = np.clip(m, lo - reach, hi + reach)
    z = np.where(act, uc - np.nan_to_num(mu)[s], 0.0)
    quad = 0.5 * np.einsum("ij,jk,ik->i", z, H, z)
    l0 = np.bincount(s, weights=w * (data.y - quad), minlength=S) / np.maximum(
        np.bincount(s, weights=w, minlength=S), 1e-300
    )
    beta = []
    for a in range(d):
        X = designs[a]
        on = np.flatnonzero(data.active[:, a])
        target = mu[on, a] + centre[a]
        beta.append(np.linalg.lstsq(X[on], target, rcond=None)[0] if on.size else np.zeros(X.shape[1]))
    chol = np.linalg.cholesky(H)
    return l0, tuple(beta), chol


# linear_bootstrap: up to this many resampling groups, one matrix product per group.
_FEW_GROUPS = 64


def one_step_bootstrap(
    fit: BowlSolution, groups: np.ndarray, counts: np.ndarray, columns: np.ndarray | None = None
) -> np.ndarray:
    """Linearised bootstrap: one weighted Gauss–Newton step from the fit per resample.

    `groups` assigns each run to a resampling unit, `counts` (B, G) says how often each
    unit is drawn. Returns (B, P) parameter vectors (only `columns` move when given). A
    full refit per resample would cost seconds; one step from the solution is accurate
    to second order in the resampling perturbation and costs B small linear solves.
    """
    J = fit.jac if columns is None else fit.jac[:, columns]
    base = fit.params if columns is None else fit.params[columns]
    return linear_bootstrap(J, fit.weights, fit.resid, base, groups, counts)


def linear_bootstrap(
    J: np.ndarray, w: np.ndarray, resid: np.ndarray, base: np.ndarray, groups: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """(B, P) one-step weighted Gauss–Newton updates of `base` for resampling `counts` (B, G) of `groups`."""
    G = counts.shape[1]
    P = J.shape[1]
    Jw = J * w[:, None]
    A = np.zeros((G, P, P))
    g = np.zeros((G, P))
    # Per-group sums of the rows' J_i w_i J_iᵀ and J_i w_i r_i over rows sorted by group
    # (np.add.at, unbuffered, took 0.5 s at a million runs): a few large groups (scales) by one
    # matrix product each, many small ones (runs) by reduceat over their blocks of outer products.
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]]) if order.size else order
    Jo, Jwo, ro = J[order], Jw[order], resid[order]
    if starts.size <= _FEW_GROUPS:
        for lo, hi in zip(starts.tolist(), [*starts[1:].tolist(), order.size]):
            A[sorted_groups[lo]] = Jwo[lo:hi].T @ Jo[lo:hi]
            g[sorted_groups[lo]] = Jwo[lo:hi].T @ ro[lo:hi]
    else:
        A[sorted_groups[starts]] = np.add.reduceat(Jwo[:, :, None] * Jo[:, None, :], starts, axis=0)
        g[sorted_groups[starts]] = np.add.reduceat(Jwo * ro[:, None], starts, axis=0)
    Ab = np.einsum("bg,gij->bij", counts, A)
    gb = counts @ g
    # Parameters that a resample does not inform (a scale drawn zero times) get a tiny
    # ridge so they stay at the point estimate instead of making the system singular.
    scale = np.maximum(np.einsum("bii->bi", Ab).max(axis=1), 1e-12)
    Ab = Ab + (1e-9 * scale)[:, None, None] * np.eye(P)
    step = np.linalg.solve(Ab, gb[:, :, None])[:, :, 0]
    return base[None, :] - step

"""Regret backtests of (lr, bs) recommendations on real sweeps, and the Step Law procedure.

Regret of a recommendation at a setting = loss at the recommended (lr, bs), read off that
setting's own sweep, relative to the sweep's best loss, minus 1. The loss between grid
points is linear interpolation over a Delaunay triangulation in (log lr, log bs)
(`scipy.interpolate.LinearNDInterpolator`): the Step Law grids are not full rectangles,
so a rectangular interpolator would need invented cells. A recommendation outside the
swept box is first clamped to it; a point still outside the triangulated hull takes the
loss of the nearest run. Grid coordinates that differ by < 1% (e.g. lr 3.45e-4 vs 3.453e-4,
rounding in the source file) are snapped together so no sliver triangles appear.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import LinearNDInterpolator

from fitting.optima import Scale, group_scales
from fitting.published import (
    STEP_LAW_BATCH_TOKENS_EXPONENTS,
    STEP_LAW_BATCH_TOKENS_PREFACTOR,
    STEP_LAW_LR_EXPONENTS,
    STEP_LAW_LR_PREFACTOR,
    STEP_LAW_NEAR_OPTIMAL,
)
from fitting.runs import RunTable

Predictor = Callable[[Scale], tuple[float, float]]
Method = Callable[[RunTable], Predictor]


def _snap(logv: np.ndarray, tol: float = 0.01) -> np.ndarray:
    s = np.unique(logv)
    reps = [s[0]]
    for x in s[1:]:
        if x - reps[-1] > tol:
            reps.append(x)
    r = np.array(reps)
    snapped: np.ndarray = r[np.argmin(np.abs(logv[:, None] - r[None, :]), axis=1)]
    return snapped


@dataclass(frozen=True, eq=False)
class RegretSurface:
    """Interpolated loss of one setting's sweep over (log lr, log bs)."""

    points: np.ndarray
    loss: np.ndarray
    interp: LinearNDInterpolator

    @classmethod
    def from_runs(cls, lr: np.ndarray, bs: np.ndarray, loss: np.ndarray) -> RegretSurface:
        ok = np.isfinite(loss)
        pts = np.column_stack([_snap(np.log(lr[ok])), _snap(np.log(bs[ok]))])
        return cls(pts, loss[ok], LinearNDInterpolator(pts, loss[ok]))

    def loss_at(self, lr: float, bs: float) -> float:
        x = np.clip(np.log(lr), self.points[:, 0].min(), self.points[:, 0].max())
        y = np.clip(np.log(bs), self.points[:, 1].min(), self.points[:, 1].max())
        v = float(self.interp(x, y))
        if not np.isfinite(v):
            v = float(self.loss[np.argmin((self.points[:, 0] - x) ** 2 + (self.points[:, 1] - y) ** 2)])
        return v

    def regret(self, lr: float, bs: float) -> float:
        """Relative excess loss at (lr, bs) over the sweep's best."""
        return self.loss_at(lr, bs) / float(self.loss.min()) - 1.0


def near_optimal_runs(train: RunTable) -> tuple[tuple[Scale, ...], np.ndarray, np.ndarray]:
    """Step Law's near-optimal runs (RULES.md §6): completed, within 0.25% of their setting's best loss.

    Returns the settings, each run's setting index, and the boolean mask of near-optimal runs.
    """
    scales, sidx = group_scales(train)
    ok = train.completed
    best = np.full(len(scales), np.inf)
    np.minimum.at(best, sidx[ok], train.final_loss[ok])
    near = ok & (train.final_loss <= (1 + STEP_LAW_NEAR_OPTIMAL) * best[sidx])
    return scales, sidx, near


def steplaw_procedure(train: RunTable) -> Predictor:
    """Step Law: pool every run within 0.25% of its setting's best loss, regress log lr on (log N, log D), log bs on log D.

    log lr* = c + a·log N + b·log D;  log bs* = c' + b'·log D (ordinary least squares over runs).
    """
    _, _, near = near_optimal_runs(train)
    ln, ld = np.log(train.n_params[near]), np.log(train.tokens[near])
    X = np.column_stack([np.ones(ln.size), ln, ld])
    b_lr = np.linalg.lstsq(X, np.log(train.learning_rate[near]), rcond=None)[0]
    b_bs = np.linalg.lstsq(X[:, [0, 2]], np.log(train.batch_size[near]), rcond=None)[0]

    def predict(s: Scale) -> tuple[float, float]:
        x = np.array([1.0, np.log(s.n_params), np.log(s.tokens)])
        return float(np.exp(x @ b_lr)), float(np.exp(x[[0, 2]] @ b_bs))

    return predict


def steplaw_published(seq_len: float = 2048.0) -> Method:
    """The paper's formula: lr* = 1.7973·N^-0.7129·D^0.3075, bs* = 0.5807·D^0.5709 tokens."""

    def method(train: RunTable) -> Predictor:
        a_n, a_d = STEP_LAW_LR_EXPONENTS["n_params"], STEP_LAW_LR_EXPONENTS["tokens"]
        b_d = STEP_LAW_BATCH_TOKENS_EXPONENTS["tokens"]
        return lambda s: (
            STEP_LAW_LR_PREFACTOR * s.n_params**a_n * s.tokens**a_d,
            STEP_LAW_BATCH_TOKENS_PREFACTOR * s.tokens**b_d / seq_len,
        )

    return method


def leave_one_size_out(
    runs: RunTable, method: Method, *, train_fraction: float = 1.0, seed: int = 0
) -> dict[tuple[float, float], float]:
    """Regret per setting (n_params, tokens) when each model size is predicted from the others.

    With `train_fraction` < 1 the fit sees a random fraction of every setting's runs
    (regret is still read on the full sweep).
    """
    scales, sidx = group_scales(runs)
    surfaces = {}
    for s in range(len(scales)):
        m = (sidx == s) & runs.completed
        surfaces[s] = RegretSurface.from_runs(runs.learning_rate[m], runs.batch_size[m], runs.final_loss[m])
    keep = np.ones(len(runs), dtype=bool)
    if train_fraction < 1.0:
        rng = np.random.default_rng(seed)
        keep[:] = False
        for s in range(len(scales)):
            idx = np.flatnonzero(sidx == s)
            keep[rng.choice(idx, round(train_fraction * idx.size), replace=False)] = True
    sizes = sorted({sc.n_params for sc in scales})
    out: dict[tuple[float, float], float] = {}
    for n in sizes:
        predictor = method(runs.subset(keep & (runs.n_params != n)))
        for s, sc in enumerate(scales):
            if sc.n_params == n:
                lr, bs = predictor(sc)
                out[(sc.n_params, sc.tokens)] = surfaces[s].regret(lr, bs)
    return out


def mean_regret(regrets: Mapping[tuple[float, float], float]) -> float:
    return float(np.mean(list(regrets.values())))

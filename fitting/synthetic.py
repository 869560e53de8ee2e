"""Synthetic studies with random true laws, for calibrating the fitting engine.

`random_study(seed)` returns `(RunTable, SyntheticTruth)`. The truth knows the optimum of
every hyperparameter at any scale, so a fit's predictions and 90% intervals can be checked
at targets beyond the proxies (`SyntheticTruth.targets`), over many random laws.

The model (all logs natural; N0 = 1e8 parameters, D0 = 2e9 tokens, W0 = 512):

* **Optimum laws** (log-linear, exponents drawn per study around published values, RULES.md §7):
  - lr*:  log lr* = c_lr + a_N log(N/N0) + a_D log(D/D0),   a_N ~ U(-0.9, -0.3), a_D ~ U(-0.1, 0.4),
    lr*(N0, D0) ~ logU(1e-3, 8e-3);
  - bs*:  log bs* = c_bs + b_D log(D/D0) + b_N log(N/N0),   b_D ~ U(0.3, 0.7), b_N ~ U(-0.15, 0.15),
    bs*(N0, D0) ~ logU(32, 256) sequences (batch is in sequences of `seq_len` ∈ {1024, 2048, 4096});
  - wd*:  log wd* = c_wd + w_W log(width/W0) + w_D log(D/D0), w_W ~ U(0, 0.8), w_D ~ U(-0.6, 0),
    wd*(W0, D0) ~ logU(0.01, 0.3) (AdamW λ).
  The truth is the *joint* optimum (lr*, bs*, wd*) of the loss surface below.
* **Loss surface** at a scale, with z = (log lr − log lr*, log bs − log bs*, log wd − log wd*):
  L = L0(N, D) · exp(f(z)),  f(z) = ½ zᵀHz · (1 + a_lr·tanh z_lr + a_bs·tanh z_bs),
  L0 = E + A/N^α + B/D^β (E ~ U(1.6, 2.1), A ~ U(300, 600), B ~ U(1000, 3000), α, β ~ U(0.3, 0.4)).
  H is positive definite with diagonal h_lr ~ U(0.012, 0.04), h_bs ~ U(0.005, 0.02),
  h_wd ~ U(0.003, 0.015) (log-loss per log-unit²); the LR–batch interaction makes the
  conditional optimum log lr rise with log bs at a slope s ~ U(0.2, 0.6) (H_lb = −s·h_lr, toward
  Adam's square-root rule) and the LR–wd interaction makes log wd fall with log lr at a slope
  t ~ U(0, 0.6) (toward η·λ invariance). Asymmetry a_lr ~ U(0.1, 0.5) (steeper at high lr),
  a_bs ~ U(-0.25, 0.25). Since |a_lr| + |a_bs| < 1, f > 0 away from z = 0: the minimum is
  exactly at the true optimum, at every scale.
* **Divergence**: a run with lr > r·lr* diverges (status "diverged", no loss), r ~ U(3, 4) per study.
* **Noise**: each completed run's loss is multiplied by (1 + σ·ε), ε ~ N(0, 1), σ ~ U(0.001, 0.003).
* **Outliers**: in 60% of studies, 1–3% of completed runs (at least one) have their loss
  multiplied by 1 ± U(0.05, 0.20) (sign at random); their row indices are in `truth.outliers`.
* **Proxies**: 2–4 model shapes (width from {256, …, 1536}, depth from {4, …, 24}, both drawn
  without replacement and sorted, so larger models are wider and deeper but the aspect ratio
  varies), n_params = 12·depth·width²; 2–3 token budgets per shape, D = m·N with the
  multiples m drawn from {5, 10, 20, 40, 80, 160}.
* **Grids** per scale: an lr × bs × wd grid centred on a *guess* (the truth shifted by
  N(0, 0.3) in log per axis, as a practitioner's guess would be): 5–8 lr values spaced by a
  factor U(√2, 2), 3–5 batch sizes and 3–4 weight decays spaced by 2; a random fraction
  U(0.5, 0.85) of the grid is kept (incomplete grid).
* **Targets** (`truth.targets((4, 16))`): k× beyond the largest proxy: n_params = k·max N,
  tokens = k·max D, width and depth of the largest-N shape each scaled by k^(1/3) (so
  12·depth·width² = n_params).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from fitting.runs import COMPLETED, DIVERGED, RunTable

N0, D0, W0 = 1e8, 2e9, 512.0
AXES = ("learning_rate", "batch_size", "weight_decay")
WIDTHS = (256.0, 384.0, 512.0, 640.0, 768.0, 1024.0, 1280.0, 1536.0)
DEPTHS = (4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 24.0)
TOKEN_MULTIPLES = (5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
_REF = {"n_params": N0, "tokens": D0, "width": W0}


@dataclass(frozen=True)
class TrueLaw:
    """log h* = const + Σ exponent_v · log(x_v / ref_v), ref = (N0, D0, W0)."""

    const: float
    exponents: Mapping[str, float]

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(sorted(self.exponents))

    def log_value(self, scale: Mapping[str, float]) -> float:
        return self.const + sum(a * math.log(float(scale[v]) / _REF[v]) for v, a in self.exponents.items())


@dataclass(frozen=True, eq=False)
class SyntheticTruth:
    """The generating model of one synthetic study (see the module docstring)."""

    seed: int
    laws: Mapping[str, TrueLaw]
    hessian: np.ndarray  # (3, 3), axes order AXES
    asymmetry: tuple[float, float]  # a_lr, a_bs
    divergence_factor: float
    noise: float
    loss_params: tuple[float, float, float, float, float]  # E, A, alpha, B, beta
    seq_len: float
    shapes: tuple[tuple[float, float], ...]  # (width, depth)
    token_multiples: tuple[float, ...]
    outliers: tuple[int, ...] = field(default=())

    # --- optimum -----------------------------------------------------------------------
    def log_optimum(self, n_params: float, tokens: float, width: float, depth: float | None = None) -> np.ndarray:
        """(log lr*, log bs*, log wd*) at a scale (depth does not enter the true laws)."""
        s = {"n_params": n_params, "tokens": tokens, "width": width}
        return np.array([self.laws[a].log_value(s) for a in AXES])

    def optimum(self, n_params: float, tokens: float, width: float, depth: float | None = None) -> dict[str, float]:
        """True optimal learning rate, batch size (sequences) and weight decay at a scale."""
        return dict(zip(AXES, np.exp(self.log_optimum(n_params, tokens, width, depth)).tolist()))

    def exponent(self, axis: str, variable: str) -> float:
        return float(self.laws[axis].exponents.get(variable, 0.0))

    def variables(self, axis: str) -> tuple[str, ...]:
        return self.laws[axis].variables

    # --- loss surface ------------------------------------------------------------------
    def base_loss(self, n_params: float, tokens: float) -> float:
        e, a, alpha, b, beta = self.loss_params
        return float(e + a / n_params**alpha + b / tokens**beta)

    def excess(self, z: np.ndarray) -> np.ndarray:
        """f(z) ≥ 0 (log-loss above the optimum) for z of shape (..., 3)."""
        z = np.asarray(z, dtype=float)
        q = 0.5 * np.einsum("...i,ij,...j->...", z, self.hessian, z)
        out: np.ndarray = q * (1.0 + self.asymmetry[0] * np.tanh(z[..., 0]) + self.asymmetry[1] * np.tanh(z[..., 1]))
        return out

    def loss(
        self,
        n_params: float,
        tokens: float,
        width: float,
        depth: float,
        learning_rate: npt.ArrayLike,
        batch_size: npt.ArrayLike,
        weight_decay: npt.ArrayLike,
    ) -> np.ndarray:
        """Noise-free final loss (diverged runs included: the formula does not know about divergence)."""
        mu = self.log_optimum(n_params, tokens, width, depth)
        z = np.stack(
            np.broadcast_arrays(
                np.log(learning_rate) - mu[0], np.log(batch_size) - mu[1], np.log(weight_decay) - mu[2]
            ),
            axis=-1,
        )
        loss: np.ndarray = self.base_loss(n_params, tokens) * np.exp(self.excess(z))
        return loss

    def diverges(
        self, n_params: float, tokens: float, width: float, depth: float, learning_rate: npt.ArrayLike
    ) -> np.ndarray:
        mu = self.log_optimum(n_params, tokens, width, depth)
        diverged: np.ndarray = np.log(learning_rate) - mu[0] > math.log(self.divergence_factor)
        return diverged

    # --- scales and targets --------------------------------------------------------------
    def proxy_scales(self) -> list[dict[str, float]]:
        out = []
        for w, d in self.shapes:
            n = 12.0 * d * w * w
            for m in self.token_multiples:
                out.append({"n_params": n, "tokens": m * n, "width": w, "depth": d})
        return out

    def targets(self, factors: Iterable[float] = (4.0, 16.0)) -> list[dict[str, float]]:
        """Targets k× beyond the largest proxy (n_params and tokens × k; width, depth × k^(1/3))."""
        scales = self.proxy_scales()
        big = max(scales, key=lambda s: s["n_params"])
        d_max = max(s["tokens"] for s in scales)
        out = []
        for k in factors:
            c = float(k) ** (1.0 / 3.0)
            w, dp = big["width"] * c, big["depth"] * c
            out.append(
                {"n_params": 12.0 * dp * w * w, "tokens": float(k) * d_max, "width": w, "depth": dp, "factor": float(k)}
            )
        return out


def random_truth(seed: int) -> SyntheticTruth:
    """The random true model of study `seed` (no runs)."""
    return _draw(np.random.default_rng([seed, 0x5EED]), seed)[0]


def _draw(rng: np.random.Generator, seed: int) -> tuple[SyntheticTruth, np.random.Generator]:
    u = rng.uniform
    laws = {
        "learning_rate": TrueLaw(
            u(math.log(1e-3), math.log(8e-3)), {"n_params": u(-0.9, -0.3), "tokens": u(-0.1, 0.4)}
        ),
        "batch_size": TrueLaw(u(math.log(32.0), math.log(256.0)), {"tokens": u(0.3, 0.7), "n_params": u(-0.15, 0.15)}),
        "weight_decay": TrueLaw(u(math.log(0.01), math.log(0.3)), {"width": u(0.0, 0.8), "tokens": u(-0.6, 0.0)}),
    }
    h_lr, h_bs, h_wd = u(0.012, 0.04), u(0.005, 0.02), u(0.003, 0.015)
    s, t = u(0.2, 0.6), u(0.0, 0.6)
    h_bs = max(h_bs, 1.5 * s * s * h_lr)
    H = np.array([[h_lr, -s * h_lr, t * h_wd], [-s * h_lr, h_bs, 0.0], [t * h_wd, 0.0, h_wd]])
    while np.linalg.eigvalsh(H).min() <= 0.2 * min(np.diag(H)):
        H[0, 2] = H[2, 0] = 0.7 * H[0, 2]  # shrink the lr–wd coupling until H is clearly positive definite
    n_shapes = int(rng.integers(2, 5))
    widths = np.sort(rng.choice(WIDTHS, n_shapes, replace=False))
    depths = np.sort(rng.choice(DEPTHS, n_shapes, replace=False))
    mults = np.sort(rng.choice(TOKEN_MULTIPLES, int(rng.integers(2, 4)), replace=False))
    truth = SyntheticTruth(
        seed=seed,
        laws=laws,
        hessian=H,
        asymmetry=(u(0.1, 0.5), u(-0.25, 0.25)),
        divergence_factor=u(3.0, 4.0),
        noise=u(0.001, 0.003),
        loss_params=(u(1.6, 2.1), u(300.0, 600.0), u(0.3, 0.4), u(1000.0, 3000.0), u(0.3, 0.4)),
        seq_len=float(rng.choice([1024.0, 2048.0, 4096.0])),
        shapes=tuple((float(w), float(d)) for w, d in zip(widths, depths)),
        token_multiples=tuple(float(m) for m in mults),
    )
    return truth, rng


def random_study(
    seed: int,
    *,
    noise: float | None = None,
    keep: float | None = None,
    outliers: bool = True,
    grid_step: float | None = None,
    grid_points: tuple[int, int, int] | None = None,
    guess_error: float = 0.3,
) -> tuple[RunTable, SyntheticTruth]:
    """A synthetic study with a random true law (module docstring); deterministic in `seed`.

    Overrides for tests: `noise` (relative σ), `keep` (fraction of the grid kept),
    `outliers=False`, `grid_step` (log spacing on every axis) and `grid_points`
    (lr, bs, wd counts), `guess_error` (log sd of the grid centre around the truth).
    """
    truth, rng = _draw(np.random.default_rng([seed, 0x5EED]), seed)
    sigma = truth.noise if noise is None else float(noise)
    frac = rng.uniform(0.5, 0.85) if keep is None else float(keep)
    recs = []
    for sc in truth.proxy_scales():
        mu = truth.log_optimum(sc["n_params"], sc["tokens"], sc["width"])
        counts = grid_points or (int(rng.integers(5, 9)), int(rng.integers(3, 6)), int(rng.integers(3, 5)))
        steps = (
            (grid_step,) * 3
            if grid_step
            else (rng.uniform(math.log(math.sqrt(2.0)), math.log(2.0)), math.log(2.0), math.log(2.0))
        )
        centre = mu + guess_error * rng.standard_normal(3)
        grids = [centre[j] + steps[j] * (np.arange(counts[j]) - (counts[j] - 1) / 2.0) for j in range(3)]
        g = np.stack(np.meshgrid(*grids, indexing="ij"), axis=-1).reshape(-1, 3)
        g = g[rng.random(len(g)) < frac] if frac < 1.0 else g
        lr, bs, wd = np.exp(g[:, 0]), np.exp(g[:, 1]), np.exp(g[:, 2])
        clean = truth.loss(sc["n_params"], sc["tokens"], sc["width"], sc["depth"], lr, bs, wd)
        loss = clean * (1.0 + sigma * rng.standard_normal(len(g)))
        div = truth.diverges(sc["n_params"], sc["tokens"], sc["width"], sc["depth"], lr)
        for i in range(len(g)):
            recs.append(
                {
                    **sc,
                    "seq_len": truth.seq_len,
                    "learning_rate": lr[i],
                    "batch_size": bs[i],
                    "weight_decay": wd[i],
                    "final_loss": None if div[i] else float(loss[i]),
                    "status": DIVERGED if div[i] else COMPLETED,
                }
            )
    out_idx: list[int] = []
    if outliers and rng.random() < 0.6:
        ok = [i for i, r in enumerate(recs) if r["status"] == COMPLETED]
        n_out = max(1, round(rng.uniform(0.01, 0.03) * len(ok)))
        out_idx = sorted(int(i) for i in rng.choice(ok, min(n_out, len(ok)), replace=False))
        for i in out_idx:
            recs[i]["final_loss"] *= 1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(0.05, 0.20)
    truth = replace(truth, outliers=tuple(out_idx))
    return RunTable.from_records(recs), truth


def lr_only_study(seed: int, n_runs: int = 3, *, noise: float = 0.002) -> tuple[RunTable, SyntheticTruth]:
    """`n_runs` runs at one scale (the truth's smallest proxy), lr spaced by 2× around a guess; bs, wd at their optimum."""
    truth, rng = _draw(np.random.default_rng([seed, 0x5EED]), seed)
    sc = truth.proxy_scales()[0]
    mu = truth.log_optimum(sc["n_params"], sc["tokens"], sc["width"])
    lr = np.exp(mu[0] + 0.2 * rng.standard_normal() + math.log(2.0) * (np.arange(n_runs) - (n_runs - 1) / 2.0))
    bs, wd = math.exp(mu[1]), math.exp(mu[2])
    clean = truth.loss(sc["n_params"], sc["tokens"], sc["width"], sc["depth"], lr, bs, wd)
    loss = clean * (1.0 + noise * rng.standard_normal(n_runs))
    recs = [
        {
            **sc,
            "seq_len": truth.seq_len,
            "learning_rate": lr[i],
            "batch_size": bs,
            "weight_decay": wd,
            "final_loss": float(loss[i]),
        }
        for i in range(n_runs)
    ]
    return RunTable.from_records(recs), truth


__all__ = ["AXES", "SyntheticTruth", "TrueLaw", "lr_only_study", "random_study", "random_truth"]

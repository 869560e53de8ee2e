"""Synthetic studies with random true laws, for validating the fitting engine on a known truth.

`random_study(seed, kind=...)` returns `(RunTable, SyntheticTruth)`. The truth knows the optimum
of every hyperparameter at any scale, so a fit's predictions and 90% intervals can be checked at
targets beyond the proxies (`SyntheticTruth.targets`), and the exact loss penalty ("regret") of
any recommendation can be read off the true loss surface (`SyntheticTruth.regret`).

**The true exponents are drawn independently of the published centres the priors use**
(`fitting.published`, RULES.md §7): uniform over wide ranges that include values 2–3 prior
standard deviations away, so that a prior that is wrong for a study is tested, not assumed.

Model (natural logs; reference scale N0 = 1e8 parameters, D0 = 2e9 tokens, W0 = 512, L0 = 8 layers):

* **Optimum laws**: log h* = c + Σ_v a_v log(x_v / ref_v) over width, depth, tokens (and n_params
  for the batch law). Ranges per kind below; the constant is log-uniform over a plausible range.
* **Loss surface** at a scale, z = log h − log h* over (lr, bs, wd):
  L = L0(N, D) · exp(f(z)), f(z) = ½ zᵀHz · (1 + a_lr·tanh z_lr + a_bs·tanh z_bs),
  L0 = E + A/N^α + B/D^β. H is positive definite (LR–batch coupling toward Adam's square-root
  rule, LR–wd coupling toward η·λ invariance); |a_lr| + |a_bs| < 1 so f > 0 away from z = 0 and
  the minimum is exactly the true optimum. An axis a kind does not sweep is held at a fixed value
  (its "law" is that constant), so z = 0 on it and the swept optima are conditional on it.
* **Scatter**: each scale's true optimum sits off its law by N(0, τ²) in log, τ ~ U(0, 0.15) per axis
  (a fixed function of the study and the scale, targets included): real optima scatter around
  any power law by a few percent.
* **Divergence**: a run with lr > r·lr* diverges (status "diverged", no loss), r ~ U(3, 4).
* **Noise**: loss × (1 + σ·ε), σ ~ U(0.001, 0.003). **Outliers** (kind "sp" only): in 60% of
  studies 1–3% of completed runs are off by ±U(5%, 20%); their indices are in `truth.outliers`.

Kinds (`KINDS`):

* ``"sp"`` — standard parameterization, AdamW, batch free: an lr × bs × wd grid per scale.
  lr*: width^U(−1.1, −0.6) · depth^U(−0.6, −0.1) · tokens^U(−0.3, 0.1);
  bs*: tokens^U(0.3, 0.6) · n_params^U(−0.2, 0.2); wd*: width^U(−0.3, 0.9) · tokens^U(−1.3, −0.2).
  2–4 shapes (widths 256–1536 and depths 4–24 drawn separately, so the aspect ratio varies),
  2–3 token budgets D = m·N per shape, m ∈ {5, …, 160}. Grids centred on a guess (truth +
  N(0, 0.3) per axis): 5–8 lr values ×U(√2, 2), 3–5 batch sizes ×2, 3–4 weight decays ×2; a
  random 50–85% of the grid is kept. Targets k× beyond the largest proxy in n_params and tokens,
  width and depth × k^(1/3).
* ``"coarse"`` — open_lm-style: AdamW, one batch size for every run, learning rate on a ×2 grid
  of 3 points centred on a rough guess (truth + N(0, 0.45)), so the best run is often at the
  sweep's edge; 5–9 shapes (width 384–2048, depth 4–28), tokens = 20·N. lr* as in "sp".
  Targets: a shape with n_params k× the largest proxy, tokens 20·N.
* ``"horizon"`` — one model, one batch size, learning rate swept (5 values ×U(√2, 2)) at 5
  token budgets 2× apart; lr* ∝ tokens^U(−0.6, 0.15); optimizer "adamw" or "muon" (no published
  prior applies to the latter). Targets: the same model trained on k× the largest budget.
* ``"mup"`` — μP, AdamW, one batch size: widths 128–2048 (4–5 values ×2), one or two depths,
  one token budget per width (D = 20·N); lr* ∝ width^U(−0.35, 0.35) · depth^U(−0.3, 0.3) ·
  tokens^U(−0.3, 0.1) (μP transfers when the width exponent is ~0). Targets: width × k, same
  depth and tokens per parameter.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from fitting.runs import COMPLETED, DIVERGED, RunTable

N0, D0, W0, DEPTH0 = 1e8, 2e9, 512.0, 8.0
AXES = ("learning_rate", "batch_size", "weight_decay")
KINDS = ("sp", "coarse", "horizon", "mup")
WIDTHS = (256.0, 384.0, 512.0, 640.0, 768.0, 1024.0, 1280.0, 1536.0)
DEPTHS = (4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 24.0)
TOKEN_MULTIPLES = (5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
CHINCHILLA = 20.0
# True optima scatter around their law by up to this (log sd): real sweeps' optima sit off any power
# law — the laws fitted to the shared real files put that scatter at 0.05–0.17 (Step Law: lr 0.09,
# batch 0.05; the 11 Marin optimizers: 0.07–0.17) — so an exactly-on-law truth would flatter no one.
MAX_SCATTER = 0.15
_REF = {"n_params": N0, "tokens": D0, "width": W0, "depth": DEPTH0}


def n_params_of(width: float, depth: float) -> float:
    """Non-embedding parameters of a transformer shape: 12·depth·width²."""
    return 12.0 * depth * width * width


@dataclass(frozen=True)
class TrueLaw:
    """log h* = const + Σ exponent_v · log(x_v / ref_v), ref = (N0, D0, W0, DEPTH0)."""

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
    token_multiples: tuple[float, ...]  # D = m·N per shape (kinds sp, coarse, mup)
    kind: str = "sp"
    swept: tuple[str, ...] = AXES  # the axes the grids vary; the others are held at their law's constant
    token_budgets: tuple[float, ...] = ()  # absolute D per shape (kind horizon)
    optimizer: str = "adamw"
    parameterization: str = "sp"
    outliers: tuple[int, ...] = field(default=())
    # Per axis, the log sd of the true optima's scatter around their law (0: exactly on it).
    scatter: tuple[float, float, float] = (0.0, 0.0, 0.0)

    # --- optimum -----------------------------------------------------------------------
    def log_optimum(self, n_params: float, tokens: float, width: float, depth: float) -> np.ndarray:
        """(log lr*, log bs*, log wd*) at a scale; a non-swept axis gives its fixed value.

        The law's value plus the scale's own deviation from it (`scatter`), a fixed function of
        the study and the scale, so proxies and targets alike sit a little off the law.
        """
        s = {"n_params": n_params, "tokens": tokens, "width": width, "depth": depth}
        law = np.array([self.laws[a].log_value(s) for a in AXES])
        if not any(self.scatter):
            return law
        key = [self.seed, *(round(abs(math.log(float(v))) * 1e6) for v in (n_params, tokens, width, depth))]
        return law + np.asarray(self.scatter) * np.random.default_rng(key).standard_normal(3)

    def optimum(self, n_params: float, tokens: float, width: float, depth: float) -> dict[str, float]:
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

    def regret(self, scale: Mapping[str, float], settings: Mapping[str, float | None]) -> float:
        """Relative excess loss at `settings` (missing or None axes at their optimum) over the optimum."""
        mu = self.log_optimum(scale["n_params"], scale["tokens"], scale["width"], scale["depth"])
        z = np.zeros(3)
        for j, a in enumerate(AXES):
            v = settings.get(a)
            if v is not None and a in self.swept:
                z[j] = math.log(float(v)) - mu[j]
        return float(math.expm1(min(float(self.excess(z)), 50.0)))  # capped: a wild guess stays a finite number

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
            n = n_params_of(w, d)
            budgets = self.token_budgets or tuple(m * n for m in self.token_multiples)
            for tokens in budgets:
                out.append({"n_params": n, "tokens": float(tokens), "width": w, "depth": d})
        return out

    def targets(self, factors: Iterable[float] = (4.0, 16.0)) -> list[dict[str, float]]:
        """Targets k× beyond the proxies, per kind (module docstring); each carries its `factor`."""
        scales = self.proxy_scales()
        big = max(scales, key=lambda s: (s["n_params"], s["tokens"]))
        d_max = max(s["tokens"] for s in scales)
        out = []
        for factor in factors:
            k = float(factor)
            if self.kind == "horizon":
                w, dp, tokens = big["width"], big["depth"], k * d_max
            elif self.kind == "mup":
                w, dp = big["width"] * k, big["depth"]
                tokens = big["tokens"] / big["n_params"] * n_params_of(w, dp)
            else:
                c = k ** (1.0 / 3.0)
                w, dp = big["width"] * c, big["depth"] * c
                tokens = CHINCHILLA * n_params_of(w, dp) if self.kind == "coarse" else k * d_max
            out.append({"n_params": n_params_of(w, dp), "tokens": tokens, "width": w, "depth": dp, "factor": k})
        return out

    def study_options(self) -> dict[str, str]:
        """What the study would declare: its optimizer and parameterization."""
        return {"optimizer": self.optimizer, "parameterization": self.parameterization}


def random_truth(seed: int, kind: str = "sp") -> SyntheticTruth:
    """The random true model of study `seed` of `kind` (no runs)."""
    return _draw(_rng(seed, kind), seed, kind)


def _rng(seed: int, kind: str) -> np.random.Generator:
    return np.random.default_rng([seed, 0x5EED, KINDS.index(kind)])


def _log_u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(math.log(lo), math.log(hi)))


def _hessian(rng: np.random.Generator, swept: tuple[str, ...]) -> np.ndarray:
    """A clearly positive-definite curvature over (lr, bs, wd); non-swept axes get a nominal diagonal."""
    u = rng.uniform
    h_lr, h_bs, h_wd = u(0.012, 0.04), u(0.005, 0.02), u(0.003, 0.015)
    s = u(0.2, 0.6) if "batch_size" in swept else 0.0
    t = u(0.0, 0.6) if "weight_decay" in swept else 0.0
    h_bs = max(h_bs, 1.5 * s * s * h_lr)
    H = np.array([[h_lr, -s * h_lr, t * h_wd], [-s * h_lr, h_bs, 0.0], [t * h_wd, 0.0, h_wd]])
    while np.linalg.eigvalsh(H).min() <= 0.2 * min(np.diag(H)):
        H[0, 2] = H[2, 0] = 0.7 * H[0, 2]  # shrink the lr–wd coupling until H is clearly positive definite
    return H


def _draw(rng: np.random.Generator, seed: int, kind: str) -> SyntheticTruth:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    u = rng.uniform
    lr_const = _log_u(rng, 1e-3, 8e-3)
    fixed_bs = TrueLaw(_log_u(rng, 64.0, 512.0), {})
    fixed_wd = TrueLaw(math.log(0.1), {})
    optimizer, parameterization = "adamw", "sp"
    swept: tuple[str, ...] = ("learning_rate",)
    token_multiples: tuple[float, ...] = ()
    budgets: tuple[float, ...] = ()
    if kind == "sp":
        swept = AXES
        laws = {
            "learning_rate": TrueLaw(
                lr_const, {"width": u(-1.1, -0.6), "depth": u(-0.6, -0.1), "tokens": u(-0.3, 0.1)}
            ),
            "batch_size": TrueLaw(_log_u(rng, 32.0, 256.0), {"tokens": u(0.3, 0.6), "n_params": u(-0.2, 0.2)}),
            "weight_decay": TrueLaw(_log_u(rng, 0.01, 0.3), {"width": u(-0.3, 0.9), "tokens": u(-1.3, -0.2)}),
        }
        k = int(rng.integers(2, 5))
        shapes = list(zip(np.sort(rng.choice(WIDTHS, k, replace=False)), np.sort(rng.choice(DEPTHS, k, replace=False))))
        token_multiples = tuple(float(m) for m in np.sort(rng.choice(TOKEN_MULTIPLES, int(rng.integers(2, 4)), False)))
    elif kind == "coarse":
        laws = {
            "learning_rate": TrueLaw(
                lr_const, {"width": u(-1.1, -0.6), "depth": u(-0.6, -0.1), "tokens": u(-0.3, 0.1)}
            ),
            "batch_size": fixed_bs,
            "weight_decay": fixed_wd,
        }
        k = int(rng.integers(5, 10))
        widths = np.sort(rng.choice(np.arange(384.0, 2049.0, 128.0), k, replace=False))
        depths = np.sort(rng.choice(np.arange(4.0, 29.0, 1.0), k, replace=False))
        shapes = list(zip(widths, depths))
        token_multiples = (CHINCHILLA,)
    elif kind == "horizon":
        optimizer = "adamw" if rng.random() < 0.5 else "muon"
        laws = {
            "learning_rate": TrueLaw(lr_const, {"tokens": u(-0.6, 0.15)}),
            "batch_size": fixed_bs,
            "weight_decay": fixed_wd,
        }
        shapes = [(768.0, 12.0)]
        d_min = _log_u(rng, 5e8, 4e9)
        budgets = tuple(float(math.exp(d_min) * 2.0**i) for i in range(5))
    else:  # mup
        parameterization = "mup"
        laws = {
            "learning_rate": TrueLaw(
                lr_const, {"width": u(-0.35, 0.35), "depth": u(-0.3, 0.3), "tokens": u(-0.3, 0.1)}
            ),
            "batch_size": fixed_bs,
            "weight_decay": fixed_wd,
        }
        w0 = float(rng.choice([128.0, 256.0]))
        mup_depths = [8.0] if rng.random() < 0.5 else [6.0, 12.0]
        shapes = [(w0 * 2.0**i, d) for i in range(int(rng.integers(4, 6))) for d in mup_depths]
        token_multiples = (CHINCHILLA,)
    scatter = tuple(float(u(0.0, MAX_SCATTER)) if a in swept else 0.0 for a in AXES)
    return SyntheticTruth(
        seed=seed,
        laws=laws,
        scatter=scatter,  # type: ignore[arg-type]
        hessian=_hessian(rng, swept),
        asymmetry=(u(0.1, 0.5), u(-0.25, 0.25) if "batch_size" in swept else 0.0),
        divergence_factor=u(3.0, 4.0),
        noise=u(0.001, 0.003),
        loss_params=(u(1.6, 2.1), u(300.0, 600.0), u(0.3, 0.4), u(1000.0, 3000.0), u(0.3, 0.4)),
        seq_len=float(rng.choice([1024.0, 2048.0, 4096.0])),
        shapes=tuple((float(w), float(d)) for w, d in shapes),
        token_multiples=token_multiples,
        kind=kind,
        swept=swept,
        token_budgets=budgets,
        optimizer=optimizer,
        parameterization=parameterization,
    )


def _grid_spec(
    truth: SyntheticTruth, rng: np.random.Generator
) -> tuple[tuple[int, int, int], tuple[float, float, float], float]:
    """(points per axis, log step per axis, log sd of the grid centre's guess) of one scale's sweep."""
    if truth.kind == "sp":
        counts = (int(rng.integers(5, 9)), int(rng.integers(3, 6)), int(rng.integers(3, 5)))
        return counts, (float(rng.uniform(math.log(math.sqrt(2.0)), math.log(2.0))), math.log(2.0), math.log(2.0)), 0.3
    if truth.kind == "coarse":
        return (3, 1, 1), (math.log(2.0), 0.0, 0.0), 0.45
    if truth.kind == "horizon":
        return (5, 1, 1), (float(rng.uniform(math.log(math.sqrt(2.0)), math.log(2.0))), 0.0, 0.0), 0.3
    return (int(rng.integers(5, 8)), 1, 1), (math.log(2.0), 0.0, 0.0), 0.3


def random_study(
    seed: int,
    *,
    kind: str = "sp",
    noise: float | None = None,
    keep: float | None = None,
    outliers: bool = True,
    grid_step: float | None = None,
    grid_points: tuple[int, int, int] | None = None,
    guess_error: float | None = None,
) -> tuple[RunTable, SyntheticTruth]:
    """A synthetic study of `kind` with a random true law (module docstring); deterministic in `seed`.

    Overrides for tests: `noise` (relative σ), `keep` (fraction of the grid kept), `outliers=False`,
    `grid_step` (log spacing on every swept axis) and `grid_points` (lr, bs, wd counts),
    `guess_error` (log sd of the grid centre around the truth).
    """
    rng = _rng(seed, kind)
    truth = _draw(rng, seed, kind)
    return sample_runs(
        truth,
        rng,
        noise=noise,
        keep=keep,
        outliers=outliers,
        grid_step=grid_step,
        grid_points=grid_points,
        guess_error=guess_error,
    )


def sample_runs(
    truth: SyntheticTruth,
    rng: np.random.Generator,
    *,
    noise: float | None = None,
    keep: float | None = None,
    outliers: bool = True,
    grid_step: float | None = None,
    grid_points: tuple[int, int, int] | None = None,
    guess_error: float | None = None,
) -> tuple[RunTable, SyntheticTruth]:
    """The sweeps of every proxy scale of `truth` (its kind's grids), with noise and outliers drawn from `rng`.

    Tests build a truth of their own (`dataclasses.replace(random_truth(...), laws=...)`) and sample it here.
    """
    kind = truth.kind
    sigma = truth.noise if noise is None else float(noise)
    frac = (rng.uniform(0.5, 0.85) if kind == "sp" else 1.0) if keep is None else float(keep)
    recs = []
    for sc in truth.proxy_scales():
        mu = truth.log_optimum(sc["n_params"], sc["tokens"], sc["width"], sc["depth"])
        counts, steps, guess_sd = _grid_spec(truth, rng)
        if grid_points is not None:
            counts = tuple(c if a in truth.swept else 1 for c, a in zip(grid_points, AXES))  # type: ignore[assignment]
        if grid_step is not None:
            steps = tuple(grid_step if a in truth.swept else 0.0 for a in AXES)  # type: ignore[assignment]
        sd = guess_sd if guess_error is None else float(guess_error)
        centre = mu + np.array([sd if a in truth.swept else 0.0 for a in AXES]) * rng.standard_normal(3)
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
    if outliers and kind == "sp" and rng.random() < 0.6:
        ok = [i for i, r in enumerate(recs) if r["status"] == COMPLETED]
        n_out = max(1, round(rng.uniform(0.01, 0.03) * len(ok)))
        out_idx = sorted(int(i) for i in rng.choice(ok, min(n_out, len(ok)), replace=False))
        for i in out_idx:
            recs[i]["final_loss"] *= 1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(0.05, 0.20)
    truth = replace(truth, outliers=tuple(out_idx))
    return RunTable.from_records(recs), truth


def lr_only_study(seed: int, n_runs: int = 3, *, noise: float = 0.002) -> tuple[RunTable, SyntheticTruth]:
    """`n_runs` runs at one scale (the truth's smallest proxy), lr spaced by 2× around a guess; bs, wd at their optimum."""
    rng = _rng(seed, "sp")
    truth = _draw(rng, seed, "sp")
    sc = truth.proxy_scales()[0]
    mu = truth.log_optimum(sc["n_params"], sc["tokens"], sc["width"], sc["depth"])
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


__all__ = [
    "AXES",
    "KINDS",
    "SyntheticTruth",
    "TrueLaw",
    "lr_only_study",
    "n_params_of",
    "random_study",
    "random_truth",
    "sample_runs",
]

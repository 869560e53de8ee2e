"""Published results, in one place: the laws used as baselines and the priors on exponents.

Everything here is read from `../shared/docs/RULES.md` (its section numbers are cited).
The baselines (`fitting.baselines`), the backtests (`fitting.backtest`) and the priors of
the study's own laws (`fitting.laws`) all take their numbers from this module.

A prior is on one exponent of `log h* = c + Σ a_x log x`. It is a two-component Gaussian
mixture, so that it yields to data that contradict it (RULES.md §7: "give every prior a heavy
tail ... a study whose scales contradict the centre must end at its own data"):

* a **published** prior is N(centre, spread²) with weight 1 − PRIOR_TAIL_WEIGHT plus a heavy
  tail N(centre, PRIOR_TAIL_SD²) with weight PRIOR_TAIL_WEIGHT. The spread is how much published
  results disagree with each other, not the confidence interval of one paper. Each row applies
  only to studies that match its basis (optimizer family, parameterization, batch free or
  fixed); `exponent_priors` says which rows applied and why the others did not.
* where nothing published applies, the exponent gets the **default** prior N(0, DEFAULT_EXPONENT_SD²)
  with the same heavy tail: weakly informative, so a variable the proxies never moved keeps an
  honest spread and the interval at a target that moves it widens accordingly.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

# Training FLOPs per parameter per token (forward + backward): C = 6·N·D.
FLOPS_PER_PARAM_TOKEN = 6.0

# RULES.md §4 — Step Law (arXiv 2503.04715): η* = 1.7973·N^-0.7129·D^0.3075; B* = 0.5807·D^0.5709 tokens.
STEP_LAW_LR_PREFACTOR = 1.7973
STEP_LAW_LR_EXPONENTS: Mapping[str, float] = {"n_params": -0.7129, "tokens": 0.3075}
STEP_LAW_BATCH_TOKENS_PREFACTOR = 0.5807
STEP_LAW_BATCH_TOKENS_EXPONENTS: Mapping[str, float] = {"tokens": 0.5709}
# Step Law's near-optimal band: runs within 0.25% of a setting's best loss (RULES.md §6).
STEP_LAW_NEAR_OPTIMAL = 0.0025

# RULES.md §4 — DeepSeek LLM (arXiv 2401.02954): η* = 0.3118·C^-0.1250; B* = 0.2920·C^0.3271 tokens.
DEEPSEEK_LR_PREFACTOR = 0.3118
DEEPSEEK_LR_EXPONENT = -0.1250
DEEPSEEK_BATCH_TOKENS_PREFACTOR = 0.2920
DEEPSEEK_BATCH_TOKENS_EXPONENT = 0.3271
# Compute-optimal allocation, (prefactor, exponent) of C: M* = 0.1715·C^0.5243, D* = 5.8316·C^0.4757.
DEEPSEEK_ALLOCATION: Mapping[str, tuple[float, float]] = {
    "flops_per_token": (0.1715, 0.5243),
    "tokens": (5.8316, 0.4757),
}

# The heavy tail of every published prior: its share and its spread (a Student-t with few
# degrees of freedom is a continuous version of the same idea). With a 20% tail, data that sit
# ~2.5 published spreads from the centre already make the tail the likelier component.
PRIOR_TAIL_WEIGHT = 0.2
PRIOR_TAIL_SD = 1.0
# Where nothing is published: a weakly informative N(0, DEFAULT_EXPONENT_SD²) with the same heavy
# tail. Published exponents of hyperparameter laws lie within about ±1 (RULES.md §4, §7), so a
# spread of 0.5 says "an exponent of order one either way" and lets two scales far apart decide.
DEFAULT_EXPONENT_SD = 0.5
# Law constants depend on architecture, tokenizer and data (RULES.md §7): effectively flat.
CONSTANT_SD = 10.0

MUP_FAMILY = ("mup", "depth-mup", "completep")
ADAM_FAMILY = ("adam", "adamw", "nadam", "nadamw", "adafactor", "lamb")
# The law variables per parameterization. Standard parameterization: size, data and shape as
# the aspect ratio width/depth (at fixed N and D the optima barely depend on shape, RULES.md §7,
# so shape is one variable with its own prior instead of free width and depth exponents that
# extrapolate along directions the proxies never moved). μP family: width, depth and data,
# whose exponents are what the parameterization is meant to zero.
SP_BASIS = ("n_params", "tokens", "aspect")
MUP_BASIS = ("width", "depth", "tokens")
# Batch regimes, read from the runs (`fitting.study_fit.batch_regime`).
BATCH_FREE, BATCH_FIXED, BATCH_SET = "free", "fixed", "set"


@dataclass(frozen=True)
class ExponentPrior:
    """Mixture prior on one exponent: N(mean, sd²) w.p. 1 − tail_weight, N(mean, tail_sd²) w.p. tail_weight.

    `sources` are short ids of the publications behind it (empty: the default prior, not a
    published one); `source` says it in words.
    """

    mean: float
    sd: float
    source: str
    sources: tuple[str, ...] = ()
    tail_weight: float = PRIOR_TAIL_WEIGHT
    tail_sd: float = PRIOR_TAIL_SD

    @property
    def published(self) -> bool:
        return bool(self.sources)

    def components(self) -> tuple[tuple[float, float, float], ...]:
        """(weight, mean, sd) of each mixture component: the centre first, then the tail."""
        return ((1.0 - self.tail_weight, self.mean, self.sd), (self.tail_weight, self.mean, self.tail_sd))

    def to_dict(self) -> dict[str, object]:
        return {
            "mean": self.mean,
            "sd": self.sd,
            "source": self.source,
            "sources": list(self.sources),
            "tail_weight": self.tail_weight,
            "tail_sd": self.tail_sd,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> ExponentPrior:
        return cls(
            float(d["mean"]),  # type: ignore[arg-type]
            float(d["sd"]),  # type: ignore[arg-type]
            str(d["source"]),
            tuple(d.get("sources", ())),  # type: ignore[arg-type]
            float(d.get("tail_weight", PRIOR_TAIL_WEIGHT)),  # type: ignore[arg-type]
            float(d.get("tail_sd", PRIOR_TAIL_SD)),  # type: ignore[arg-type]
        )


DEFAULT = ExponentPrior(
    0.0,
    DEFAULT_EXPONENT_SD,
    f"none published: weakly informative N(0, {DEFAULT_EXPONENT_SD:g}²) with the same heavy tail",
    (),
)

# RULES.md §7, one entry per row: (axis, variable, centre, spread, words, source ids).
_STEP_LAW_N = (
    "learning_rate",
    "n_params",
    -0.71,
    0.35,
    "Step Law N^-0.713 at fixed D; DeepSeek",
    ("steplaw", "deepseek"),
)
_STEP_LAW_D = ("learning_rate", "tokens", 0.31, 0.20, "Step Law D^+0.307 (batch growing with D)", ("steplaw",))
_HORIZON_D = (
    "learning_rate",
    "tokens",
    -0.32,
    0.20,
    "token horizon at a fixed batch (Bjorck et al.; HyperP)",
    ("bjorck", "hyperp"),
)
_SHAPE = "shape invariance at fixed N and D (Step Law; Kaplan et al.)"
_BATCH_D = (
    "batch_size",
    "tokens",
    0.57,
    0.15,
    "Step Law D^0.571; critical batch grows with D (Zhang et al.)",
    ("steplaw", "zhang", "powerlines"),
)
_BATCH_N = "independent of N at fixed D (Step Law, Zhang et al., Power Lines)"
_WD_D = (
    "weight_decay",
    "tokens",
    -1.0,
    0.3,
    "constant τ-fraction (Wang & Aitchison; Power Lines)",
    ("wang-aitchison", "powerlines"),
)


def _prior(row: tuple[str, str, float, float, str, tuple[str, ...]]) -> ExponentPrior:
    return ExponentPrior(row[2], row[3], row[4], row[5])


def is_adam_type(optimizer: str) -> bool:
    return any(optimizer.lower().replace("-", "").replace("_", "").startswith(a) for a in ADAM_FAMILY)


def law_basis(parameterization: str) -> tuple[str, ...]:
    """The law variables of a parameterization (before dropping what the runs do not give)."""
    return MUP_BASIS if parameterization in MUP_FAMILY else SP_BASIS


def exponent_priors(
    axis: str,
    parameterization: str = "sp",
    optimizer: str = "adamw",
    *,
    batch: str = BATCH_FREE,
    exclude_sources: Collection[str] = (),
) -> tuple[dict[str, ExponentPrior], list[str]]:
    """Published priors per law variable of one hyperparameter that apply to this study, and why others do not.

    A row of RULES.md §7 applies only where its basis matches: the learning-rate and batch laws
    are Adam-type results; Step Law's learning-rate exponents hold with the batch free (swept,
    `batch="free"`), the token horizon's with one batch for every run (`"fixed"`); neither holds
    when the batch changes between scales by the user's rule (`"set"`). A prior any of whose
    sources is in `exclude_sources` is left out (leave-source-out validation). Variables absent
    from the result get the default prior (`DEFAULT`).
    """
    adam = is_adam_type(optimizer)
    mup = parameterization in MUP_FAMILY
    rows: list[tuple[str, str, float, float, str, tuple[str, ...]]] = []
    notes: list[str] = []
    if axis in ("learning_rate", "batch_size") and not adam:
        notes.append(
            f"no published prior: the published learning-rate and batch-size laws are for Adam-type optimizers, "
            f"and {optimizer!r} is not one; the exponents are the data's"
        )
    elif axis == "learning_rate":
        if batch == BATCH_FREE and not mup:
            rows += [_STEP_LAW_N, _STEP_LAW_D]
        elif batch == BATCH_FIXED:
            rows.append(_HORIZON_D)
            if not mup:
                notes.append(
                    "every run uses one batch size: Step Law's N and D exponents (which hold with the batch "
                    "growing with D) do not apply; the token-horizon prior at a fixed batch does"
                )
        elif not mup:
            notes.append(
                "the batch size is not swept together with the learning rate (it changes between scales, or one "
                "hyperparameter at a time): each learning-rate optimum is conditional on a chosen batch, so neither "
                "Step Law's exponents (batch optimised) nor the fixed-batch token horizon apply to its N and D exponents"
            )
        if mup:
            rows.append(
                ("learning_rate", "width", 0.0, 0.15, "μTransfer: Adam LR independent of width under μP", ("mup",))
            )
            if parameterization in ("depth-mup", "completep"):
                rows.append(
                    (
                        "learning_rate",
                        "depth",
                        0.0,
                        0.15,
                        f"{parameterization}: LR independent of depth",
                        (parameterization,),
                    )
                )
        else:
            rows.append(("learning_rate", "aspect", 0.0, 0.10, _SHAPE, ("steplaw", "kaplan")))
    elif axis == "batch_size":
        rows.append(_BATCH_D)
        if mup:
            rows += [
                ("batch_size", v, 0.0, 0.15, _BATCH_N, ("steplaw", "zhang", "powerlines")) for v in ("width", "depth")
            ]
        else:
            rows.append(("batch_size", "n_params", 0.0, 0.15, _BATCH_N, ("steplaw", "zhang", "powerlines")))
            rows.append(("batch_size", "aspect", 0.0, 0.10, _SHAPE, ("steplaw", "kaplan")))
    elif axis == "weight_decay":
        if not adam:
            notes.append(f"no published weight-decay prior for {optimizer!r} (the published ones are AdamW's λ)")
        else:
            if batch == BATCH_FIXED:
                rows.append(_WD_D)
            if mup:
                rows.append(("weight_decay", "width", 0.5, 0.3, "robust layerwise scaling λ ∝ √d under μP", ("fan",)))
    out: dict[str, ExponentPrior] = {}
    dropped = []
    for row in rows:
        if set(row[5]) & set(exclude_sources):
            dropped.append(f"{row[1]} ({row[4]})")
            continue
        out[row[1]] = _prior(row)
    if dropped:
        notes.append(
            f"priors citing {', '.join(sorted(set(exclude_sources)))} left out (leave-source-out): "
            + "; ".join(dropped)
        )
    return out, notes

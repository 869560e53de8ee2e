"""Published results, in one place: the laws used as baselines and the priors on exponents.

Everything here is read from `../shared/docs/RULES.md` (its section numbers are cited).
The baselines (`fitting.baselines`), the backtests (`fitting.backtest`) and the priors of
the study's own laws (`fitting.laws`) all take their numbers from this module.

A prior is a Gaussian on one exponent of `log h* = c + Σ a_x log x`: its centre is the
published value and its spread is how much published results disagree with each other
(RULES.md §7), not the confidence interval of any one paper, so a study with several
well-separated scales still overrides it.
"""

from __future__ import annotations

from collections.abc import Mapping
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

# Exponents without a published centre still get a proper, deliberately vague prior: it
# lets model averaging weigh variable sets by their evidence (an improper prior would make
# every extra variable free) and is wide enough that any data with two scales override it.
VAGUE_EXPONENT_SD = 1.0
# Law constants depend on architecture, tokenizer and data (RULES.md §7): effectively flat.
CONSTANT_SD = 10.0

MUP_FAMILY = ("mup", "depth-mup", "completep")
ADAM_FAMILY = ("adam", "adamw", "nadam", "nadamw", "adafactor", "lamb")


@dataclass(frozen=True)
class ExponentPrior:
    """N(mean, sd²) on one exponent; `source` says where it comes from."""

    mean: float
    sd: float
    source: str

    @property
    def published(self) -> bool:
        return self.source != VAGUE.source

    def to_dict(self) -> dict[str, float | str]:
        return {"mean": self.mean, "sd": self.sd, "source": self.source}


VAGUE = ExponentPrior(0.0, VAGUE_EXPONENT_SD, "none published: vague N(0, 1)")


def exponent_priors(
    axis: str, parameterization: str = "sp", optimizer: str = "adamw", *, batch_fixed: bool = False
) -> dict[str, ExponentPrior]:
    """Published priors per law variable for one hyperparameter (RULES.md §7); absent → VAGUE.

    `batch_fixed`: the study trains every scale at one batch size, so the learning rate's
    token exponent is the fixed-batch token-horizon one (−0.32), not Step Law's +0.31
    (whose batch grows with D), and the weight-decay token exponent is the constant-τ one.
    Learning-rate and batch priors are for Adam-type optimizers only.
    """
    adam = any(optimizer.lower().replace("-", "").startswith(a) for a in ADAM_FAMILY)
    out: dict[str, ExponentPrior] = {}
    if axis == "learning_rate" and adam:
        if parameterization == "sp":
            out["n_params"] = ExponentPrior(-0.71, 0.25, "Step Law N^-0.713 at fixed D; DeepSeek")
            if batch_fixed:
                out["tokens"] = ExponentPrior(-0.32, 0.15, "token horizon at a fixed batch (Bjorck et al.; HyperP)")
            else:
                out["tokens"] = ExponentPrior(0.31, 0.20, "Step Law D^+0.307 with the batch growing with D")
            out["compute"] = ExponentPrior(DEEPSEEK_LR_EXPONENT, 0.25, "DeepSeek C^-0.125")
        if parameterization in MUP_FAMILY:
            out["width"] = ExponentPrior(0.0, 0.15, "μTransfer: Adam LR independent of width under μP")
        if parameterization in ("depth-mup", "completep"):
            out["depth"] = ExponentPrior(0.0, 0.15, f"{parameterization}: LR independent of depth")
    elif axis == "batch_size" and adam:
        out["tokens"] = ExponentPrior(0.57, 0.15, "Step Law D^0.571; critical batch grows with D")
        out["n_params"] = ExponentPrior(0.0, 0.15, "Step Law, Zhang et al., Power Lines: independent of N at fixed D")
        out["compute"] = ExponentPrior(DEEPSEEK_BATCH_TOKENS_EXPONENT, 0.20, "DeepSeek C^0.327")
    elif axis == "weight_decay":
        if batch_fixed:
            out["tokens"] = ExponentPrior(-1.0, 0.3, "constant τ-fraction (Wang & Aitchison; Power Lines)")
        if parameterization in MUP_FAMILY:
            out["width"] = ExponentPrior(0.5, 0.3, "robust layerwise scaling λ ∝ √d under μP")
    return out

"""Published learning-rate and batch-size laws (RULES.md §4), used as baselines.

They are reported next to a study's own fit so a user can see how far the data
move the recommendation from the literature. Both are fitted far below typical
target scales, and each says so via `in_fitted_range`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

from fitting.published import (
    DEEPSEEK_ALLOCATION,
    DEEPSEEK_BATCH_TOKENS_EXPONENT,
    DEEPSEEK_BATCH_TOKENS_PREFACTOR,
    DEEPSEEK_LR_EXPONENT,
    DEEPSEEK_LR_PREFACTOR,
    STEP_LAW_BATCH_TOKENS_EXPONENTS,
    STEP_LAW_BATCH_TOKENS_PREFACTOR,
    STEP_LAW_LR_EXPONENTS,
    STEP_LAW_LR_PREFACTOR,
)

STEP_LAW_N_RANGE = (2.1e8, 1.07e9)
STEP_LAW_D_RANGE = (4e9, 1e11)
# DeepSeek LLM §3.1 (Fig. 3) spans roughly 1e17–2e19 FLOPs for the hyperparameter
# laws and up to ~3e20 for the IsoFLOP allocation; read from the figures, not tabulated.
DEEPSEEK_C_RANGE = (1e17, 2e19)

STEP_LAW_SOURCE = "Step Law, Li et al. 2025, arXiv 2503.04715"
DEEPSEEK_SOURCE = "DeepSeek LLM, arXiv 2401.02954"


def _check_positive(**values: float) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not (isinstance(v, numbers.Real) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")


def step_law_lr(n_params: float, tokens: float) -> float:
    """η* = 1.7973·N^-0.7129·D^0.3075 (Step Law; dense N 2.1e8–1.07e9 non-embedding, D 4e9–1e11)."""
    _check_positive(n_params=n_params, tokens=tokens)
    return math.exp(
        math.log(STEP_LAW_LR_PREFACTOR)
        + STEP_LAW_LR_EXPONENTS["n_params"] * math.log(n_params)
        + STEP_LAW_LR_EXPONENTS["tokens"] * math.log(tokens)
    )


def step_law_batch_tokens(tokens: float) -> float:
    """B* = 0.5807·D^0.5709 tokens (Step Law; fitted on D 4e9–1e11; independent of N)."""
    _check_positive(tokens=tokens)
    return math.exp(
        math.log(STEP_LAW_BATCH_TOKENS_PREFACTOR) + STEP_LAW_BATCH_TOKENS_EXPONENTS["tokens"] * math.log(tokens)
    )


def deepseek_flops_per_token(depth: float, width: float, seq_len: float) -> float:
    """M = 72·n_layer·d² + 12·n_layer·d·seq_len non-embedding FLOPs per token (DeepSeek LLM §3)."""
    _check_positive(depth=depth, width=width, seq_len=seq_len)
    return 72.0 * depth * width**2 + 12.0 * depth * width * seq_len


def deepseek_lr(flops: float) -> float:
    """η* = 0.3118·C^-0.1250 with C = M·D (DeepSeek LLM; fitted on C ≈ 1e17–2e19)."""
    _check_positive(flops=flops)
    return math.exp(math.log(DEEPSEEK_LR_PREFACTOR) + DEEPSEEK_LR_EXPONENT * math.log(flops))


def deepseek_batch_tokens(flops: float) -> float:
    """B* = 0.2920·C^0.3271 tokens (DeepSeek LLM; fitted on C ≈ 1e17–2e19; unit inferred as tokens)."""
    _check_positive(flops=flops)
    return math.exp(math.log(DEEPSEEK_BATCH_TOKENS_PREFACTOR) + DEEPSEEK_BATCH_TOKENS_EXPONENT * math.log(flops))


def deepseek_compute_optimal(flops: float) -> tuple[float, float]:
    """M* = 0.1715·C^0.5243, D* = 5.8316·C^0.4757 (DeepSeek LLM IsoFLOP fit, C ≈ 1e17–3e20)."""
    _check_positive(flops=flops)
    log_c = math.log(flops)
    (m_c, m_a), (d_c, d_a) = DEEPSEEK_ALLOCATION["flops_per_token"], DEEPSEEK_ALLOCATION["tokens"]
    return math.exp(math.log(m_c) + m_a * log_c), math.exp(math.log(d_c) + d_a * log_c)


def _get(target: Mapping[str, Any], name: str) -> float | None:
    v = target.get(name)
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _unavailable(source: str, missing: list[str], reason: str) -> dict[str, Any]:
    return {"available": False, "source": source, "missing": missing, "reason": reason}


def baselines(target: Mapping[str, float]) -> dict[str, Any]:
    """Step Law and DeepSeek LLM lr / batch at a target {n_params, tokens, width, depth, seq_len}.

    A formula whose inputs are missing (or not positive numbers) is reported with
    `"available": false` and the missing names instead of raising. `batch_size` is in
    sequences (batch_tokens / seq_len, unrounded) and null without seq_len.
    """
    n, d = _get(target, "n_params"), _get(target, "tokens")
    width, depth, seq_len = _get(target, "width"), _get(target, "depth"), _get(target, "seq_len")
    out: dict[str, Any] = {}

    missing = [k for k, v in (("n_params", n), ("tokens", d)) if v is None]
    if n is None or d is None:  # (spelled out so the type checker sees both are known below)
        out["step_law"] = _unavailable(STEP_LAW_SOURCE, missing, "Step Law needs n_params and tokens")
    else:
        bt = step_law_batch_tokens(d)
        out["step_law"] = {
            "available": True,
            "source": STEP_LAW_SOURCE,
            "form": "lr = 1.7973·N^-0.7129·D^0.3075; batch_tokens = 0.5807·D^0.5709",
            "learning_rate": step_law_lr(n, d),
            "batch_tokens": bt,
            "batch_size": bt / seq_len if seq_len else None,
            "missing": [] if seq_len else ["seq_len"],
            "in_fitted_range": STEP_LAW_N_RANGE[0] <= n <= STEP_LAW_N_RANGE[1]
            and STEP_LAW_D_RANGE[0] <= d <= STEP_LAW_D_RANGE[1],
            "note": "N in Step Law is non-embedding parameters; n_params is used as given",
        }

    missing = [k for k, v in (("tokens", d), ("width", width), ("depth", depth), ("seq_len", seq_len)) if v is None]
    if d is None or width is None or depth is None or seq_len is None:
        out["deepseek_llm"] = _unavailable(
            DEEPSEEK_SOURCE, missing, "DeepSeek LLM needs C = M·D with M from width, depth and seq_len"
        )
    else:
        m = deepseek_flops_per_token(depth, width, seq_len)
        c = m * d
        bt = deepseek_batch_tokens(c)
        m_opt, d_opt = deepseek_compute_optimal(c)
        out["deepseek_llm"] = {
            "available": True,
            "source": DEEPSEEK_SOURCE,
            "form": "lr = 0.3118·C^-0.1250; batch_tokens = 0.2920·C^0.3271; C = M·D",
            "flops_per_token": m,
            "flops": c,
            "learning_rate": deepseek_lr(c),
            "batch_tokens": bt,
            "batch_size": bt / seq_len,
            "missing": [],
            "in_fitted_range": DEEPSEEK_C_RANGE[0] <= c <= DEEPSEEK_C_RANGE[1],
            "compute_optimal": {"flops_per_token": m_opt, "tokens": d_opt},
        }
    return out


__all__ = [
    "baselines",
    "deepseek_batch_tokens",
    "deepseek_compute_optimal",
    "deepseek_flops_per_token",
    "deepseek_lr",
    "step_law_batch_tokens",
    "step_law_lr",
]

"""Per-layer hyperparameter multipliers of the μP family (RULES.md §1–2).

Multipliers are relative to the base model the study tuned at (base_width,
base_depth), with m = width / base_width and m_L = depth / base_depth:

- "mup"        Tensor Programs V (arXiv 2203.03466), the `mup` package: width only.
- "depth-mup"  Depth-μP (arXiv 2310.02244, 2309.16620): residual branches × m_L^-½.
- "completep"  CompleteP (arXiv 2505.01618): residual branches × m_L^-1.
- "sp"         standard parameterization: nothing transfers, `per_layer_multipliers` returns None.

The result's `to_dict()` is the recommendation's `per_layer` object.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

PARAMETERIZATIONS = ("sp", "mup", "depth-mup", "completep")
DEPTH_ALPHA = {"depth-mup": 0.5, "completep": 1.0}
_ADAM = ("adam", "adamw")
_SGD = ("sgd",)


@dataclass(frozen=True)
class LayerRule:
    """Multipliers for one parameter class; `learning_rate` / `adam_eps` are absolute when a base was given.

    `adam_eps_multiplier` is None where RULES.md does not state a rule (or for SGD).
    """

    lr_multiplier: float
    init_std_multiplier: float
    forward_multiplier: float
    adam_eps_multiplier: float | None
    weight_decay_multiplier: float
    learning_rate: float | None = None
    adam_eps: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {
            "lr_multiplier": self.lr_multiplier,
            "init_std_multiplier": self.init_std_multiplier,
            "forward_multiplier": self.forward_multiplier,
            "adam_eps_multiplier": self.adam_eps_multiplier,
            "weight_decay_multiplier": self.weight_decay_multiplier,
            "learning_rate": self.learning_rate,
            "adam_eps": self.adam_eps,
        }


@dataclass(frozen=True)
class PerLayer:
    """μP-family multipliers for a target shape relative to the tuned base shape."""

    parameterization: str
    optimizer: str
    width: int
    depth: int | None
    base_width: int
    base_depth: int | None
    width_multiplier: float
    depth_multiplier: float | None
    alpha: float | None
    residual_branch_multiplier: float
    embeddings: LayerRule
    vector_like: LayerRule
    hidden: LayerRule
    output: LayerRule
    attention_logit_scale: str
    hidden_wd_scaled: bool
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "parameterization": self.parameterization,
            "optimizer": self.optimizer,
            "width": self.width,
            "depth": self.depth,
            "base_width": self.base_width,
            "base_depth": self.base_depth,
            "width_multiplier": self.width_multiplier,
            "depth_multiplier": self.depth_multiplier,
            "alpha": self.alpha,
            "residual_branch_multiplier": self.residual_branch_multiplier,
            "attention_logit_scale": self.attention_logit_scale,
            "hidden_wd_scaled": self.hidden_wd_scaled,
            "classes": {
                "embeddings": self.embeddings.to_dict(),
                "vector_like": self.vector_like.to_dict(),
                "hidden": self.hidden.to_dict(),
                "output": self.output.to_dict(),
            },
            "notes": list(self.notes),
        }


def _positive_int(name: str, value: Any, *, required: bool, why: str = "") -> int | None:
    if value is None:
        if required:
            raise ValueError(f"{name} is required{why}")
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    f = float(value)
    if not math.isfinite(f) or f != int(f) or f <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(f)


def _positive_float(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not (math.isfinite(float(value)) and float(value) > 0)
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def per_layer_multipliers(
    parameterization: str,
    width: int | None,
    depth: int | None,
    base_width: int | None,
    base_depth: int | None,
    *,
    optimizer: str = "adamw",
    base_lr: float | None = None,
    base_eps: float | None = None,
    hidden_wd_scaled: bool = True,
) -> PerLayer | None:
    """Hidden Adam LR = η·m^-1·m_L^(α−1), ε = ε·m^-1·m_L^-α, residual x + m_L^-α·F(x) (RULES.md §1–2).

    Returns None for "sp" (nothing to transfer). `hidden_wd_scaled=True` follows the
    `mup` package (hidden weight decay × 1/lr_multiplier so η·λ is invariant);
    False follows nanoGPT-mup (λ unchanged). Raises ValueError for unknown
    parameterizations or optimizers, non-positive or non-integer shapes, and a
    missing base shape.
    """
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {parameterization!r}; expected one of {PARAMETERIZATIONS}")
    opt = str(optimizer).lower()
    if opt not in _ADAM + _SGD:
        raise ValueError(
            f"no μP transfer rules for optimizer {optimizer!r}: RULES.md §1–2 give them for Adam/AdamW and SGD only"
        )
    if parameterization == "sp":
        return None
    uses_depth = parameterization in DEPTH_ALPHA
    if uses_depth and opt in _SGD:
        raise ValueError(f"{parameterization!r} depth rules (RULES.md §2) are stated for Adam only, not {optimizer!r}")
    why = f" for parameterization {parameterization!r}"
    w = _required_int("width", width, why)
    bw = _required_int("base_width", base_width, why)
    dp = _positive_int("depth", depth, required=uses_depth, why=why)
    bd = _positive_int("base_depth", base_depth, required=uses_depth, why=why)
    lr0 = _positive_float("base_lr", base_lr)
    eps0 = _positive_float("base_eps", base_eps)

    m = w / bw
    scaling = _depth_scaling(parameterization, dp, bd)
    classes, class_notes = _class_rules(opt, m, scaling, hidden_wd_scaled, lr0, eps0)
    notes = ([] if scaling.note is None else [scaling.note]) + class_notes
    return PerLayer(
        parameterization=parameterization,
        optimizer=opt,
        width=w,
        depth=dp,
        base_width=bw,
        base_depth=bd,
        width_multiplier=m,
        depth_multiplier=scaling.depth_multiplier,
        alpha=scaling.alpha,
        residual_branch_multiplier=scaling.branch,
        embeddings=classes["embeddings"],
        vector_like=classes["vector_like"],
        hidden=classes["hidden"],
        output=classes["output"],
        attention_logit_scale="1/d_head",
        hidden_wd_scaled=bool(hidden_wd_scaled),
        notes=tuple(notes),
    )


def _required_int(name: str, value: Any, why: str) -> int:
    got = _positive_int(name, value, required=True, why=why)
    assert got is not None  # required=True raises rather than return None
    return got


@dataclass(frozen=True)
class _DepthScaling:
    """How depth enters (RULES.md §2): m_L, α, the hidden-LR factor m_L^(α−1), the branch m_L^-α.

    Width-only parameterizations leave both factors at 1; `note` then warns when the
    target's depth differs from the base's anyway.
    """

    alpha: float | None
    depth_multiplier: float | None
    lr_factor: float
    branch: float
    note: str | None = None


def _depth_scaling(parameterization: str, depth: int | None, base_depth: int | None) -> _DepthScaling:
    m_l = depth / base_depth if depth is not None and base_depth is not None else None
    if parameterization in DEPTH_ALPHA:
        assert m_l is not None  # depth and base_depth are required for the depth rules
        alpha = DEPTH_ALPHA[parameterization]
        return _DepthScaling(alpha, m_l, m_l ** (alpha - 1.0), m_l**-alpha)
    note = None
    if m_l is not None and m_l != 1.0:
        note = (
            f"μP transfers across width only; depth changes {m_l:g}x from the base, which "
            "these multipliers do not account for (use depth-mup or completep)"
        )
    return _DepthScaling(None, m_l, 1.0, 1.0, note)


def _class_rules(
    opt: str,
    m: float,
    scaling: _DepthScaling,
    hidden_wd_scaled: bool,
    lr0: float | None,
    eps0: float | None,
) -> tuple[dict[str, LayerRule], list[str]]:
    """The four parameter classes' rules (RULES.md §1–2), and notes on what the rules leave open."""
    uses_depth = scaling.alpha is not None
    notes: list[str] = []

    def rule(lr_mult: float, init: float, fwd: float, eps_mult: float | None, wd: float = 1.0) -> LayerRule:
        return LayerRule(
            lr_multiplier=lr_mult,
            init_std_multiplier=init,
            forward_multiplier=fwd,
            adam_eps_multiplier=eps_mult,
            weight_decay_multiplier=wd,
            learning_rate=None if lr0 is None else lr0 * lr_mult,
            adam_eps=None if eps0 is None or eps_mult is None else eps0 * eps_mult,
        )

    hidden_eps: float | None
    vector_eps: float | None
    edge_eps: float | None
    if opt in _SGD:
        hidden_lr, vector_lr, edge_lr = 1.0, m, m
        hidden_eps = vector_eps = edge_eps = None
    else:
        hidden_lr, vector_lr, edge_lr = scaling.lr_factor / m, scaling.lr_factor, 1.0
        edge_eps = 1.0
        if uses_depth:
            hidden_eps = scaling.branch / m
            vector_eps = None
            notes.append("Adam ε for hidden biases and norm gains is not specified in RULES.md §2; left to the study")
        else:
            # The `mup` package leaves Adam ε untouched; ε·m^-1 is the CompleteP-code convention.
            hidden_eps = vector_eps = 1.0
    hidden_wd = 1.0 / hidden_lr if hidden_wd_scaled else 1.0
    notes.append(
        "hidden weight decay × 1/lr_multiplier keeps η·λ invariant (mup package convention)"
        if hidden_wd_scaled
        else "hidden weight decay unchanged (nanoGPT-mup convention): η·λ shrinks with the hidden LR"
    )
    notes.append(
        "output layer: zero init recommended; forward multiplier applies on top of the tuned output multiplier"
    )

    output_eps = None if uses_depth and opt in _ADAM else edge_eps
    if output_eps is None and opt in _ADAM:
        notes.append("Adam ε for the output layer is not specified in RULES.md §2; left to the study")
    notes.append("embeddings cover the final norm too (unchanged); vector_like = hidden biases and norm gains")
    classes = {
        "embeddings": rule(edge_lr, 1.0, 1.0, edge_eps),
        "vector_like": rule(vector_lr, 1.0, 1.0, vector_eps),
        "hidden": rule(hidden_lr, m**-0.5, 1.0, hidden_eps, hidden_wd),
        "output": rule(edge_lr, 1.0, 1.0 / m, output_eps),
    }
    return classes, notes


__all__ = ["PARAMETERIZATIONS", "LayerRule", "PerLayer", "per_layer_multipliers"]

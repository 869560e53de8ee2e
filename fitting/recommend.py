"""A recommendation at a target scale: what a launcher asks for right before a job starts.

Composes the study's fit (`study_fit.predict`), the loss law (predicted loss; the
compute-optimal n_params and tokens for a FLOP budget), batch rounding to a hardware
multiple with the learning rate re-conditioned on the rounded batch, μP per-layer
multipliers, and the published baselines at the same target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fitting.baselines import baselines
from fitting.common import InsufficientData, Interval
from fitting.decisions import recommendation_penalties, tolerance_batch
from fitting.loss_law import ComputeOptimal, compute_optimal
from fitting.published import is_adam_type
from fitting.study_fit import (
    NO_LOSS_LAW,
    SHAPE_ASSUMED,
    MissingTarget,
    Prediction,
    StudyResult,
    predict,
    target_variables,
)
from fitting.transfer import per_layer_multipliers

MUP_FAMILY = ("mup", "depth-mup", "completep")


@dataclass(frozen=True)
class StudyInfo:
    """What the recommendation needs to know of the study beyond its fit."""

    parameterization: str = "sp"
    optimizer: str = "adamw"
    base_width: int | None = None
    base_depth: int | None = None
    seq_len: float | None = None


@dataclass(frozen=True)
class Recommendation:
    prediction: Prediction
    target: Mapping[str, float]
    batch_size: Interval | None
    batch_tokens: float | None
    per_layer: dict[str, Any] | None
    compute_optimal: ComputeOptimal | None
    baselines: dict[str, Any]
    warnings: tuple[str, ...]
    # Issue 20: what acting on the answer costs (`fitting.decisions`), and the largest batch within a loss tolerance.
    expected_loss_penalty: dict[str, float] | None = None
    penalty_model: dict[str, Any] | None = None
    tolerance_batch: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The contract's recommendation fields (the app adds fit_id and data_version)."""
        p = self.prediction.to_dict()
        return {
            **p,
            "batch_size": None if self.batch_size is None else self.batch_size.to_dict(),
            "batch_tokens": self.batch_tokens,
            "per_layer": self.per_layer,
            "target": dict(self.target),
            "compute_optimal": None if self.compute_optimal is None else self.compute_optimal.to_dict(),
            "baselines": self.baselines,
            "expected_loss_penalty": self.expected_loss_penalty,
            "penalty_model": self.penalty_model,
            **({} if self.tolerance_batch is None else {"tolerance_batch": self.tolerance_batch}),
            "warnings": list(self.warnings),
        }


def round_to_multiple(batch: float, multiple: int) -> int:
    """The multiple of `multiple` nearest to `batch` in log space (never 0)."""
    lower = max(multiple, math.floor(batch / multiple) * multiple)
    upper = max(multiple, math.ceil(batch / multiple) * multiple)
    return lower if abs(math.log(batch / lower)) <= abs(math.log(upper / batch)) else upper


def recommend(
    fit: StudyResult,
    target: Mapping[str, float],
    study: StudyInfo = StudyInfo(),
    *,
    batch_size: float | None = None,
    batch_multiple: int | None = None,
    compute: float | None = None,
    max_loss_increase: float | None = None,
) -> Recommendation:
    """lr*, bs*, wd* (90% intervals) at `target`; lr conditioned on the batch actually used.

    log lr*(target | bs) from the fitted laws and bowl; with `compute` = C FLOPs the target's
    n_params and tokens are the loss law's compute-optimal N*, D* with 6·N*·D* = C. Every answer
    carries the expected loss penalty of acting on it and on each baseline (`fitting.decisions`);
    `max_loss_increase` adds the largest batch within that fraction of the optimal loss.
    Raises InsufficientData (a needed law is missing), MissingTarget, or ValueError.
    """
    target = {k: float(v) for k, v in target.items() if v is not None}
    seq_len = target.get("seq_len") or study.seq_len or fit.seq_len

    allocation = None
    if compute is not None:
        allocation = compute_allocation(fit, target, compute)
        target["n_params"] = allocation.n_params.value
        target["tokens"] = allocation.tokens.value
    warnings: list[str] = [] if allocation is None else list(allocation.warnings)

    prediction = predict(fit, target, batch_size)
    if prediction.learning_rate is None:  # a loss-law-only answer: nothing to round or scale per layer
        if batch_multiple is not None:
            warnings.append("batch_multiple was given, but there is no batch size to round (no learning-rate law)")
        published = baselines({**target, **({"seq_len": seq_len} if seq_len else {})})
        return Recommendation(
            prediction=prediction,
            target=target,
            batch_size=None,
            batch_tokens=None,
            per_layer=None,
            compute_optimal=allocation,
            baselines=published,
            warnings=(
                *prediction.warnings,
                *warnings,
                "per_layer is null: there is no learning rate to scale per layer",
                "expected_loss_penalty is null: with no learning-rate law there is no setting to price",
                *(
                    ["tolerance_batch unavailable: no batch-size answer without a learning-rate law"]
                    if max_loss_increase is not None
                    else []
                ),
            ),
            tolerance_batch=None
            if max_loss_increase is None
            else {"available": False, "reason": "no learning-rate law, so no batch-size answer"},
        )
    for name, interval in (("learning rate", prediction.learning_rate), ("batch size", prediction.batch_size)):
        if interval is not None and not all(0 < x < math.inf for x in (interval.low, interval.value, interval.high)):
            raise OverflowError(f"the {name} law gives no finite positive value at this target")
    chosen = prediction.batch_size
    if batch_multiple is not None:
        prediction, chosen, rounding = _round_batch(fit, target, prediction, batch_multiple)
        warnings.extend(rounding)
    warnings = list(prediction.warnings) + warnings

    assert prediction.learning_rate is not None  # (a re-conditioned prediction keeps its law)
    per_layer, per_layer_warning = _per_layer(study, target, prediction.learning_rate.value)
    if per_layer_warning is not None:
        warnings.append(per_layer_warning)

    published = baselines({**target, **({"seq_len": seq_len} if seq_len else {})})
    warnings.extend(baseline_disagreements(published, prediction, study))
    t = target_variables(fit, target)
    t.pop(SHAPE_ASSUMED, None)
    settings = {
        "learning_rate": prediction.learning_rate.value,
        "batch_size": None if chosen is None else chosen.value,
        "weight_decay": None if prediction.weight_decay is None else prediction.weight_decay.value,
    }
    penalty, penalty_model, penalty_warnings = recommendation_penalties(fit, t, settings, published)
    warnings.extend(penalty_warnings)
    tolerance = None
    if max_loss_increase is not None:
        tolerance = tolerance_batch(fit, target, t, max_loss_increase, seq_len=seq_len, batch_multiple=batch_multiple)
        if not tolerance.get("available"):
            warnings.append(f"tolerance_batch unavailable: {tolerance['reason']}")
    return Recommendation(
        prediction=prediction,
        target=target,
        batch_size=chosen,
        batch_tokens=chosen.value * seq_len if (chosen is not None and seq_len) else None,
        per_layer=per_layer,
        compute_optimal=allocation,
        baselines=published,
        warnings=tuple(warnings),
        expected_loss_penalty=penalty,
        penalty_model=penalty_model,
        tolerance_batch=tolerance,
    )


_BASELINE_NAMES = {"step_law": "Step Law", "deepseek_llm": "DeepSeek LLM"}


def baseline_disagreements(published: dict[str, Any], prediction: Prediction, study: StudyInfo) -> list[str]:
    """Name every published baseline value outside the recommendation's 90% interval.

    Marks each available baseline with `within_interval` per hyperparameter (null where the
    recommendation has no interval for it, e.g. a batch the caller fixed).
    """
    out = []
    basis = (
        ""
        if (study.parameterization == "sp" and is_adam_type(study.optimizer))
        else (
            f"; its basis (AdamW, standard parameterization) is not this study's "
            f"({study.optimizer}, {study.parameterization})"
        )
    )
    intervals = {
        "learning_rate": prediction.learning_rate,
        "batch_size": None if prediction.conditioned_on_batch_size else prediction.batch_size,
    }
    for key, b in published.items():
        if not b.get("available"):
            continue
        inside: dict[str, bool | None] = {}
        for axis, iv in intervals.items():
            v = b.get(axis)
            if iv is None or v is None:
                inside[axis] = None
                continue
            inside[axis] = iv.low <= v <= iv.high
            if not inside[axis]:
                what = "learning rate" if axis == "learning_rate" else "batch size"
                out.append(
                    f"{_BASELINE_NAMES.get(key, key)}'s {what} ({v:.3g}) lies outside this recommendation's 90% "
                    f"interval [{iv.low:.3g}, {iv.high:.3g}]: the study's own data disagree with it{basis}"
                )
        b["within_interval"] = inside
    return out


def compute_allocation(fit: StudyResult, target: Mapping[str, float], compute: float) -> ComputeOptimal:
    """The loss law's compute-optimal N*, D* for `compute` FLOPs, when the target gives neither.

    Raises ValueError if the target also fixes n_params or tokens, InsufficientData without a loss law.
    """
    if "n_params" in target or "tokens" in target:
        raise ValueError("give either compute or n_params and tokens, not both")
    if fit.loss_law is None:
        why = fit.no_loss_law_reason()
        raise InsufficientData(
            "a compute target needs a loss law, and this study has none: "
            + ("no loss law was fitted" if why is None else f"{NO_LOSS_LAW}{why}")
        )
    return compute_optimal(fit.loss_law, compute)


def _round_batch(
    fit: StudyResult, target: Mapping[str, float], prediction: Prediction, batch_multiple: int
) -> tuple[Prediction, Interval, list[str]]:
    """The batch rounded to a multiple of `batch_multiple`, the prediction re-conditioned on it, and why.

    The interval is widened to contain the rounded batch. Raises ValueError for a
    multiple < 1 and InsufficientData when there is no batch size to round.
    """
    if batch_multiple < 1:
        raise ValueError("batch_multiple must be a positive integer")
    chosen = prediction.batch_size
    if chosen is None:
        raise InsufficientData("batch_multiple needs a batch size: pass batch_size, or sweep batch size at ≥ 3 scales")
    warnings: list[str] = []
    rounded = round_to_multiple(chosen.value, batch_multiple)
    if rounded != chosen.value:
        prediction = predict(fit, target, rounded)
        warnings.append(
            f"batch size rounded from {chosen.value:.4g} to {rounded} (a multiple of {batch_multiple}); "
            "the learning rate is the optimum at the rounded batch"
        )
    return prediction, Interval(float(rounded), min(chosen.low, rounded), max(chosen.high, rounded)), warnings


def _per_layer(
    study: StudyInfo, target: Mapping[str, float], learning_rate: float
) -> tuple[dict[str, Any] | None, str | None]:
    """μP per-layer multipliers at the target (absolute lr from `learning_rate`), or a warning why null."""
    if study.parameterization not in MUP_FAMILY:
        return None, (
            f"per_layer is null: per-layer multipliers are defined for {', '.join(MUP_FAMILY)} studies; "
            f"this study's parameterization is {study.parameterization!r}, where one global learning rate applies"
        )
    try:
        rules = per_layer_multipliers(
            study.parameterization,
            round(target["width"]) if "width" in target else None,
            round(target["depth"]) if "depth" in target else None,
            study.base_width,
            study.base_depth,
            optimizer=study.optimizer,
            base_lr=learning_rate,
        )
    except ValueError as error:
        return None, f"per_layer is null: no per-layer multipliers: {error}"
    if rules is None:
        return None, "per_layer is null: the target gives neither width nor depth to scale from the base model"
    return rules.to_dict(), None


__all__ = ["MissingTarget", "Recommendation", "StudyInfo", "compute_allocation", "recommend", "round_to_multiple"]

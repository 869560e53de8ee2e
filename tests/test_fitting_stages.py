"""Focused tests of the named stages split out of recommend, the loss-law fit and the μP rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fitting.common import InsufficientData
from fitting.loss_law import _bootstrap_params, _identified_params, _params_to_theta
from fitting.recommend import StudyInfo, _per_layer, _round_batch, compute_allocation, round_to_multiple
from fitting.study_fit import NO_LOSS_LAW, StudyResult, fit_study, predict
from fitting.transfer import _depth_scaling
from tests.fitting_data import synthetic_sweep


@pytest.fixture(scope="module")
def fit() -> StudyResult:
    return fit_study(synthetic_sweep(0), bootstrap=0)


@pytest.fixture(scope="module")
def target(fit: StudyResult) -> dict[str, float]:
    scale = fit.optima[-1].scale.to_dict()
    return {k: float(v) for k, v in scale.items() if v is not None and np.isfinite(v)}


def _no_loss_law(warnings: tuple[str, ...]) -> StudyResult:
    return StudyResult(
        optima=(), laws={}, shape=None, loss_law=None, weight_decay_analysis=None, warnings=warnings, n_runs=0
    )


def test_no_loss_law_reason_reads_the_recorded_warning() -> None:
    fit = _no_loss_law(("something else", f"{NO_LOSS_LAW}3 scales, need ≥ 5"))
    assert fit.no_loss_law_reason() == "3 scales, need ≥ 5"
    assert _no_loss_law(()).no_loss_law_reason() is None


def test_compute_allocation_names_why_there_is_no_loss_law() -> None:
    with pytest.raises(InsufficientData, match="no loss law: 3 scales"):
        compute_allocation(_no_loss_law((f"{NO_LOSS_LAW}3 scales",)), {}, 1e20)
    with pytest.raises(InsufficientData, match="no loss law was fitted"):
        compute_allocation(_no_loss_law(()), {}, 1e20)
    with pytest.raises(ValueError, match="either compute or n_params"):
        compute_allocation(_no_loss_law(()), {"tokens": 1e9}, 1e20)


def test_round_batch_reconditions_and_widens(fit: StudyResult, target: dict[str, float]) -> None:
    prediction = predict(fit, target)
    assert prediction.batch_size is not None
    bs = prediction.batch_size.value
    multiple = max(1, int(bs / 3.3))  # a multiple the optimum is not already on
    rounded = round_to_multiple(bs, multiple)
    assert rounded != bs
    new, interval, warnings = _round_batch(fit, target, prediction, multiple)
    assert interval.value == rounded and interval.low <= rounded <= interval.high
    assert new.conditioned_on_batch_size
    assert len(warnings) == 1 and f"to {rounded}" in warnings[0]
    with pytest.raises(ValueError, match="batch_multiple"):
        _round_batch(fit, target, prediction, 0)


def test_per_layer_says_why_it_is_null() -> None:
    rules, why = _per_layer(StudyInfo(parameterization="sp"), {"width": 1024}, 1e-3)
    assert rules is None and why is not None and "'sp'" in why
    rules, why = _per_layer(StudyInfo(parameterization="mup", base_width=256), {}, 1e-3)
    assert rules is None and why is not None and "width is required" in why
    rules, why = _per_layer(StudyInfo(parameterization="mup", base_width=256), {"width": 1024}, 1e-3)
    assert why is None and rules is not None
    assert rules["classes"]["hidden"]["learning_rate"] == pytest.approx(1e-3 / 4)


def test_depth_scaling_per_parameterization() -> None:
    complete = _depth_scaling("completep", 8, 4)  # α = 1: hidden LR unchanged, branch × 1/m_L
    assert (complete.alpha, complete.lr_factor, complete.branch) == (1.0, 1.0, 0.5)
    depth_mup = _depth_scaling("depth-mup", 16, 4)  # α = ½
    assert depth_mup.lr_factor == pytest.approx(0.5) and depth_mup.branch == pytest.approx(0.5)
    width_only = _depth_scaling("mup", 8, 4)
    assert width_only.alpha is None and width_only.lr_factor == 1.0 and width_only.branch == 1.0
    assert width_only.note is not None and "2x" in width_only.note
    assert _depth_scaling("mup", 4, 4).note is None
    assert _depth_scaling("mup", None, None).depth_multiplier is None


def test_identified_params_refuses_an_unidentified_e() -> None:
    loss = np.array([3.0, 2.9, 2.8])
    ok = _params_to_theta(np.array([1.5, 400.0, 400.0, 0.3, 0.3]))
    assert _identified_params(ok, loss)[0] == pytest.approx(1.5)
    tiny_e = _params_to_theta(np.array([1e-4, 400.0, 400.0, 0.3, 0.3]))
    with pytest.raises(InsufficientData, match="irreducible loss E is not identified"):
        _identified_params(tiny_e, loss)


def test_bootstrap_params_counts_unidentifiable_resamples() -> None:
    n = np.array([1e8, 1e8, 1e8, 1e8, 2e8])  # most resamples see one n_params only
    d = np.array([1e9, 2e9, 4e9, 8e9, 1e9])
    theta = _params_to_theta(np.array([1.5, 400.0, 400.0, 0.3, 0.3]))
    loss = 1.5 + 400.0 / n**0.3 + 400.0 / d**0.3
    params, failed = _bootstrap_params(theta, n, d, loss, 50, 0, 1e-3)
    assert failed > 0 and len(params) + failed == 50
    assert np.all(np.isfinite(params))
    assert _bootstrap_params(theta, n, d, loss, 0, 0, 1e-3)[0].shape == (0, 5)
    assert math.isfinite(float(params[:, 0].mean()))

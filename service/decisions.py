"""Decisions from a study's fit (contract 1.2): the transfer check and budget-aware next proxies.

Both answer from the fit a recommendation would use (`service.fits.served_fit_async`: the newest
completed fit, never waiting on a refit; a warning when runs arrived since), or from `fit_id`.
Answers are pure functions of (fit, question), so each is computed once per process and cached.
Inputs are checked here, before any fitting code sees them, with a 422 naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from anyio import to_thread

from fitting.budget import MAX_DESIGNS, plan_budget
from fitting.decisions import MAX_LOSS_INCREASE
from fitting.transfer_check import TOLERANCE, transfer_check
from service import pins
from service.cache import LRUCache
from service.errors import InvalidTarget, field_detail
from service.fits import FitOptions, FitRecord, json_safe, served_fit_async
from service.limits import MAX_COMPUTE, TARGET_LIMITS, Bound
from service.recommendations import _engine_refusals, check_target
from store.db import Engine

# A transfer tolerance is an exponent: anything above 1 would call a linear drift "transfers".
TOLERANCE_BOUND = Bound(0, 1.0)
BUDGET_BOUND = Bound(0, MAX_COMPUTE)
LOSS_INCREASE_BOUND = Bound(0, MAX_LOSS_INCREASE)

_answers = LRUCache(1024)
__all__ = ["MAX_DESIGNS", "budget_suggestions", "check_budget", "check_loss_increase", "transfer_check_answer"]


def _invalid(name: str, reason: str) -> InvalidTarget:
    return InvalidTarget(f"invalid {name}: {reason}", [field_detail(name, reason)])


def check_bound(name: str, value: float | None, bound: Bound) -> None:
    """422 naming `name` when `value` (None: not given) lies outside `bound`."""
    if value is None:
        return
    reason = bound.check(value)
    if reason is not None:
        raise _invalid(name, reason)


def check_loss_increase(value: float | None) -> None:
    """`max_loss_increase` must be a fraction in (0, MAX_LOSS_INCREASE] (the bowls say nothing beyond)."""
    if value is not None and LOSS_INCREASE_BOUND.check(value) is not None:
        raise _invalid(
            "max_loss_increase",
            f"must be a fraction in (0, {MAX_LOSS_INCREASE:g}] (0.005 = 0.5%): the loss bowls are fitted on runs "
            "within a few percent of each scale's best loss",
        )


async def _fit(
    engine: Engine, study_name: str, fit_id: int | None, *, options: FitOptions, created_by: str | None
) -> tuple[FitRecord, tuple[str, ...]]:
    if fit_id is not None:
        return await to_thread.run_sync(lambda: pins.fit_or_gone(engine, study_name, fit_id)), ()
    served = await served_fit_async(engine, study_name, options=options, created_by=created_by)
    return served.record, served.warnings


def _given(target: Mapping[str, float | None]) -> dict[str, float]:
    return {k: float(v) for k, v in target.items() if v is not None}


async def transfer_check_answer(
    engine: Engine,
    study_name: str,
    target: Mapping[str, float | None],
    *,
    tolerance: float | None,
    fit_id: int | None,
    options: FitOptions,
    created_by: str | None,
) -> dict[str, Any]:
    """Per axis (width, depth) and law: drift exponent with 90% interval, verdict, hints, reuse cost at `target`."""
    check_target(target)
    check_bound("tolerance", tolerance, TOLERANCE_BOUND)
    stored, warnings = await _fit(engine, study_name, fit_id, options=options, created_by=created_by)
    given = _given(target)
    if given and not {"n_params", "tokens"} <= set(given):
        raise _invalid("target", "the reuse cost needs a whole target: give n_params and tokens (and width, depth)")
    tol = TOLERANCE if tolerance is None else float(tolerance)
    key = ("transfer", stored.key, tuple(sorted(given.items())), tol)
    cached = _answers.get(key)
    if cached is None:
        study = stored.study
        with _engine_refusals():
            result = await to_thread.run_sync(
                lambda: transfer_check(
                    stored.result,
                    study.parameterization,
                    base_width=study.base_width,
                    base_depth=study.base_depth,
                    target=given or None,
                    tolerance=tol,
                )
            )
        cached = json_safe({**result, "fit_id": stored.id, "data_version": str(stored.data_version)})
        _answers.put(key, cached)
    return {**cached, "warnings": list(warnings)}


def check_budget(budget_flops: float | None, max_n_params: float | None, max_tokens: float | None) -> None:
    check_bound("budget_flops", budget_flops, BUDGET_BOUND)
    check_bound("max_n_params", max_n_params, TARGET_LIMITS["n_params"])
    check_bound("max_tokens", max_tokens, TARGET_LIMITS["tokens"])
    if budget_flops is None and (max_n_params is not None or max_tokens is not None):
        name = "max_n_params" if max_n_params is not None else "max_tokens"
        raise _invalid(name, "applies to a budget: give budget_flops too")


async def budget_suggestions(
    engine: Engine,
    study_name: str,
    target: Mapping[str, float | None],
    *,
    budget_flops: float,
    max_n_params: float | None,
    max_tokens: float | None,
    count: int,
    options: FitOptions,
    created_by: str | None,
) -> dict[str, Any]:
    """The proxy designs (scale + runs) that most reduce the target's expected loss penalty per FLOP in the budget."""
    check_target(target)
    check_budget(budget_flops, max_n_params, max_tokens)
    stored, warnings = await _fit(engine, study_name, None, options=options, created_by=created_by)
    given = _given(target)
    key = ("budget", stored.key, tuple(sorted(given.items())), budget_flops, max_n_params, max_tokens, count)
    cached = _answers.get(key)
    if cached is None:
        with _engine_refusals():
            plan = await to_thread.run_sync(
                lambda: plan_budget(
                    stored.result,
                    given,
                    budget_flops,
                    max_n_params=max_n_params,
                    max_tokens=max_tokens,
                    max_designs=count,
                )
            )
        notes = []
        if not plan["items"]:
            notes.append(
                "no design fits the budget: the cheapest candidate run costs more than budget_flops allows "
                "(or max_n_params / max_tokens exclude every candidate scale)"
            )
        cached = json_safe({**plan, "fit_id": stored.id, "data_version": str(stored.data_version), "notes": notes})
        _answers.put(key, cached)
    return {**cached, "warnings": list(warnings)}

"""Recommendations, sweep suggestions and compute-optimal allocations from a study's current fit.

Targets are checked against the same limits as runs (`service.limits.TARGET_LIMITS`)
before any fitting code sees them; the engine's refusals become domain errors here:
a law the data cannot support → InsufficientData (409), a missing target variable →
MissingTarget (422), a target with no finite answer → InvalidTarget (422). Any other
exception is a bug and surfaces as one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from anyio import to_thread

import fitting.common
import fitting.study_fit
from fitting.loss_law import LossLaw, compute_optimal
from fitting.plan import suggest_runs
from fitting.recommend import recommend
from fitting.study_fit import NO_LOSS_LAW
from service import pins
from service.cache import LRUCache
from service.errors import InsufficientData, InvalidTarget, MissingTarget, field_detail
from service.fits import FitOptions, FitRecord, ServedFit, json_safe, served_fit_async
from service.limits import MAX_BATCH_MULTIPLE, MAX_COMPUTE, RUN_LIMITS, TARGET_LIMITS, Bound
from store.db import Engine

_COMPUTE = Bound(1, MAX_COMPUTE, low_inclusive=True)
_BATCH_MULTIPLE = Bound(1, MAX_BATCH_MULTIPLE, low_inclusive=True)


def _invalid(field: str, message: str) -> InvalidTarget:
    return InvalidTarget(f"invalid target: {field}: {message}", [field_detail(field, message)])


def _given(target: Mapping[str, float | None]) -> dict[str, float]:
    return {name: float(value) for name, value in target.items() if value is not None}


def check_target(values: Mapping[str, float | None]) -> None:
    """Refuse a target quantity outside the limits, naming it (None means not given)."""
    for name, value in values.items():
        if value is None:
            continue
        bound = {"compute": _COMPUTE, "batch_multiple": _BATCH_MULTIPLE}.get(name) or TARGET_LIMITS[name]
        reason = bound.check(value)
        if reason is not None:
            raise _invalid(name, reason)


@contextmanager
def _engine_refusals() -> Iterator[None]:
    """The fitting engine's refusals as domain errors (and nothing else): a missing target
    variable → MissingTarget (422), a law or loss law the runs cannot support (the engine's
    InsufficientData, e.g. a loss law with α or β ≤ 0) → InsufficientData (409), a number
    that overflows → InvalidTarget (422). Any other exception is a bug and surfaces as one."""
    try:
        yield
    except fitting.study_fit.MissingTarget as error:
        raise MissingTarget(error.variable, str(error)) from None
    except fitting.common.InsufficientData as error:
        if isinstance(error, InsufficientData):
            raise
        raise InsufficientData(str(error)) from None
    except ArithmeticError:
        # The laws' numbers overflow only for targets absurdly far from every proxy.
        raise _invalid(
            "target", "the fitted laws give no finite answer at this target: it lies too far outside the proxies' range"
        ) from None


def _within_limits(answer: Mapping[str, Any]) -> None:
    """Refuse an answer whose hyperparameter lies outside the contract's limits (no run could
    use it): the fitted law extrapolates a bound, not an optimum (e.g. a sweep whose loss still
    falls at its largest learning rate at every scale)."""
    for name in ("learning_rate", "batch_size", "weight_decay"):
        interval = answer.get(name)
        if interval is None:
            continue
        value = interval["value"]
        reason = RUN_LIMITS[name].check(value) if value == value else "is not a number"
        if reason is not None:
            raise InsufficientData(
                f"the fitted {name.replace('_', ' ')} law gives {value:.3g} at this target, outside the limits "
                f"({reason}): the study's optima do not locate it (see the fit's warnings); extend the sweeps"
            )


# A fit never changes, so the answer to the same question about it never does either:
# launchers asking again (or many at once) get the encoded answer without recomputing.
_recommendations = LRUCache(4096)


async def recommendation_json(
    engine: Engine,
    study_name: str,
    target: Mapping[str, float | None],
    *,
    options: FitOptions,
    created_by: str | None,
    batch_size: float | None = None,
    batch_multiple: int | None = None,
    compute: float | None = None,
    fit_id: int | None = None,
    fresh: bool = False,
    max_loss_increase: float | None = None,
) -> bytes:
    """The contract's recommendation, JSON-encoded: lr, batch, wd at `target` with 90% intervals.

    `target` holds n_params, tokens, width, depth, seq_len (None: not given). Async, with
    the work in threads only on a miss: the hot path (a launcher asking about an unchanged
    study) never leaves the event loop. `fit_id` pins the answer to that fit: the same
    question about the same fit gets the same bytes, whatever runs arrived since. Every fit
    whose id an answer hands out is pinned (kept by the pin policy of `service.pins`), so a
    launcher restarted later can ask for the answer it launched with; a pruned one is 410.
    """
    check_target({**target, "batch_size": batch_size, "batch_multiple": batch_multiple, "compute": compute})
    from service.decisions import check_loss_increase  # contract 1.2 (issue 20); imported late: it imports this module

    check_loss_increase(max_loss_increase)
    if compute is not None and (target.get("n_params") is not None or target.get("tokens") is not None):
        raise _invalid("compute", "give either compute or n_params and tokens, not both")
    if fit_id is not None:
        served = ServedFit(await to_thread.run_sync(lambda: pins.fit_or_gone(engine, study_name, fit_id)))
    else:
        # Never waits on a refit: the newest completed fit, with a warning if runs arrived since.
        served = await served_fit_async(engine, study_name, options=options, created_by=created_by, fresh=fresh)
    stored = served.record
    if pins.needs_recording(stored):  # at most once an hour per fit: the hot path stays read-only
        await to_thread.run_sync(lambda: pins.record_use(engine, stored))
    key = (stored.key, stored.study, tuple(target.items()), batch_size, batch_multiple, compute, max_loss_increase)
    cached = _recommendations.get(key)
    if cached is None:
        with _engine_refusals():
            result = await to_thread.run_sync(
                lambda: recommend(
                    stored.result,
                    _given(target),
                    stored.study,
                    batch_size=batch_size,
                    batch_multiple=batch_multiple,
                    compute=compute,
                    max_loss_increase=max_loss_increase,
                )
            )
        document = json_safe({**result.to_dict(), "fit_id": stored.id, "data_version": str(stored.data_version)})
        try:
            _within_limits(document)
        except InsufficientData as refusal:
            cached = refusal  # the same question about the same fit is refused the same way
        else:
            cached = (document, json.dumps(document, separators=(",", ":"), allow_nan=False).encode())
        _recommendations.put(key, cached)
    if isinstance(cached, InsufficientData):
        raise InsufficientData(cached.message)
    document, body = cached
    return _with_warnings(document, body, served.warnings)


def _with_warnings(document: dict[str, Any], body: bytes, served_warnings: tuple[str, ...]) -> bytes:
    """An answer from a fit of older data says so (contract 1.1: "fitted on N of M runs"); the
    answer itself is the fit's, cached whatever the count of runs since."""
    if not served_warnings:
        return body
    stale = {**document, "warnings": [*served_warnings, *document.get("warnings", [])]}
    return json.dumps(stale, separators=(",", ":"), allow_nan=False).encode()


async def suggestions(
    engine: Engine,
    study_name: str,
    target: Mapping[str, float | None],
    count: int,
    *,
    options: FitOptions,
    created_by: str | None,
) -> dict[str, Any]:
    """The proxy runs that would most shrink the recommendation's uncertainty at `target`,
    from the fit a recommendation would use (never waiting on a refit; same warnings)."""
    check_target(target)
    served = await served_fit_async(engine, study_name, options=options, created_by=created_by)
    stored = served.record
    # Validated values only in the key (never raw query text): the same question about the
    # same fit is answered from memory (count=50 costs ~200 ms of CPU otherwise).
    key = (
        stored.key,
        tuple((name, float(value)) for name, value in sorted(target.items()) if value is not None),
        count,
    )
    cached = _suggestions.get(key)
    if cached is None:
        with _engine_refusals():
            items = await to_thread.run_sync(lambda: suggest_runs(stored.result, _given(target), count))
        cached = json_safe(
            {"items": [s.to_dict() for s in items], "fit_id": stored.id, "data_version": str(stored.data_version)}
        )
        _suggestions.put(key, cached)
    return {**cached, "warnings": list(served.warnings)}


_suggestions = LRUCache(1024)


def _loss_law(stored: FitRecord) -> LossLaw:
    """The fit's loss law, or InsufficientData saying why there is none."""
    law = stored.result.loss_law
    if law is None:
        why = stored.result.no_loss_law_reason()
        reason = "no loss law was fitted" if why is None else f"{NO_LOSS_LAW}{why}"
        raise InsufficientData(f"this study has no loss law: {reason}")
    return law


async def compute_optimal_allocation(
    engine: Engine,
    study_name: str,
    compute: float,
    *,
    options: FitOptions,
    created_by: str | None,
    samples: bool = False,
) -> dict[str, Any]:
    """Compute-optimal n_params and tokens for a FLOP budget, from the study's loss law in the
    fit a recommendation would use (never waiting on a refit; same warnings).

    The answer carries intervals; the loss law's raw bootstrap samples (most of its size,
    ~20 KB) only with `samples`."""
    check_target({"compute": compute})
    served = await served_fit_async(engine, study_name, options=options, created_by=created_by)
    stored = served.record
    law = _loss_law(stored)

    def allocate() -> tuple[Any, Any]:
        allocation = compute_optimal(law, compute)
        return allocation, law.predict(allocation.n_params.value, allocation.tokens.value).interval()

    with _engine_refusals():
        allocation, loss = await to_thread.run_sync(allocate)
    law_dict = law.to_dict()
    if not samples:
        law_dict.pop("bootstrap_samples", None)
    out: dict[str, Any] = json_safe(
        {
            **allocation.to_dict(),
            "predicted_loss": loss.to_dict(),
            "loss_law": law_dict,
            "fit_id": stored.id,
            "data_version": str(stored.data_version),
            "warnings": list(served.warnings),
        }
    )
    return out

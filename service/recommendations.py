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
from service.fits import (
    FIRST_FIT_WAIT_SECONDS,
    FitRecord,
    current_fit,
    json_safe,
    served_fit_async,
)
from service.limits import MAX_BATCH_MULTIPLE, MAX_COMPUTE, TARGET_LIMITS, Bound
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
    """The fitting engine's refusals as domain errors (and nothing else)."""
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


# A fit never changes, so the answer to the same question about it never does either:
# launchers asking again (or many at once) get the encoded answer without recomputing.
_recommendations = LRUCache(4096)


async def recommendation_json(
    engine: Engine,
    study_name: str,
    target: Mapping[str, float | None],
    *,
    bootstrap: int,
    created_by: str | None,
    batch_size: float | None = None,
    batch_multiple: int | None = None,
    compute: float | None = None,
    fit_id: int | None = None,
    fresh: bool = False,
    wait_seconds: float = FIRST_FIT_WAIT_SECONDS,
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
    served_warnings: tuple[str, ...] = ()
    if fit_id is not None:
        stored = await to_thread.run_sync(lambda: pins.fit_or_gone(engine, study_name, fit_id))
    else:
        # Never waits on a refit: the newest completed fit, with a warning if runs arrived since.
        served = await served_fit_async(
            engine, study_name, bootstrap=bootstrap, created_by=created_by, fresh=fresh, wait_seconds=wait_seconds
        )
        stored, served_warnings = served.record, served.warnings
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
        cached = (document, json.dumps(document, separators=(",", ":"), allow_nan=False).encode())
        _recommendations.put(key, cached)
    document, body = cached
    if not served_warnings:
        return body
    # An answer from a fit of older data says so (contract 1.1: "fitted on N of M runs"); the
    # answer itself is the fit's, cached whatever the count of runs since.
    stale = {**document, "warnings": [*served_warnings, *document.get("warnings", [])]}
    return json.dumps(stale, separators=(",", ":"), allow_nan=False).encode()


def suggestions(
    engine: Engine,
    study_name: str,
    target: Mapping[str, float | None],
    count: int,
    *,
    bootstrap: int,
    created_by: str | None,
) -> dict[str, Any]:
    """The proxy runs that would most shrink the recommendation's uncertainty at `target`."""
    check_target(target)
    stored = current_fit(engine, study_name, bootstrap=bootstrap, created_by=created_by, any_bootstrap=True)
    # Validated values only in the key (never raw query text): the same question about the
    # same fit is answered from memory (count=50 costs ~200 ms of CPU otherwise).
    key = (
        stored.key,
        tuple((name, float(value)) for name, value in sorted(target.items()) if value is not None),
        count,
    )
    cached = _suggestions.get(key)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    with _engine_refusals():
        items = suggest_runs(stored.result, _given(target), count)
    out: dict[str, Any] = json_safe(
        {"items": [s.to_dict() for s in items], "fit_id": stored.id, "data_version": str(stored.data_version)}
    )
    _suggestions.put(key, out)
    return out


_suggestions = LRUCache(1024)


def _loss_law(stored: FitRecord) -> LossLaw:
    """The fit's loss law, or InsufficientData saying why there is none."""
    law = stored.result.loss_law
    if law is None:
        why = stored.result.no_loss_law_reason()
        reason = "no loss law was fitted" if why is None else f"{NO_LOSS_LAW}{why}"
        raise InsufficientData(f"this study has no loss law: {reason}")
    return law


def compute_optimal_allocation(
    engine: Engine, study_name: str, compute: float, *, bootstrap: int, created_by: str | None, samples: bool = False
) -> dict[str, Any]:
    """Compute-optimal n_params and tokens for a FLOP budget, from the study's loss law.

    The answer carries intervals; the loss law's raw bootstrap samples (most of its size,
    ~20 KB) only with `samples`."""
    check_target({"compute": compute})
    stored = current_fit(engine, study_name, bootstrap=bootstrap, created_by=created_by, any_bootstrap=True)
    law = _loss_law(stored)
    with _engine_refusals():
        allocation = compute_optimal(law, compute)
        loss = law.predict(allocation.n_params.value, allocation.tokens.value).interval()
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
        }
    )
    return out

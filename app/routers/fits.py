"""Fits, recommendations and sweep suggestions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from app import fit_service
from app.auth import EngineDep, Reader, Writer
from app.cache import LRUCache
from app.errors import ApiError
from app.routers.studies import ERRORS
from app.schemas import INT32_MAX, ErrorResponse
from fitting.common import InsufficientData
from fitting.loss_law import compute_optimal
from fitting.plan import suggest_runs
from fitting.recommend import MissingTarget, recommend
from hpscale.config import Settings

router = APIRouter(prefix="/v1/studies", tags=["fits"])

FIT_ERRORS = {
    **ERRORS,
    409: {"model": ErrorResponse, "description": "insufficient_data: what runs are missing"},
}
MAX_BOOTSTRAP = 5_000
# Every target quantity (parameters, tokens, width, depth, sequences, FLOPs) is a count ≥ 1;
# this also keeps denormal inputs like 5e-324 from underflowing in log space.
PositiveQuery = Annotated[float | None, Query(ge=1, le=1e30, allow_inf_nan=False)]


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


class FitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bootstrap: Annotated[int, Field(ge=0, le=MAX_BOOTSTRAP)] | None = None


@router.post("/{name}/fits", status_code=201, responses=FIT_ERRORS)
def create_fit(
    name: str,
    principal: Writer,
    engine: EngineDep,
    settings: SettingsDep,
    body: Annotated[FitRequest | None, Body()] = None,
) -> dict[str, Any]:
    """Fit the study's current runs (or return the fit already made of exactly these runs)."""
    bootstrap = settings.default_bootstrap if body is None or body.bootstrap is None else body.bootstrap
    return fit_service.current_fit(engine, name, bootstrap=bootstrap, created_by=principal.name).to_contract()


@router.get("/{name}/fits/latest", responses=FIT_ERRORS)
def latest_fit(name: str, _: Reader, engine: EngineDep) -> dict[str, Any]:
    return fit_service.latest_fit(engine, name).to_contract()


@router.get("/{name}/fits/{fit_id}", responses=FIT_ERRORS)
def show_fit(
    name: str, fit_id: Annotated[int, Path(ge=1, le=INT32_MAX)], _: Reader, engine: EngineDep
) -> dict[str, Any]:
    return fit_service.fit_by_id(engine, name, fit_id).to_contract()


@router.get("/{name}/recommendation", responses=FIT_ERRORS, response_class=Response)
async def recommendation(
    name: str,
    principal: Reader,
    engine: EngineDep,
    settings: SettingsDep,
    n_params: PositiveQuery = None,
    tokens: PositiveQuery = None,
    width: PositiveQuery = None,
    depth: PositiveQuery = None,
    batch_size: Annotated[PositiveQuery, Query(description="the learning rate is the optimum at this batch")] = None,
    batch_multiple: Annotated[int | None, Query(ge=1, le=1_000_000, description="round the batch to a multiple of this")] = None,
    compute: Annotated[PositiveQuery, Query(description="FLOP budget: use the loss law's compute-optimal n_params, tokens")] = None,
    seq_len: Annotated[int | None, Query(ge=1, le=INT32_MAX, description="tokens per sequence, for batch_tokens")] = None,
) -> Response:
    """Learning rate, batch size and weight decay at a target scale, with 90% intervals."""
    target = {"n_params": n_params, "tokens": tokens, "width": width, "depth": depth, "seq_len": seq_len}
    if compute is not None and (n_params is not None or tokens is not None):
        raise _query_error("compute", "give either compute or n_params and tokens, not both")
    # Async, with the work in threads only on a miss: the hot path (a launcher asking about an
    # unchanged study) then never leaves the event loop.
    stored = await fit_service.current_fit_async(
        engine, name, bootstrap=settings.default_bootstrap, created_by=principal.name, any_bootstrap=True
    )
    # A fit never changes, so the answer to the same question about it never does either:
    # launchers asking again (or many at once) get the encoded answer without recomputing.
    key = (stored.key, stored.study, tuple(target.items()), batch_size, batch_multiple, compute)
    body = _recommendations.get(key)
    if body is None:
        with _fitting_errors():
            result = await run_in_threadpool(
                lambda: recommend(stored.result, target, stored.study, batch_size=batch_size,
                                  batch_multiple=batch_multiple, compute=compute)
            )
        document = {**result.to_dict(), "fit_id": stored.id, "data_version": str(stored.data_version)}
        body = json.dumps(fit_service.json_safe(document), separators=(",", ":"), allow_nan=False).encode()
        _recommendations.put(key, body)
    return Response(content=body, media_type="application/json")


_recommendations = LRUCache(4096)


@contextmanager
def _fitting_errors() -> Iterator[None]:
    """The engine's refusals as the contract's errors: 409 for missing runs, 422 for the target."""
    try:
        yield
    except MissingTarget as error:
        raise _query_error(error.variable, str(error)) from None
    except InsufficientData as error:
        raise ApiError(409, "insufficient_data", str(error)) from None
    except ValueError as error:
        raise _query_error("query", str(error)) from None
    except ArithmeticError:
        # The laws' numbers overflow only for targets absurdly far from every proxy.
        raise _query_error(
            "target", "the fitted laws give no finite answer at this target: it lies too far outside the proxies' range"
        ) from None


def _query_error(field: str, message: str) -> ApiError:
    return ApiError(422, "validation_error", message, [{"field": field, "message": message, "index": None, "loc": [field]}])


@router.get("/{name}/suggestions", responses=FIT_ERRORS)
def suggestions(
    name: str,
    principal: Reader,
    engine: EngineDep,
    settings: SettingsDep,
    count: Annotated[int, Query(ge=1, le=50)] = 5,
    n_params: PositiveQuery = None,
    tokens: PositiveQuery = None,
    width: PositiveQuery = None,
    depth: PositiveQuery = None,
) -> dict[str, Any]:
    """The proxy runs that would most shrink the recommendation's uncertainty at the target."""
    target = {"n_params": n_params, "tokens": tokens, "width": width, "depth": depth}
    stored = fit_service.current_fit(
        engine, name, bootstrap=settings.default_bootstrap, created_by=principal.name, any_bootstrap=True
    )
    with _fitting_errors():
        items = suggest_runs(stored.result, target, count)
    return fit_service.json_safe(
        {"items": [s.to_dict() for s in items], "fit_id": stored.id, "data_version": str(stored.data_version)}
    )


@router.get("/{name}/compute-optimal", responses=FIT_ERRORS)
def compute_optimal_allocation(
    name: str,
    principal: Reader,
    engine: EngineDep,
    settings: SettingsDep,
    compute: Annotated[float, Query(ge=1, le=1e35, allow_inf_nan=False, description="FLOP budget C = 6·N·D")],
) -> dict[str, Any]:
    """Compute-optimal n_params and tokens for a FLOP budget, from the study's loss law."""
    stored = fit_service.current_fit(
        engine, name, bootstrap=settings.default_bootstrap, created_by=principal.name, any_bootstrap=True
    )
    law = stored.result.loss_law
    if law is None:
        reason = next((w for w in stored.result.warnings if w.startswith("no loss law")), "no loss law was fitted")
        raise ApiError(409, "insufficient_data", f"this study has no loss law: {reason}")
    allocation = compute_optimal(law, compute)
    loss = law.predict(allocation.n_params.value, allocation.tokens.value).interval()
    return fit_service.json_safe({
        **allocation.to_dict(),
        "predicted_loss": loss.to_dict(),
        "loss_law": law.to_dict(),
        "fit_id": stored.id,
        "data_version": str(stored.data_version),
    })

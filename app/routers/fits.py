"""Fits, recommendations, sweep suggestions and compute-optimal allocations."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from app.deps import UNKNOWN_QUERY_CHECK, EngineDep, Reader, SettingsDep, Writer
from app.schemas import FIT_ERRORS
from app.security import OffLoopJSONRoute
from service import decisions, fits, pins, recommendations
from service.decisions import MAX_DESIGNS
from service.errors import InvalidInput, field_detail
from service.limits import INT32_MAX, MAX_BOOTSTRAP, MAX_SUGGESTIONS, bootstrap_refusal

router = APIRouter(prefix="/v1/studies", tags=["fits"], dependencies=UNKNOWN_QUERY_CHECK, route_class=OffLoopJSONRoute)

# Bounds (≥ 1, each quantity's contract limit) are the service's: service.limits.TARGET_LIMITS.
Quantity = Annotated[float | None, Query(allow_inf_nan=False)]


class FitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bootstrap: Annotated[int, Field(ge=0, le=MAX_BOOTSTRAP)] | None = None


@router.post("/{name}/fits", status_code=201, responses=FIT_ERRORS)
async def create_fit(
    name: str,
    principal: Writer,
    engine: EngineDep,
    settings: SettingsDep,
    body: Annotated[FitRequest | None, Body()] = None,
) -> dict[str, Any]:
    """A fit of the study's runs as of this request (or a later fit): the one already made, or
    one made now in the fitting process. Waits at most HPSCALE_FIT_WAIT_SECONDS (then 503)."""
    bootstrap = settings.bootstrap if body is None or body.bootstrap is None else body.bootstrap
    if reason := bootstrap_refusal(bootstrap, settings.bootstrap):
        raise InvalidInput(f"bootstrap {reason}", [field_detail("bootstrap", reason)])
    options = fits.FitOptions.of(settings, bootstrap)
    record = await fits.fit_now_async(engine, name, options=options, created_by=principal.name)
    return record.to_contract()


@router.get("/{name}/fits/latest", responses=FIT_ERRORS)
def latest_fit(name: str, _: Reader, engine: EngineDep) -> dict[str, Any]:
    return fits.latest_fit(engine, name).to_contract()


@router.get("/{name}/fits/{fit_id}", responses=FIT_ERRORS)
def show_fit(
    name: str, fit_id: Annotated[int, Path(ge=1, le=INT32_MAX)], _: Reader, engine: EngineDep
) -> dict[str, Any]:
    return pins.fit_or_gone(engine, name, fit_id).to_contract()


@router.get("/{name}/recommendation", responses=FIT_ERRORS, response_class=Response)
async def recommendation(
    name: str,
    principal: Reader,
    engine: EngineDep,
    settings: SettingsDep,
    n_params: Quantity = None,
    tokens: Quantity = None,
    width: Quantity = None,
    depth: Quantity = None,
    batch_size: Annotated[Quantity, Query(description="the learning rate is the optimum at this batch")] = None,
    batch_multiple: Annotated[int | None, Query(description="round the batch to a multiple of this")] = None,
    compute: Annotated[
        Quantity, Query(description="FLOP budget: use the loss law's compute-optimal n_params, tokens")
    ] = None,
    seq_len: Annotated[int | None, Query(description="tokens per sequence, for batch_tokens")] = None,
    fit_id: Annotated[
        int | None,
        Query(ge=1, le=INT32_MAX, description="answer from this fit (the fit_id of an earlier answer): reproducible"),
    ] = None,
    fresh: Annotated[
        bool, Query(description="wait for a fit of the current runs instead of answering from the newest fit")
    ] = False,
    max_loss_increase: Annotated[
        float | None,
        Query(allow_inf_nan=False, description="also the largest batch within this fraction of the optimal loss"),
    ] = None,
) -> Response:
    """Learning rate, batch size and weight decay at a target scale, with 90% intervals."""
    body = await recommendations.recommendation_json(
        engine,
        name,
        {"n_params": n_params, "tokens": tokens, "width": width, "depth": depth, "seq_len": seq_len},
        options=fits.FitOptions.of(settings),
        created_by=principal.name,
        batch_size=batch_size,
        batch_multiple=batch_multiple,
        compute=compute,
        fit_id=fit_id,
        fresh=fresh,
        max_loss_increase=max_loss_increase,
    )
    return Response(content=body, media_type="application/json")


@router.get("/{name}/suggestions", responses=FIT_ERRORS)
async def suggestions(
    name: str,
    principal: Reader,
    engine: EngineDep,
    settings: SettingsDep,
    count: Annotated[
        int | None, Query(ge=1, le=MAX_SUGGESTIONS, description="suggestions (default 5; with budget_flops: up to 40)")
    ] = None,
    n_params: Quantity = None,
    tokens: Quantity = None,
    width: Quantity = None,
    depth: Quantity = None,
    budget_flops: Annotated[
        Quantity, Query(description="FLOPs to spend (6·N·D per run): the designs that cut the target's penalty most")
    ] = None,
    max_n_params: Annotated[Quantity, Query(description="with budget_flops: no proxy larger than this")] = None,
    max_tokens: Annotated[Quantity, Query(description="with budget_flops: no proxy trained on more tokens")] = None,
) -> dict[str, Any]:
    """The proxy runs that would most shrink the recommendation's uncertainty at the target; with
    `budget_flops`, the scales and LR × batch (× wd) runs within each that remove the most expected
    loss penalty per FLOP within that budget (contract 1.2)."""
    target = {"n_params": n_params, "tokens": tokens, "width": width, "depth": depth}
    decisions.check_budget(budget_flops, max_n_params, max_tokens)
    options = fits.FitOptions.of(settings)
    if budget_flops is not None:
        return await decisions.budget_suggestions(
            engine,
            name,
            target,
            budget_flops=budget_flops,
            max_n_params=max_n_params,
            max_tokens=max_tokens,
            count=count or MAX_DESIGNS,
            options=options,
            created_by=principal.name,
        )
    return await recommendations.suggestions(
        engine, name, target, count or 5, options=options, created_by=principal.name
    )


@router.get("/{name}/compute-optimal", responses=FIT_ERRORS)
async def compute_optimal_allocation(
    name: str,
    principal: Reader,
    engine: EngineDep,
    settings: SettingsDep,
    compute: Annotated[float, Query(allow_inf_nan=False, description="FLOP budget C = 6·N·D")],
    samples: Annotated[bool, Query(description="include the loss law's raw bootstrap samples")] = False,
) -> dict[str, Any]:
    """Compute-optimal n_params and tokens for a FLOP budget, from the study's loss law."""
    return await recommendations.compute_optimal_allocation(
        engine, name, compute, options=fits.FitOptions.of(settings), created_by=principal.name, samples=samples
    )

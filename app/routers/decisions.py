"""Decisions from a fit (contract 1.2): does the study's transfer work?"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.deps import UNKNOWN_QUERY_CHECK, EngineDep, Reader, SettingsDep
from app.schemas import FIT_ERRORS
from service import decisions, fits
from service.limits import INT32_MAX

router = APIRouter(prefix="/v1/studies", tags=["fits"], dependencies=UNKNOWN_QUERY_CHECK)

Quantity = Annotated[float | None, Query(allow_inf_nan=False)]


@router.get("/{name}/transfer-check", responses=FIT_ERRORS)
async def transfer_check(
    name: str,
    principal: Reader,
    engine: EngineDep,
    settings: SettingsDep,
    n_params: Annotated[Quantity, Query(description="target for the cost of reusing the base model's optimum")] = None,
    tokens: Quantity = None,
    width: Quantity = None,
    depth: Quantity = None,
    tolerance: Annotated[
        Quantity, Query(description="|drift exponent| within which the optimum 'transfers' (default 0.1)")
    ] = None,
    fit_id: Annotated[int | None, Query(ge=1, le=INT32_MAX, description="answer from this fit")] = None,
) -> dict[str, Any]:
    """For width and depth and each hyperparameter with a law: the drift exponent of its optimum along the
    study's proxies with a 90% interval, a verdict (transfers, drifts, undetermined), hints and, at a target,
    the loss cost of reusing the base model's optimum instead of the recommendation."""
    return await decisions.transfer_check_answer(
        engine,
        name,
        {"n_params": n_params, "tokens": tokens, "width": width, "depth": depth},
        tolerance=tolerance,
        fit_id=fit_id,
        options=fits.FitOptions.of(settings),
        created_by=principal.name,
    )

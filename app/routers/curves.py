"""Fit curves and run states for plotting (the dashboard computes no statistics itself)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query

from app.deps import UNKNOWN_QUERY_CHECK, EngineDep, Reader, SettingsDep
from app.schemas import FIT_ERRORS
from service import curves
from service.fits import FitOptions

router = APIRouter(prefix="/v1/studies", tags=["fits"], dependencies=UNKNOWN_QUERY_CHECK)

# A fit id, or "latest".
FitRef = Annotated[str, Path(pattern=r"^(latest|[1-9][0-9]{0,9})$", description="a fit id or 'latest'")]
Fixed = Annotated[float | None, Query(allow_inf_nan=False, gt=0)]
Axis = Literal["learning_rate", "batch_size", "weight_decay"]


@router.get("/{name}/fits/{fit_ref}/curves", responses=FIT_ERRORS)
async def fit_curves(
    name: str,
    fit_ref: FitRef,
    principal: Reader,
    engine: EngineDep,
    settings: SettingsDep,
    law: Annotated[list[Axis] | None, Query(description="laws to evaluate (default: all three)")] = None,
    x: Annotated[
        Literal["n_params", "tokens", "width", "depth", "compute"], Query(description="the variable along the curve")
    ] = "n_params",
    points: Annotated[int, Query(ge=2, le=200)] = 50,
    n_params: Fixed = None,
    tokens: Fixed = None,
    width: Fixed = None,
    depth: Fixed = None,
    x_min: Annotated[
        float | None, Query(allow_inf_nan=False, gt=0, description="extend the curve down to this x")
    ] = None,
    x_max: Annotated[
        float | None, Query(allow_inf_nan=False, gt=0, description="extend the curve up to this x")
    ] = None,
) -> dict[str, Any]:
    """Each law along `x` with its 90% predictive band (the recommendation's interval at each
    point; other variables fixed at the given values, default the proxies' geometric centre),
    the prior (published-exponent) line, the loss-law curves and the per-scale fitted bowls."""
    return await curves.fit_curves(
        engine,
        name,
        fit_ref,
        laws=list(law or curves.AXES),
        x=x,
        points=points,
        fixed={"n_params": n_params, "tokens": tokens, "width": width, "depth": depth},
        x_range=None if x_min is None and x_max is None else (x_min or math.inf, x_max or 0.0),
        options=FitOptions.of(settings),
        created_by=principal.name,
    )


@router.get("/{name}/fits/{fit_ref}/run-states", responses=FIT_ERRORS)
async def fit_run_states(
    name: str, fit_ref: FitRef, principal: Reader, engine: EngineDep, settings: SettingsDep
) -> dict[str, Any]:
    """How the fit used each run: near_optimal, used, diverged (incl. left the basin), outlier,
    excluded or failed, by run id, with counts."""
    return await curves.fit_run_states(
        engine, name, fit_ref, options=FitOptions.of(settings), created_by=principal.name
    )

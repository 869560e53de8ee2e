"""Runs: submit one or a batch (atomic, idempotent by run_key), page through, export CSV."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query
from fastapi.responses import StreamingResponse

from app.deps import UNKNOWN_QUERY_CHECK, EngineDep, Reader, Writer
from app.schemas import ERRORS, RunOut, RunPage, SubmitResult
from app.security import OffLoopJSONRoute
from service import runs
from service.limits import DEFAULT_PAGE_SIZE, INT32_MAX, MAX_PAGE_SIZE
from service.runs import RunFilters
from service.schemas import RunBatch, RunStatus, RunSubmission

router = APIRouter(prefix="/v1/studies", tags=["runs"], dependencies=UNKNOWN_QUERY_CHECK, route_class=OffLoopJSONRoute)


@router.post(
    "/{name}/runs",
    status_code=201,
    response_model=SubmitResult,
    responses=ERRORS,
    summary="Submit one run, or a batch {'runs': [...]} of at most 10,000 (atomic)",
)
def submit_runs(
    name: str, body: Annotated[RunSubmission, Body()], principal: Writer, engine: EngineDep
) -> SubmitResult:
    batch = isinstance(body, RunBatch)
    submitted = body.runs if isinstance(body, RunBatch) else [body]
    result = runs.submit_runs(engine, name, submitted, indexed=batch, created_by=principal.name)
    return SubmitResult(inserted=result.inserted, duplicates=result.duplicates, ids=result.ids)


@router.get("/{name}/runs", response_model=RunPage, responses=ERRORS)
def list_runs(
    name: str,
    _: Reader,
    engine: EngineDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    status: RunStatus | None = None,
    width: Annotated[int | None, Query(gt=0, le=INT32_MAX)] = None,
    depth: Annotated[int | None, Query(gt=0, le=INT32_MAX)] = None,
    created_by: Annotated[
        str | None, Query(max_length=64, pattern=r"^[^\x00]*$", description="token name that submitted the run")
    ] = None,
) -> RunPage:
    filters = RunFilters(status=status, width=width, depth=depth, created_by=created_by)
    page = runs.list_runs(engine, name, cursor=cursor, limit=limit, filters=filters)
    return RunPage(items=[RunOut(**row) for row in page.items], next_cursor=page.next_cursor)


@router.get(
    "/{name}/runs.csv",
    responses={**ERRORS, 200: {"content": {"text/csv": {}}, "description": "all runs as CSV"}},
    response_class=StreamingResponse,
)
def export_runs_csv(name: str, _: Reader, engine: EngineDep) -> StreamingResponse:
    study, lines = runs.export_csv(engine, name)
    return StreamingResponse(
        lines,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{study.name}-runs.csv"'},
    )

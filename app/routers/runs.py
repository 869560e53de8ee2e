"""Runs: submit one or a batch (atomic, idempotent by run_key), page through, export CSV."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Response
from fastapi.responses import StreamingResponse

from app.deps import UNKNOWN_QUERY_CHECK, Admin, EngineDep, Reader, Writer
from app.schemas import (
    ERRORS,
    AuditList,
    AuditOut,
    DeletedResult,
    DryRunResult,
    ExcludeRequest,
    IncludeRequest,
    RunOut,
    RunPage,
    SubmitResult,
)
from app.security import OffLoopJSONRoute
from service import runs, undo
from service.limits import DEFAULT_PAGE_SIZE, INT32_MAX, MAX_PAGE_SIZE
from service.runs import RunFilters
from service.schemas import RunBatch, RunStatus, RunSubmission

router = APIRouter(prefix="/v1/studies", tags=["runs"], dependencies=UNKNOWN_QUERY_CHECK, route_class=OffLoopJSONRoute)


@router.post(
    "/{name}/runs",
    status_code=201,
    response_model=SubmitResult | DryRunResult,
    responses={**ERRORS, 200: {"model": DryRunResult, "description": "dry_run=true: valid; nothing was stored"}},
    summary="Submit one run, or a batch {'runs': [...]} of at most 10,000 (atomic)",
)
def submit_runs(
    name: str,
    body: Annotated[RunSubmission, Body()],
    principal: Writer,
    engine: EngineDep,
    response: Response,
    dry_run: Annotated[
        bool, Query(description="check everything a submission is checked for (scope, study, fields) but store nothing")
    ] = False,
) -> SubmitResult | DryRunResult:
    batch = isinstance(body, RunBatch)
    submitted = body.runs if isinstance(body, RunBatch) else [body]
    if dry_run:
        response.status_code = 200
        return DryRunResult(valid=runs.check_submission(engine, name, submitted, indexed=batch))
    result = runs.submit_runs(engine, name, submitted, indexed=batch, created_by=principal.name)
    assert result.submission_id is not None
    return SubmitResult(
        inserted=result.inserted,
        duplicates=result.duplicates,
        ids=result.ids,
        submission_id=result.submission_id,
        replaced=result.replaced,
    )


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
    excluded: Annotated[bool | None, Query(description="only excluded (true) or only used (false) runs")] = None,
) -> RunPage:
    filters = RunFilters(status=status, width=width, depth=depth, created_by=created_by, excluded=excluded)
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


RunId = Annotated[int, Path(ge=1, le=INT32_MAX)]


@router.post(
    "/{name}/runs/{run_id}/exclude",
    response_model=RunOut,
    responses=ERRORS,
    summary="Leave a run out of every fit (it stays stored and listed); the reason is audited",
)
def exclude_run(name: str, run_id: RunId, body: ExcludeRequest, principal: Writer, engine: EngineDep) -> RunOut:
    run = undo.set_excluded(engine, name, run_id, excluded=True, reason=body.reason, actor=principal.name)
    return RunOut(**run)


@router.post(
    "/{name}/runs/{run_id}/include",
    response_model=RunOut,
    responses=ERRORS,
    summary="Let fits use an excluded run again",
)
def include_run(
    name: str,
    run_id: RunId,
    principal: Writer,
    engine: EngineDep,
    body: Annotated[IncludeRequest | None, Body()] = None,
) -> RunOut:
    reason = None if body is None else body.reason
    run = undo.set_excluded(engine, name, run_id, excluded=False, reason=reason, actor=principal.name)
    return RunOut(**run)


@router.delete(
    "/{name}/submissions/{submission_id}",
    response_model=DeletedResult,
    responses=ERRORS,
    summary="Undo a submission (a POST of runs or an import) as a whole: delete the runs it stored",
)
def delete_submission(
    name: str, submission_id: Annotated[int, Path(ge=1, le=INT32_MAX)], principal: Admin, engine: EngineDep
) -> DeletedResult:
    return DeletedResult(deleted=undo.delete_submission(engine, name, submission_id, actor=principal.name))


@router.get(
    "/{name}/audit", response_model=AuditList, responses=ERRORS, summary="Exclusions and deletions, newest first"
)
def study_audit(name: str, _: Reader, engine: EngineDep) -> AuditList:
    return AuditList(items=[AuditOut(**vars(r)) for r in undo.audit_log(engine, name)])

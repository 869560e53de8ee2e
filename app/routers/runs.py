"""Runs: submit one or a batch (atomic, idempotent by run_key), page through, export CSV."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Path, Query, Response
from fastapi.responses import StreamingResponse

from app.deps import UNKNOWN_QUERY_CHECK, Admin, EngineDep, Reader, Writer
from app.schemas import (
    ERRORS,
    FIT_ERRORS,
    AuditList,
    AuditOut,
    DeletedResult,
    DryRunResult,
    ExcludeRequest,
    IncludeRequest,
    RunDetail,
    RunOut,
    RunPage,
    SubmitResult,
)
from app.security import OffLoopJSONRoute
from service import runs, undo
from service.limits import DEFAULT_PAGE_SIZE, INT32_MAX, MAX_PAGE_SIZE
from service.run_states import FIT_STATES
from service.runs import SORTABLE, Listing, RunFilters
from service.schemas import RunBatch, RunStatus, RunSubmission

# `?state=`: a fit state (the dashboard's "near-optimal" spelling is accepted too).
StateQuery = Literal[(*FIT_STATES, "near-optimal")]  # type: ignore[valid-type]
SortQuery = Literal[SORTABLE]  # type: ignore[valid-type]

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


def listing(
    status: RunStatus | None = None,
    width: Annotated[int | None, Query(gt=0, le=INT32_MAX)] = None,
    depth: Annotated[int | None, Query(gt=0, le=INT32_MAX)] = None,
    created_by: Annotated[
        str | None, Query(max_length=64, pattern=r"^[^\x00]*$", description="token name that submitted the run")
    ] = None,
    excluded: Annotated[bool | None, Query(description="only excluded (true) or only used (false) runs")] = None,
    state: Annotated[
        StateQuery | None,
        Query(
            description="how the study's latest fit used the run: near_optimal, used, diverged (incl. > 20% above "
            "its scale's best), outlier, failed (not used), or excluded; over the whole study"
        ),
    ] = None,
    sort: Annotated[SortQuery, Query(description="the column to sort by (NULLs last)")] = "id",
    order: Annotated[Literal["asc", "desc"], Query()] = "asc",
) -> Listing:
    """The filters and order of a runs listing (shared by the JSON pages and the CSV)."""
    filters = RunFilters(status=status, width=width, depth=depth, created_by=created_by, excluded=excluded)
    fit_state = "near_optimal" if state == "near-optimal" else state
    return Listing(filters, fit_state, sort, order == "desc")


ListingDep = Annotated[Listing, Depends(listing)]


@router.get("/{name}/runs", response_model=RunPage, responses=FIT_ERRORS)
def list_runs(
    name: str,
    _: Reader,
    engine: EngineDep,
    view: ListingDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> RunPage:
    """A page of the study's runs, filtered and sorted on the server over the whole study; each run
    with its state in the latest fit. Pass `next_cursor` back as `cursor` with the same filters."""
    page = runs.list_runs(engine, name, cursor=cursor, limit=limit, filters=view.filters, listing=view)
    return RunPage(
        items=[RunOut(**row) for row in page.items], next_cursor=page.next_cursor, fit_id=page.fit_id, total=page.total
    )


@router.get(
    "/{name}/runs.csv",
    responses={**FIT_ERRORS, 200: {"content": {"text/csv": {}}, "description": "the runs as CSV"}},
    response_class=StreamingResponse,
)
def export_runs_csv(name: str, _: Reader, engine: EngineDep, view: ListingDep) -> StreamingResponse:
    """All runs as CSV, or, with the listing's filters and sort, the runs that view shows in its order."""
    study, lines = runs.export_csv(engine, name, view)
    return StreamingResponse(
        lines,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{study.name}-runs.csv"'},
    )


RunId = Annotated[int, Path(ge=1, le=INT32_MAX)]


@router.get(
    "/{name}/runs/{run_id}",
    response_model=RunDetail,
    responses=ERRORS,
    summary="One run: its fields, every curve, its state in the latest fit and why, its submission and audit trail",
)
def get_run(name: str, run_id: RunId, _: Reader, engine: EngineDep) -> RunDetail:
    return RunDetail(**runs.run_detail(engine, name, run_id))


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
    "/{name}/audit",
    response_model=AuditList,
    responses=ERRORS,
    summary="Submissions, imports, exclusions, replacements and deletions, newest first",
)
def study_audit(name: str, _: Reader, engine: EngineDep) -> AuditList:
    return AuditList(items=[AuditOut(**vars(r)) for r in undo.audit_log(engine, name)])

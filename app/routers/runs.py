"""Runs: submit one or a batch (atomic, idempotent by run_key), page through, export CSV."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query
from fastapi.responses import StreamingResponse

from app.auth import EngineDep, Reader, Writer
from app.csv_io import csv_lines
from app.errors import ApiError
from app.routers.studies import ERRORS, get_study_or_404
from app.schemas import INT32_MAX, RunBatch, RunIn, RunOut, RunPage, RunSubmission, SubmitResult
from store import queries
from store.db import read_connection, run_in_transaction

router = APIRouter(prefix="/v1/studies", tags=["runs"])


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"run:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, number = text.partition(":")
        if prefix != "run" or not number.isdigit() or len(number) > 18:
            raise ValueError
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(
            422,
            "validation_error",
            "invalid cursor: pass back the next_cursor of a previous page unchanged",
            [{"field": "cursor", "message": "not a cursor returned by this endpoint", "index": None, "loc": ["cursor"]}],
        ) from None


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
    runs: list[RunIn] = body.runs if isinstance(body, RunBatch) else [body]

    def store(conn):  # type: ignore[no-untyped-def]
        study = get_study_or_404(conn, name)
        rows = [run.model_dump() for run in runs]
        if study.seq_len is not None:
            for row in rows:
                if row["seq_len"] is None:
                    row["seq_len"] = study.seq_len
        return queries.insert_runs(conn, study.id, rows, principal.name)

    result = run_in_transaction(engine, store)
    return SubmitResult(inserted=result.inserted, duplicates=result.duplicates, ids=result.ids)


@router.get("/{name}/runs", response_model=RunPage, responses=ERRORS)
def list_runs(
    name: str,
    _: Reader,
    engine: EngineDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    status: Literal["completed", "diverged", "failed"] | None = None,
    width: Annotated[int | None, Query(gt=0, le=INT32_MAX)] = None,
    depth: Annotated[int | None, Query(gt=0, le=INT32_MAX)] = None,
    created_by: Annotated[str | None, Query(max_length=64, pattern=r"^[^\x00]*$", description="token name that submitted the run")] = None,
) -> RunPage:
    after_id = decode_cursor(cursor) if cursor else 0
    filters = queries.RunFilters(status=status, width=width, depth=depth, created_by=created_by)
    with read_connection(engine) as conn:
        study = get_study_or_404(conn, name)
        page, last_id = queries.list_runs(conn, study.id, after_id=after_id, limit=limit, filters=filters)
    return RunPage(
        items=[RunOut(**row) for row in page],
        next_cursor=None if last_id is None else encode_cursor(last_id),
    )


@router.get(
    "/{name}/runs.csv",
    responses={**ERRORS, 200: {"content": {"text/csv": {}}, "description": "all runs as CSV"}},
    response_class=StreamingResponse,
)
def export_runs_csv(name: str, _: Reader, engine: EngineDep) -> StreamingResponse:
    with read_connection(engine) as conn:
        study = get_study_or_404(conn, name)
    extra_keys = queries.run_extra_keys(engine, study.id)
    return StreamingResponse(
        csv_lines(queries.iter_runs(engine, study.id), extra_keys),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{study.name}-runs.csv"'},
    )

"""Studies: create (admin), list and show (read)."""

from __future__ import annotations

import re

from fastapi import APIRouter
from sqlalchemy import Connection

from app.auth import Admin, EngineDep, Reader
from app.errors import ApiError
from app.schemas import STUDY_NAME_PATTERN, ErrorResponse, StudyIn, StudyList, StudyOut
from store import queries
from store.db import read_connection, run_in_transaction
from store.models import Study

router = APIRouter(prefix="/v1/studies", tags=["studies"])
_VALID_NAME = re.compile(STUDY_NAME_PATTERN.removeprefix("^").removesuffix("$"))

ERRORS = {
    401: {"model": ErrorResponse, "description": "missing or invalid token"},
    403: {"model": ErrorResponse, "description": "token lacks the needed scope"},
    404: {"model": ErrorResponse, "description": "unknown study"},
    422: {"model": ErrorResponse, "description": "invalid input; each detail names the field"},
}


def study_out(study: Study, run_count: int | None = None, latest_fit_id: int | None = None) -> StudyOut:
    return StudyOut(
        id=study.id,
        name=study.name,
        description=study.description,
        parameterization=study.parameterization,
        optimizer=study.optimizer,
        base_width=study.base_width,
        base_depth=study.base_depth,
        seq_len=study.seq_len,
        data_version=str(study.data_version),
        created_at=study.created_at,
        run_count=run_count,
        latest_fit_id=latest_fit_id,
    )


def get_study_or_404(conn: Connection, name: str) -> Study:
    # A name that could never have been created (NUL bytes, odd characters, too long) is
    # unknown without asking the database, which may refuse to even compare it (PostgreSQL
    # and NUL).
    study = queries.get_study(conn, name) if _VALID_NAME.fullmatch(name) else None
    if study is None:
        raise ApiError(404, "not_found", f"study '{name}' does not exist")
    return study


@router.post(
    "",
    status_code=201,
    response_model=StudyOut,
    responses={**ERRORS, 409: {"model": ErrorResponse, "description": "name taken"}},
)
def create_study(body: StudyIn, principal: Admin, engine: EngineDep) -> StudyOut:
    study = run_in_transaction(
        engine, lambda conn: queries.create_study(conn, body.model_dump(), principal.name)
    )
    if study is None:
        raise ApiError(409, "conflict", f"study '{body.name}' already exists")
    return study_out(study, run_count=0, latest_fit_id=None)


@router.get("", response_model=StudyList, responses=ERRORS)
def list_studies(_: Reader, engine: EngineDep) -> StudyList:
    with read_connection(engine) as conn:
        return StudyList(items=[study_out(s) for s in queries.list_studies(conn)])


@router.get("/{name}", response_model=StudyOut, responses=ERRORS)
def show_study(name: str, _: Reader, engine: EngineDep) -> StudyOut:
    with read_connection(engine) as conn:
        study = get_study_or_404(conn, name)
        return study_out(
            study,
            run_count=queries.study_run_count(conn, study.id),
            latest_fit_id=queries.latest_fit_id(conn, study.id),
        )

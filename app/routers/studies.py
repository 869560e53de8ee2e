"""Studies: create (admin), list and show (read)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.deps import UNKNOWN_QUERY_CHECK, Admin, EngineDep, Reader
from app.schemas import ERRORS, ErrorResponse, StudyList, StudyOut
from app.security import OffLoopJSONRoute
from service import studies, undo
from service.schemas import StudyIn

router = APIRouter(
    prefix="/v1/studies", tags=["studies"], dependencies=UNKNOWN_QUERY_CHECK, route_class=OffLoopJSONRoute
)


@router.post(
    "",
    status_code=201,
    response_model=StudyOut,
    responses={**ERRORS, 409: {"model": ErrorResponse, "description": "name taken"}},
)
def create_study(body: StudyIn, principal: Admin, engine: EngineDep) -> StudyOut:
    return StudyOut.of(studies.create_study(engine, body, principal.name), run_count=0, latest_fit_id=None)


@router.get("", response_model=StudyList, responses=ERRORS)
def list_studies(_: Reader, engine: EngineDep) -> StudyList:
    return StudyList(items=[StudyOut.of_summary(s) for s in studies.list_study_summaries(engine)])


@router.get("/{name}", response_model=StudyOut, responses=ERRORS)
def show_study(name: str, _: Reader, engine: EngineDep) -> StudyOut:
    return StudyOut.of_summary(studies.show_study(engine, name))


@router.delete("/{name}", status_code=204, response_class=Response, responses=ERRORS)
def delete_study(name: str, principal: Admin, engine: EngineDep) -> Response:
    """Delete the study with its runs and fits (audited)."""
    undo.delete_study(engine, name, actor=principal.name)
    return Response(status_code=204)

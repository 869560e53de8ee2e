"""Response bodies of the HTTP contract (../shared/contract/API.md).

What clients submit (studies, runs) is validated by `service.schemas`, shared with the CLI.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from service.studies import Study, StudySummary


class StudyOut(BaseModel):
    id: int
    name: str
    description: str | None
    parameterization: str
    optimizer: str
    base_width: int | None
    base_depth: int | None
    seq_len: int | None
    priors: str
    loss_can_be_negative: bool
    data_version: str
    created_at: datetime
    run_count: int | None = None
    latest_fit_id: int | None = None

    @classmethod
    def of(cls, study: Study, run_count: int | None = None, latest_fit_id: int | None = None) -> StudyOut:
        return cls(
            id=study.id,
            name=study.name,
            description=study.description,
            parameterization=study.parameterization,
            optimizer=study.optimizer,
            base_width=study.base_width,
            base_depth=study.base_depth,
            seq_len=study.seq_len,
            priors=study.priors,
            loss_can_be_negative=study.loss_can_be_negative,
            data_version=str(study.data_version),
            created_at=study.created_at,
            run_count=run_count,
            latest_fit_id=latest_fit_id,
        )

    @classmethod
    def of_summary(cls, summary: StudySummary) -> StudyOut:
        return cls.of(summary.study, summary.run_count, summary.latest_fit_id)


class StudyList(BaseModel):
    items: list[StudyOut]


class RunOut(BaseModel):
    id: int
    run_key: str | None
    n_params: float
    tokens: float
    width: int | None
    depth: int | None
    seq_len: int | None
    learning_rate: float
    batch_size: int
    weight_decay: Annotated[float | None, Field(description="null: unknown (an import whose source had none)")]
    status: str
    final_loss: float | None
    loss_curve: list[list[float]] | None
    seed: int | None
    extra: dict[str, float | str] | None
    created_at: datetime
    created_by: str | None
    submission_id: int | None = None
    excluded: bool = False
    excluded_reason: str | None = None
    fit_state: Annotated[
        str | None,
        Field(
            description="how the study's latest fit used the run: near_optimal, used, diverged, outlier, failed, "
            "or excluded (null: no fit yet)"
        ),
    ] = None


class RunPage(BaseModel):
    items: list[RunOut]
    next_cursor: str | None
    fit_id: Annotated[int | None, Field(description="the fit whose view of the runs fit_state gives")] = None
    total: Annotated[
        int | None, Field(description="how many runs match the filters (on the first page; null after it)")
    ] = None


class CurveOut(BaseModel):
    name: Annotated[str, Field(description="'loss' (the run's loss_curve) or the name of another series")]
    x_unit: Annotated[str, Field(description="'tokens' or 'steps'")]
    n_points: Annotated[int, Field(description="points submitted; more than len(points) when downsampled")]
    downsampled: bool
    points: list[list[float]]


class SubmissionOut(BaseModel):
    id: int
    source: str | None
    created_at: datetime
    created_by: str | None


class SubmitResult(BaseModel):
    inserted: int
    duplicates: int
    ids: list[int]
    submission_id: int
    replaced: Annotated[
        int, Field(description="stored `failed` runs replaced by a completed/diverged retry under their run_key")
    ] = 0


class DryRunResult(BaseModel):
    """`?dry_run=true`: the submission passed every check a real one meets; nothing was stored."""

    dry_run: bool = True
    valid: int


class ExcludeRequest(BaseModel):
    """Why a run is excluded (shown with the run, kept in the audit log)."""

    model_config = ConfigDict(extra="forbid")

    reason: str


class IncludeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = None


class DeletedResult(BaseModel):
    deleted: int


class AuditOut(BaseModel):
    id: int
    created_at: datetime
    actor: str | None
    action: str
    study: str
    run_id: int | None
    submission_id: int | None
    count: int | None
    reason: str | None


class AuditList(BaseModel):
    items: list[AuditOut]


class RunDetail(RunOut):
    """One run with everything its page shows."""

    curves: list[CurveOut]
    fit_id: int | None
    state_reason: Annotated[str | None, Field(description="why the run has its fit_state, in one sentence")]
    submission: SubmissionOut | None
    audit: list[AuditOut]


class ErrorDetail(BaseModel):
    field: str
    message: str
    index: int | None = None
    loc: list[str | int] | None = None


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] = []


class ErrorResponse(BaseModel):
    error: ErrorBody


ERRORS = {
    401: {"model": ErrorResponse, "description": "missing or invalid token"},
    403: {"model": ErrorResponse, "description": "token lacks the needed scope"},
    404: {"model": ErrorResponse, "description": "unknown study"},
    422: {"model": ErrorResponse, "description": "invalid input; each detail names the field"},
}
FIT_ERRORS = {
    **ERRORS,
    409: {"model": ErrorResponse, "description": "insufficient_data: what runs are missing"},
}

"""Pydantic models: the HTTP contract's request and response bodies (../shared/contract/API.md).

Validation here is the only gate between clients and the database, so every bound the
database would otherwise enforce with an error (integer ranges, NUL bytes, non-finite
floats) is checked here and reported as a 422 naming the field.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    PlainValidator,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)
from pydantic_core import PydanticCustomError

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
MAX_BATCH_RUNS = 10_000
MAX_LOSS_CURVE_POINTS = 10_000
MAX_EXTRA_KEYS = 256
STUDY_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


def _no_nul(value: str) -> str:
    """Refuse what no database column can hold: NUL, and lone surrogates (JSON "\\ud800"),
    which are not encodable as UTF-8 and would fail on insert or, worse, on every read."""
    if "\x00" in value:
        raise PydanticCustomError("nul_character", "must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("invalid_unicode", "must not contain unpaired surrogates") from None
    return value


SafeStr = Annotated[str, AfterValidator(_no_nul)]


def _extra_value(value: Any) -> float | str:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PydanticCustomError("extra_value", "must be a number or a string")
    if isinstance(value, str):
        if len(value) > 1024:
            raise PydanticCustomError("string_too_long", "must be at most 1024 characters")
        return _no_nul(value)
    try:
        number = float(value)  # an int beyond ~1e308 overflows
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise PydanticCustomError("finite_number", "must be a finite number")
    return number


ExtraValue = Annotated[
    float | str,
    PlainValidator(_extra_value),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string", "maxLength": 1024}]}),
]
PositiveInt32 = Annotated[int, Field(gt=0, le=INT32_MAX)]
Parameterization = Literal["sp", "mup", "depth-mup", "completep"]
RunStatus = Literal["completed", "diverged", "failed"]


class StudyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=STUDY_NAME_PATTERN, description="lower-case id")]
    description: Annotated[SafeStr, Field(max_length=10_000)] | None = None
    parameterization: Parameterization = "sp"
    optimizer: Annotated[SafeStr, Field(min_length=1, max_length=64)] = "adamw"
    base_width: PositiveInt32 | None = None
    base_depth: PositiveInt32 | None = None
    seq_len: PositiveInt32 | None = None


class StudyOut(BaseModel):
    id: int
    name: str
    description: str | None
    parameterization: str
    optimizer: str
    base_width: int | None
    base_depth: int | None
    seq_len: int | None
    data_version: str
    created_at: datetime
    run_count: int | None = None
    latest_fit_id: int | None = None


class StudyList(BaseModel):
    items: list[StudyOut]


class RunIn(BaseModel):
    """One proxy run as a client submits it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    run_key: Annotated[SafeStr, Field(min_length=1, max_length=128)] | None = None
    n_params: Annotated[float, Field(gt=0)]
    tokens: Annotated[float, Field(gt=0)]
    width: PositiveInt32 | None = None
    depth: PositiveInt32 | None = None
    seq_len: PositiveInt32 | None = None
    learning_rate: Annotated[float, Field(gt=0)]
    batch_size: Annotated[int, Field(gt=0, le=INT64_MAX)]
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    status: RunStatus = "completed"
    final_loss: float | None = None
    loss_curve: (
        Annotated[
            list[tuple[Annotated[float, Field(ge=0)], float]],
            Field(max_length=MAX_LOSS_CURVE_POINTS),
        ]
        | None
    ) = None
    seed: Annotated[int, Field(ge=-INT64_MAX - 1, le=INT64_MAX)] | None = None
    extra: (
        Annotated[
            dict[
                Annotated[SafeStr, Field(min_length=1, max_length=128)],
                ExtraValue,
            ],
            Field(max_length=MAX_EXTRA_KEYS),
        ]
        | None
    ) = None

    @field_validator("weight_decay", "status", mode="before")
    @classmethod
    def _null_means_default(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return cls.model_fields[info.field_name].default
        return value

    @model_validator(mode="after")
    def _completed_runs_have_a_loss(self) -> RunIn:
        if self.status == "completed" and self.final_loss is None:
            raise PydanticCustomError(
                "final_loss_required", "final_loss is required when status is 'completed'"
            )
        return self


class RunBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    runs: Annotated[list[RunIn], Field(min_length=1, max_length=MAX_BATCH_RUNS)]


def _submission_kind(value: Any) -> str:
    return "batch" if isinstance(value, dict) and "runs" in value else "run"


# One run, or {"runs": [...]}: the discriminator picks the branch so that errors speak
# only of the shape the client meant.
RunSubmission = Annotated[
    Annotated[RunBatch, Tag("batch")] | Annotated[RunIn, Tag("run")],
    Discriminator(_submission_kind),
]

# Error types raised by model validators, and the field each one is about.
CROSS_FIELD_ERRORS = {"final_loss_required": "final_loss"}


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
    weight_decay: float
    status: str
    final_loss: float | None
    loss_curve: list[list[float]] | None
    seed: int | None
    extra: dict[str, float | str] | None
    created_at: datetime
    created_by: str | None


class RunPage(BaseModel):
    items: list[RunOut]
    next_cursor: str | None


class SubmitResult(BaseModel):
    inserted: int
    duplicates: int
    ids: list[int]


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

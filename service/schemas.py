"""What clients submit: studies and runs, validated with pydantic (HTTP bodies and CSV rows).

Validation here is the gate between clients and the database, so every bound the
database would otherwise enforce with an error (integer ranges, NUL bytes, non-finite
floats) and the contract's limits (`service.limits`) are checked here, reported as 422s
naming the field. The one rule that depends on the study (`final_loss > 0` unless the
study has `loss_can_be_negative`) is checked by `service.runs.validate_runs`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from service.limits import (
    INT32_MAX,
    INT64_MAX,
    MAX_BATCH_RUNS,
    MAX_CURVE_SERIES,
    MAX_EXTRA_KEYS,
    MAX_LOSS_CURVE_POINTS,
    RUN_LIMITS,
    STUDY_NAME_PATTERN,
)

# Validation context of an import (`service.runs.import_runs`): there a null weight decay is
# "the source never said" and is stored as unknown; over HTTP a null means the default 0.
IMPORT_CONTEXT = {"weight_decay_unknown": True}


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

# Control characters (C0 but tab, DEL, C1) and Unicode line/paragraph separators: in a CSV
# cell a reader may take any of them for a line break, a bare CR most of all (a new row
# whose first cell is not neutralised), and they have no place in a key or a hyperparameter.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def _csv_text(value: str) -> str:
    """Text that becomes a runs.csv cell or column name: `_no_nul`, and no control characters."""
    value = _no_nul(value)
    found = _CONTROL.search(value)
    if found is not None:
        code = f"U+{ord(found.group()):04X}"
        raise PydanticCustomError(
            "control_character", f"must not contain control characters or line breaks (found {code}); tab is allowed"
        )
    return value


CsvText = Annotated[str, AfterValidator(_csv_text)]


def _extra_value(value: Any) -> float | str:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PydanticCustomError("extra_value", "must be a number or a string")
    if isinstance(value, str):
        if len(value) > 1024:
            raise PydanticCustomError("string_too_long", "must be at most 1024 characters")
        return _csv_text(value)
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
Priors = Literal["published", "none"]
RunStatus = Literal["completed", "diverged", "failed"]


def _limit(name: str, integer: bool = False) -> Any:
    """The pydantic bound of a run field: the contract's limit for `name`."""
    bound = RUN_LIMITS[name]
    high = int(bound.high) if integer else bound.high
    if bound.low_inclusive:
        return Field(ge=bound.low, le=high)
    return Field(gt=bound.low, le=high)


NParams = Annotated[float, _limit("n_params")]
Tokens = Annotated[float, _limit("tokens")]
Width = Annotated[int, _limit("width", integer=True)]
Depth = Annotated[int, _limit("depth", integer=True)]
SeqLen = Annotated[int, _limit("seq_len", integer=True)]
LearningRate = Annotated[float, _limit("learning_rate")]
BatchSize = Annotated[int, _limit("batch_size", integer=True)]
WeightDecay = Annotated[float, _limit("weight_decay")]
CurvePoints = Annotated[
    list[tuple[Annotated[float, Field(ge=0)], float]],
    Field(max_length=MAX_LOSS_CURVE_POINTS),
]


def _series_name(value: str) -> str:
    if value == "loss":
        raise PydanticCustomError("reserved_series", "'loss' is the loss_curve field's series: name the others")
    return value


SeriesName = Annotated[CsvText, Field(min_length=1, max_length=64), AfterValidator(_series_name)]


class StudyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=STUDY_NAME_PATTERN, description="lower-case id")]
    description: Annotated[SafeStr, Field(max_length=10_000)] | None = None
    parameterization: Parameterization = "sp"
    optimizer: Annotated[SafeStr, Field(min_length=1, max_length=64)] = "adamw"
    base_width: PositiveInt32 | None = None
    base_depth: PositiveInt32 | None = None
    seq_len: SeqLen | None = None
    priors: Annotated[
        Priors, Field(description="laws start from the published results ('published') or the data alone ('none')")
    ] = "published"
    loss_can_be_negative: Annotated[
        bool, Field(description="accept final_loss ≤ 0 (losses that are not cross-entropy-like)")
    ] = False


class RunIn(BaseModel):
    """One proxy run as a client submits it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    run_key: Annotated[CsvText, Field(min_length=1, max_length=128)] | None = None
    n_params: NParams
    tokens: Tokens
    width: Width | None = None
    depth: Depth | None = None
    seq_len: SeqLen | None = None
    learning_rate: LearningRate
    batch_size: BatchSize
    weight_decay: WeightDecay | None = 0.0
    status: RunStatus = "completed"
    final_loss: float | None = None
    loss_curve: CurvePoints | None = None
    curves: Annotated[
        dict[SeriesName, CurvePoints] | None,
        Field(
            max_length=MAX_CURVE_SERIES,
            description="further curves besides loss_curve, e.g. eval metrics: {name: [[x, value], ...]}, x in "
            "tokens (in steps when extra.loss_curve_x is 'steps')",
        ),
    ] = None
    seed: Annotated[int, Field(ge=-INT64_MAX - 1, le=INT64_MAX)] | None = None
    extra: (
        Annotated[
            dict[
                Annotated[CsvText, Field(min_length=1, max_length=128)],
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
            assert info.field_name is not None
            if info.field_name == "weight_decay" and (info.context or {}).get("weight_decay_unknown"):
                return None  # an import whose source has no weight decay: unknown, not 0
            return cls.model_fields[info.field_name].default
        return value

    @model_validator(mode="after")
    def _completed_runs_have_a_loss(self) -> RunIn:
        if self.status == "completed" and self.final_loss is None:
            raise PydanticCustomError("final_loss_required", "final_loss is required when status is 'completed'")
        return self


class RunBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    runs: Annotated[list[RunIn], Field(min_length=1, max_length=MAX_BATCH_RUNS)]


def _submission_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    return "batch" if isinstance(value, dict) and "runs" in value else "run"


def _refuse_array(value: Any) -> Any:
    raise PydanticCustomError(
        "bare_array",
        'a JSON array is not a submission: send one run object, or {{"runs": [...]}} for a batch of up to {n} runs',
        {"n": f"{MAX_BATCH_RUNS:,}"},
    )


# One run, or {"runs": [...]}: the discriminator picks the branch so that errors speak
# only of the shape the client meant (and a bare array is told the batch's shape).
RunSubmission = Annotated[
    Annotated[RunBatch, Tag("batch")]
    | Annotated[RunIn, Tag("run")]
    | Annotated[list[Any], PlainValidator(_refuse_array), WithJsonSchema({"not": {}}), Tag("array")],
    Discriminator(_submission_kind),
]


def _bound_message(field: str, value: Any) -> str | None:
    try:
        return RUN_LIMITS[field].check(value)
    except (TypeError, ValueError):
        return None


# pydantic's bound errors: reworded as `service.limits.Bound.check` words them.
_BOUND_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})

# Error types raised by model validators, and the field each one is about.
CROSS_FIELD_ERRORS = {"final_loss_required": "final_loss"}


def validation_details(errors: Sequence[Any], *, drop_prefix: int = 0) -> list[dict[str, Any]]:
    """Pydantic errors → details naming the field (dotted) and, for batch items, the index."""
    details = []
    for error in errors:
        loc = [part for part in error["loc"][drop_prefix:] if part not in ("batch", "run")]
        index = None
        if len(loc) >= 2 and loc[0] == "runs" and isinstance(loc[1], int):
            index, field_parts = loc[1], loc[2:]
        else:
            field_parts = loc
        field = ".".join(str(part) for part in field_parts if part != "array") or "body"
        if error["type"] in CROSS_FIELD_ERRORS:
            field = CROSS_FIELD_ERRORS[error["type"]]
        message = error["msg"]
        if error["type"] in _BOUND_ERRORS and field in RUN_LIMITS:
            # The contract's limits read the same wherever they are met (a run, a target, an import).
            message = _bound_message(field, error.get("input")) or message
        if error["type"] == "missing":
            message = "field required"
        details.append(
            {
                "field": field,
                "message": message,
                "index": index,
                "loc": [str(p) if not isinstance(p, int) else p for p in loc],
            }
        )
    return details


def summarize(details: Sequence[dict[str, Any]]) -> str:
    """One sentence for a list of details: the first problem and which runs have any."""
    indexes = sorted({d["index"] for d in details if d["index"] is not None})
    first = details[0]
    where = f"run {first['index']}: " if first["index"] is not None else ""
    text = f"invalid input: {where}{first['field']}: {first['message']}"
    if indexes:
        text += f" ({len(indexes)} invalid run(s), indexes {', '.join(map(str, indexes[:20]))}"
        text += ", …)" if len(indexes) > 20 else ")"
    return text

"""Runs as CSV: the export format of `runs.csv` and what `hpscale import` reads back.

One column per run field, `loss_curve` and `curves` as JSON text, `extra.<key>` for each
extra key, and the run's `excluded`, `excluded_reason` and `submission_id`; lines end in CRLF
(RFC 4180), so a cell holding a CR or LF is always quoted. Text cells are escaped
(`neutralise_formula`) so that no spreadsheet runs them and the import reads back exactly
what was exported. An unknown weight decay is an empty cell.
On import, `--map csv_column=field` renames columns; a column that is neither a run
field nor mapped goes into `extra` (so nothing in the file is silently dropped), and
bookkeeping columns of our own export (`id`, `created_at`, `created_by`) are ignored;
`excluded`, `excluded_reason` and `submission_id` are carried over (`service.runs.import_runs`).
A file with no weight-decay column, or an empty cell in it, imports as an unknown weight decay.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from service.errors import InvalidArgument
from store.queries import RUN_FIELDS

# What an import carries besides the run's fields (see service.runs.CARRIED).
CARRIED_COLUMNS: tuple[str, ...] = ("excluded", "excluded_reason", "submission_id")
EXPORT_COLUMNS: tuple[str, ...] = (
    "id",
    *(field for field in RUN_FIELDS if field != "extra"),
    "created_at",
    "created_by",
    *CARRIED_COLUMNS,
)
IGNORED_ON_IMPORT = frozenset({"id", "created_at", "created_by"})
_INT_FIELDS = frozenset({"width", "depth", "seq_len", "batch_size", "seed", "submission_id"})
_JSON_FIELDS = frozenset({"loss_curve", "curves"})
_TEXT_FIELDS = frozenset({"run_key", "status", "excluded", "excluded_reason"})


# A spreadsheet runs a cell starting with one of these as a formula (OWASP "CSV injection").
FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")
_QUOTE = "'"
# What int() or float() might read as a number ("007", " 1", "nan", "-inf", "١٢٣"); anything
# else is text without trying.
_NUMBER_LEAD = re.compile(r"[\s+\-.\d]|(?i:nan|inf)")


def _reads_as_number(text: str) -> bool:
    return _NUMBER_LEAD.match(text) is not None and not isinstance(number_or_text(text), str)


def neutralise_formula(text: str) -> str:
    """`text` as a CSV cell that a spreadsheet shows as text, never runs, and that
    `hpscale import` reads back exactly (`restore_formula`).

    A single quote goes in front of a text that starts with = + - @ TAB or CR (OWASP's
    advice), and of any other text the import would not read back as itself: one that
    starts with a quote, is empty, has leading or trailing whitespace (cells are stripped)
    or reads as a number ('007', '1e5', 'nan'). Numbers never pass here.
    """
    if (
        not text
        or text.startswith((*FORMULA_LEADS, _QUOTE))
        or text[0].isspace()
        or text[-1].isspace()
        or _reads_as_number(text)
    ):
        return _QUOTE + text
    return text


def restore_formula(cell: str) -> tuple[str, bool]:
    """The text `neutralise_formula` was given, and whether the cell was escaped (then it is
    text, exactly as written after the quote: never stripped, never read as a number)."""
    if cell.startswith(_QUOTE):
        return cell[1:], True
    return cell, False


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back to the same float
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    if hasattr(value, "isoformat"):
        return str(value.isoformat()).replace("+00:00", "Z")
    if isinstance(value, str):
        return neutralise_formula(value)  # run_key, created_by, text extra values
    return str(value)


# `_format` by exact type for the common cells (bool, a subclass of int, is not among them).
_FAST_FORMAT: dict[type, Callable[[Any], str]] = {
    float: float.__repr__,
    int: int.__str__,
    str: neutralise_formula,
    type(None): lambda _: "",
    bool: lambda value: "true" if value else "false",
}


def _format_cell(value: Any) -> str:
    fast = _FAST_FORMAT.get(type(value))
    return fast(value) if fast is not None else _format(value)


def export_header(extra_keys: Iterable[str]) -> list[str]:
    return [*EXPORT_COLUMNS, *(f"extra.{key}" for key in sorted(extra_keys))]


# Rows per streamed block: one block per thread hop of a StreamingResponse (a hop per line
# made runs.csv 5x slower than the CLI export) while memory stays a few hundred KB.
CSV_BLOCK_ROWS = 2000


def csv_lines(
    runs: Iterable[Mapping[str, Any]], extra_keys: Iterable[str], *, block_rows: int = CSV_BLOCK_ROWS
) -> Iterator[str]:
    """The CSV text of `runs` (header first) in blocks of whole lines, `block_rows` rows each."""
    header = export_header(extra_keys)
    keys = [column[len("extra.") :] for column in header[len(EXPORT_COLUMNS) :]]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(header)
    pending = 0
    for run in runs:
        extra = run.get("extra") or {}
        writer.writerow([_format(run.get(c)) for c in EXPORT_COLUMNS] + [_format(extra.get(k)) for k in keys])
        pending += 1
        if pending >= block_rows:
            yield flush()
            pending = 0
    yield flush()


def csv_blocks(
    pages: Iterable[Sequence[tuple[Any, ...]]], columns: Sequence[str], extra_keys: Iterable[str]
) -> Iterator[str]:
    """`csv_lines` of runs given as pages of row tuples (`columns` names their positions):
    one CSV block per page, without a dict per run (the export's hot loop)."""
    header = export_header(extra_keys)
    keys = [column[len("extra.") :] for column in header[len(EXPORT_COLUMNS) :]]
    positions = [columns.index(c) for c in EXPORT_COLUMNS]
    extra_at = columns.index("extra")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    fmt = _format_cell
    for page in pages:
        if keys:
            writer.writerows(
                [fmt(row[i]) for i in positions] + [fmt((row[extra_at] or {}).get(k)) for k in keys] for row in page
            )
        else:
            writer.writerows([fmt(row[i]) for i in positions] for row in page)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    tail = buffer.getvalue()
    if tail:
        yield tail


def number_or_text(text: str) -> int | float | str:
    """`text` as an int, else as a float, else as it is (a CSV cell, an MLflow param)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _field_value(field: str, text: str) -> Any:
    if field in _TEXT_FIELDS:
        return text
    if field in _JSON_FIELDS:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text  # validation reports it as the wrong type, naming the field
    value = number_or_text(text)
    if field in _INT_FIELDS and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def parse_mapping(pairs: Iterable[str]) -> dict[str, str]:
    """`["csv col=field", ...]` → {csv column: field}; the last `=` splits (fields have none)."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        column, sep, field = pair.rpartition("=")
        if not sep or not column or not field:
            raise InvalidArgument(f"--map takes csv_column=field, got {pair!r}")
        if column in mapping:
            raise InvalidArgument(f"--map maps column {column!r} twice (to {mapping[column]} and {field.strip()})")
        mapping[column] = field.strip()
    return mapping


REQUIRED_FIELDS = ("n_params", "tokens", "learning_rate", "batch_size")


def check_targets(targets: Mapping[str, str], columns: Iterable[str], source: str = "CSV column") -> None:
    """Refuse a mapping that sends two columns to one field (`--map h=width --map numh=width`
    would silently keep one), or that leaves a required field with no column at all (one
    message with a --map hint, instead of one "field required" per row)."""
    by_field: dict[str, list[str]] = {}
    for column, field in targets.items():
        by_field.setdefault(field, []).append(column)
    clashes = {field: cols for field, cols in by_field.items() if len(cols) > 1}
    if clashes:
        described = "; ".join(f"{field} ← {', '.join(map(repr, cols))}" for field, cols in clashes.items())
        raise InvalidArgument(f"two {source}s map to the same field: {described}; map only one of them with --map")
    missing = [field for field in REQUIRED_FIELDS if field not in by_field]
    if missing:
        shown = ", ".join(list(columns)[:30])
        example = " ".join(f"--map {source.split()[0].upper()}_NAME={field}" for field in missing[:2])
        raise InvalidArgument(
            f"no {source} provides {', '.join(missing)}: name the ones that do with --map (e.g. {example}); "
            f"the {source}s are: {shown}"
        )


def read_runs(lines: Iterable[str], mapping: Mapping[str, str] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, run dict) for each CSV row, ready for the API's run validation."""
    mapping = dict(mapping or {})
    reader = csv.DictReader(lines)
    if reader.fieldnames is None:
        return
    unknown = [f for f in mapping.values() if f not in RUN_FIELDS and not f.startswith("extra.")]
    if unknown:
        raise InvalidArgument(f"--map names unknown run field(s): {', '.join(unknown)}")
    missing = [c for c in mapping if c not in reader.fieldnames]
    if missing:
        raise InvalidArgument(f"--map names column(s) not in the CSV header: {', '.join(missing)}")
    targets: dict[str, str] = {}
    for column in reader.fieldnames:
        field = mapping.get(column, column)
        if field in IGNORED_ON_IMPORT and column not in mapping:
            continue
        known = field in RUN_FIELDS or field in CARRIED_COLUMNS or field.startswith("extra.")
        targets[column] = field if known else f"extra.{field}"
    check_targets(targets, reader.fieldnames)
    # No weight-decay column (or an empty cell): the source never said, so it is unknown, not 0.
    unknown_weight_decay = {"weight_decay": None}
    for row in reader:
        run: dict[str, Any] = dict(unknown_weight_decay)
        extra: dict[str, Any] = {}
        for column, field in targets.items():
            cell = row.get(column) or ""
            text, escaped = restore_formula(cell)
            if escaped:  # a text cell of our own export: stays text, exactly
                run_or_extra = extra if field.startswith("extra.") else run
                run_or_extra[field.removeprefix("extra.")] = text
                continue
            text = text.strip()  # hand-made files: "1, 2" (our export never pads a cell)
            if text == "":
                continue
            if field.startswith("extra."):
                extra[field[len("extra.") :]] = number_or_text(text)
            else:
                run[field] = _field_value(field, text)
        if extra:
            run["extra"] = {**extra, **(run.get("extra") or {})}
        yield reader.line_num, run

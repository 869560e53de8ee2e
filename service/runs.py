"""Runs: validate (one set of limits), fill defaults, store idempotently, page, export, import.

Where a run is validated: its fields by `service.schemas.RunIn` (types and the contract's
limits, `service.limits`), then the rules that depend on its study by `check_study_rules`
(a final loss must be > 0 unless the study has `loss_can_be_negative`). Both the HTTP
submission and `hpscale import` go through here, so they accept exactly the same runs.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from service import metrics
from service.csv_io import csv_blocks
from service.errors import InvalidQuery, InvalidRuns, StudyNotFound, field_detail
from service.limits import DEFAULT_IMPORT_BATCH, FINAL_LOSS, MAX_STUDY_EXTRA_KEYS
from service.schemas import RunIn, StudyIn, summarize, validation_details
from service.studies import find_study, get_study
from store import queries
from store.db import Connection, Engine, read_connection, run_in_transaction
from store.errors import MissingReference
from store.models import Study
from store.queries import InsertResult, RunFilters

__all__ = [
    "DEFAULT_IMPORT_BATCH",
    "ImportResult",
    "InsertResult",
    "RunFilters",
    "RunPage",
    "check_study_rules",
    "decode_cursor",
    "encode_cursor",
    "export_csv",
    "import_runs",
    "list_runs",
    "submit_runs",
    "with_defaults",
]

_RUN = TypeAdapter(RunIn)


# --- validation and defaults -------------------------------------------------------------


def study_rule_details(runs: Sequence[RunIn], study: Study | None, *, indexed: bool) -> list[dict[str, Any]]:
    """Details for every run that breaks a rule of its study (None: a study about to be made
    with the defaults). `indexed`: the runs are a batch, so each detail names the index."""
    if study is not None and study.loss_can_be_negative:
        return []
    details = []
    for index, run in enumerate(runs):
        if run.final_loss is not None and (reason := FINAL_LOSS.check(run.final_loss)):
            message = f'{reason} (create the study with "loss_can_be_negative": true for other losses)'
            details.append(field_detail("final_loss", message, index if indexed else None))
    return details


def check_study_rules(runs: Sequence[RunIn], study: Study, *, indexed: bool) -> None:
    details = study_rule_details(runs, study, indexed=indexed)
    if details:
        raise InvalidRuns(summarize(details), details)


def check_extra_keys(conn: Connection, study: Study, runs: Sequence[RunIn]) -> None:
    """Refuse runs that would give the study more than MAX_STUDY_EXTRA_KEYS distinct `extra` keys.

    Keys the study already has are found by an indexed-by-study EXISTS that stops at the first
    run having them; only a submission bringing new keys counts the study's keys in full."""
    check_extra_key_set(conn, study, {key for run in runs if run.extra for key in run.extra})


def check_extra_key_set(conn: Connection, study: Study, submitted: set[str]) -> None:
    """`check_extra_keys` of the set of extra keys a submission uses."""
    if not submitted:
        return
    if len(submitted) <= 16:  # the usual few keys: one early-stopping EXISTS each
        new = [key for key in sorted(submitted) if not queries.study_has_extra_key(conn, study.id, key)]
        if not new:
            return
        existing = queries.study_extra_keys(conn, study.id)
    else:  # many keys: one scan beats many
        existing = queries.study_extra_keys(conn, study.id)
        new = sorted(submitted - existing)
    total = len(existing | set(new))
    if total > MAX_STUDY_EXTRA_KEYS:
        message = (
            f"a study may use at most {MAX_STUDY_EXTRA_KEYS} distinct extra keys (one runs.csv column each); "
            f"this submission would make it {total} (new keys: {', '.join(new[:5])}{', …' if len(new) > 5 else ''})"
        )
        raise InvalidRuns(message, [field_detail("extra", message)])


def with_defaults(run: RunIn, study: Study) -> dict[str, Any]:
    """The run as stored: a run without `seq_len` has its study's."""
    row = run.model_dump()
    if row["seq_len"] is None:
        row["seq_len"] = study.seq_len
    return row


def submit_runs(
    engine: Engine, study_name: str, runs: Sequence[RunIn], *, indexed: bool, created_by: str | None
) -> InsertResult:
    """Store a validated submission atomically; a run_key already in the study is a duplicate.

    The submission gets an id (in the answer, recorded on each run it stored) by which
    it can be undone as a whole."""

    def store(conn: Connection) -> InsertResult:
        study = get_study(conn, study_name)
        check_study_rules(runs, study, indexed=indexed)
        check_extra_keys(conn, study, runs)
        submission_id = queries.create_submission(conn, study.id, "http", created_by)
        rows = [with_defaults(run, study) for run in runs]
        return queries.insert_runs(conn, study.id, rows, created_by, submission_id)

    try:
        result = run_in_transaction(engine, store)
    except MissingReference:  # the study was deleted between its lookup and the insert
        raise StudyNotFound(study_name) from None
    metrics.RUNS_INGESTED.labels("http").inc(result.inserted)
    return result


# --- listing and export ------------------------------------------------------------------


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
        raise InvalidQuery(
            "invalid cursor: pass back the next_cursor of a previous page unchanged",
            [field_detail("cursor", "not a cursor returned by this endpoint")],
        ) from None


@dataclass(frozen=True)
class RunPage:
    items: list[dict[str, Any]]
    next_cursor: str | None


def list_runs(engine: Engine, study_name: str, *, cursor: str | None, limit: int, filters: RunFilters) -> RunPage:
    after_id = decode_cursor(cursor) if cursor else 0
    with read_connection(engine) as conn:
        study = get_study(conn, study_name)
        page, last_id = queries.list_runs(conn, study.id, after_id=after_id, limit=limit, filters=filters)
    return RunPage(page, None if last_id is None else encode_cursor(last_id))


def export_csv(engine: Engine, study_name: str) -> tuple[Study, Iterator[str]]:
    """The study and its runs as CSV text, line by line (the same for runs.csv and the CLI)."""
    with read_connection(engine) as conn:
        study = get_study(conn, study_name)
        extra_keys = queries.study_extra_keys(conn, study.id)  # counted in the database
    return study, csv_blocks(queries.iter_run_pages(engine, study.id), queries.EXPORT_ROW_COLUMNS, extra_keys)


# --- import (the CLI) --------------------------------------------------------------------


@dataclass(frozen=True)
class ImportResult:
    study: Study
    inserted: int
    duplicates: int
    submission_id: int | None = None


def import_runs(
    engine: Engine,
    study_name: str,
    rows: Sequence[tuple[int, Mapping[str, Any]]] | Callable[[], Iterable[tuple[int, Mapping[str, Any]]]],
    *,
    create: StudyIn | None = None,
    batch_size: int = DEFAULT_IMPORT_BATCH,
    created_by: str | None = "cli",
    progress: Callable[[int, int], None] | None = None,
    source: str = "import",
) -> ImportResult:
    """Validate every (line, row) first, then store in transactions of `batch_size` runs.

    A file with a bad row stores nothing: InvalidRuns lists every problem, each detail's
    `index` being the row's line number. `create`: make the study with these fields if it
    does not exist (otherwise an unknown study is StudyNotFound). Every run stored records
    one submission id (in the result): `hpscale import --undo ID` deletes them again.

    `rows` may also be a function giving a fresh iterator on each call (a file read twice):
    then a streaming validation pass keeps no run, and a streaming write pass validates
    again and holds one batch at a time, so memory stays bounded at any file size. Should
    the second pass meet a row the first accepted (the file changed meanwhile), the runs
    it stored are deleted again and nothing is imported.
    """
    with read_connection(engine) as conn:
        existing = queries.get_study(conn, study_name)
    if existing is None and create is None:
        find_study(engine, study_name)  # raises StudyNotFound
    streamed = callable(rows)
    kept: list[RunIn] = []
    details: list[dict[str, Any]] = []
    extra_keys: set[str] = set()
    count = 0
    for line, row in rows() if callable(rows) else rows:
        try:
            run = _RUN.validate_python(row)
        except ValidationError as error:
            details.extend({**d, "index": line} for d in validation_details(error.errors()))
            continue
        details.extend({**d, "index": line} for d in study_rule_details([run], existing, indexed=False))
        extra_keys.update(run.extra or ())
        count += 1
        if not streamed:
            kept.append(run)
    if details:
        raise InvalidRuns(f"{len(details)} problem(s) in the file; nothing was imported", details)
    if existing is None:
        assert create is not None
        run_in_transaction(engine, lambda conn: queries.create_study(conn, create.model_dump(), created_by))
    with read_connection(engine) as conn:
        study = get_study(conn, study_name)
        check_extra_key_set(conn, study, extra_keys)
    submission_id = run_in_transaction(
        engine, lambda conn: queries.create_submission(conn, study.id, source, created_by)
    )
    inserted = duplicates = done = 0

    def store(batch: list[dict[str, Any]]) -> None:
        nonlocal inserted, duplicates, done
        result = run_in_transaction(
            engine, lambda conn: queries.insert_runs(conn, study.id, batch, created_by, submission_id)
        )
        inserted += result.inserted
        metrics.RUNS_INGESTED.labels(source).inc(result.inserted)
        duplicates += result.duplicates
        done += len(batch)
        if progress is not None:
            progress(done, count)

    batch: list[dict[str, Any]] = []
    try:
        for run in _validated_again(rows) if callable(rows) else kept:
            batch.append(with_defaults(run, study))
            if len(batch) >= batch_size:
                store(batch)
                batch = []
        if batch:
            store(batch)
    except InvalidRuns:
        run_in_transaction(engine, lambda conn: queries.delete_submission_runs(conn, study.id, submission_id))
        raise
    return ImportResult(study, inserted, duplicates, submission_id)


def _validated_again(rows: Callable[[], Iterable[tuple[int, Mapping[str, Any]]]]) -> Iterator[RunIn]:
    """The write pass of a streamed import: the rows validated again, one at a time."""
    for line, row in rows():
        try:
            yield _RUN.validate_python(row)
        except ValidationError as error:
            details = [{**d, "index": line} for d in validation_details(error.errors())]
            raise InvalidRuns("the file changed during the import; nothing was imported", details) from None

"""Runs: validate (one set of limits), fill defaults, store idempotently, page, export, import.

Where a run is validated: its fields by `service.schemas.RunIn` (types and the contract's
limits, `service.limits`), then the rules that depend on its study by `check_study_rules`
(a final loss must be > 0 unless the study has `loss_can_be_negative`). Both the HTTP
submission and `hpscale import` go through here, so they accept exactly the same runs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from service import run_curves, run_states
from service.csv_io import csv_blocks
from service.errors import InsufficientData, InvalidQuery, InvalidRuns, RunNotFound, StudyNotFound, field_detail
from service.limits import DEFAULT_IMPORT_BATCH, FINAL_LOSS, MAX_STUDY_EXTRA_KEYS
from service.schemas import IMPORT_CONTEXT, RunIn, StudyIn, summarize, validation_details
from service.studies import find_study, get_study
from store import audit, queries, runviews
from store import curves as stored_curves
from store.db import Connection, Engine, read_connection, run_in_transaction
from store.errors import MissingReference
from store.models import Study
from store.queries import InsertResult, RunFilters
from store.runviews import SORTABLE, Listing, Position

__all__ = [
    "DEFAULT_IMPORT_BATCH",
    "SORTABLE",
    "ImportResult",
    "InsertResult",
    "Listing",
    "RunFilters",
    "RunPage",
    "check_study_rules",
    "check_submission",
    "content_run_key",
    "decode_cursor",
    "encode_cursor",
    "export_csv",
    "import_runs",
    "list_runs",
    "run_detail",
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
    """`check_extra_keys` of the set of extra keys a submission uses, in its write transaction.

    A submission that brings keys new to the study first locks the study's row (held to the
    commit), then counts: two writers bringing new keys at once take turns, so they cannot
    both pass the cap (on SQLite, write transactions take turns anyway)."""
    if not submitted:
        return
    # The usual few keys: one early-stopping EXISTS each, and no lock when none is new.
    if len(submitted) <= 16 and all(queries.study_has_extra_key(conn, study.id, key) for key in submitted):
        return
    queries.lock_study(conn, study.id)
    existing = queries.study_extra_keys(conn, study.id)
    new = sorted(submitted - existing)
    total = len(existing) + len(new)
    if total > MAX_STUDY_EXTRA_KEYS:
        message = (
            f"a study may use at most {MAX_STUDY_EXTRA_KEYS} distinct extra keys (one runs.csv column each); "
            f"this submission would make it {total} (new keys: {', '.join(new[:5])}{', …' if len(new) > 5 else ''})"
        )
        raise InvalidRuns(message, [field_detail("extra", message)])


def with_defaults(run: RunIn, study: Study) -> dict[str, Any]:
    """The run as stored: a run without `seq_len` has its study's; its curves as stored
    (capped and downsampled: `service.run_curves`)."""
    row = run.model_dump()
    if row["seq_len"] is None:
        row["seq_len"] = study.seq_len
    row["curve_rows"] = run_curves.curve_rows(row)
    return row


def content_run_key(run: Mapping[str, Any]) -> str:
    """A run's key from its content: `auto-` and the first 40 hex digits of the SHA-256 of its
    JSON (keys sorted, no spaces). The Python client's rule (`hpscale.client.content_run_key`),
    so an import of a file without run keys, run again, stores nothing twice."""
    canonical = json.dumps(run, sort_keys=True, separators=(",", ":"), default=str)
    return "auto-" + hashlib.sha256(canonical.encode()).hexdigest()[:40]


def check_submission(engine: Engine, study_name: str, runs: Sequence[RunIn], *, indexed: bool) -> int:
    """A dry run of `submit_runs`: every check it makes (the study, its rules, its extra keys),
    nothing stored; how many runs passed. A training hook calls it before the first step."""
    with read_connection(engine) as conn:
        study = get_study(conn, study_name)
        check_study_rules(runs, study, indexed=indexed)
        check_extra_keys(conn, study, runs)
    return len(runs)


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
        result = queries.insert_runs(conn, study.id, rows, created_by, submission_id)
        audit_replaced(conn, study, result, created_by)
        if result.inserted or result.replaced:  # a retry that met only duplicates changed nothing
            audit.insert_audit(
                conn,
                actor=created_by,
                action=audit.SUBMIT,
                study=study.name,
                submission_id=submission_id,
                count=result.inserted,
                reason=f"{len(runs)} run(s) posted: {result.inserted} new, {result.duplicates} already stored"
                + (f", {result.replaced} replaced a failed attempt" if result.replaced else ""),
            )
        return result

    try:
        return run_in_transaction(engine, store)
    except MissingReference:  # the study was deleted between its lookup and the insert
        raise StudyNotFound(study_name) from None


def audit_replaced(conn: Connection, study: Study, result: InsertResult, actor: str | None) -> None:
    """One audit record per stored `failed` run a retry replaced (in the insert's transaction):
    the fits' data changed without a new run, so who and why must stay traceable."""
    for replaced in result.replaced_runs:
        error = f"; its error: {replaced.old_error}" if replaced.old_error else ""
        queries.add_audit(
            conn,
            actor=actor,
            action="superseded",
            study=study.name,
            run_id=replaced.run_id,
            submission_id=result.submission_id,
            reason=f"a retry under run_key {replaced.run_key!r} replaced the failed attempt stored by submission "
            f"{replaced.old_submission_id}{error}"[:1000],
        )


# --- listing and export ------------------------------------------------------------------


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"run:{last_id}".encode()).decode().rstrip("=")


def _bad_cursor(reason: str = "not a cursor returned by this endpoint") -> InvalidQuery:
    return InvalidQuery(
        "invalid cursor: pass back the next_cursor of a previous page unchanged, with the same sort and order",
        [field_detail("cursor", reason)],
    )


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, number = text.partition(":")
        if prefix != "run" or not number.isdigit() or len(number) > 18:
            raise ValueError
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _bad_cursor() from None


def encode_position(position: Position, listing: Listing) -> str:
    """A page's end as a cursor: the plain id cursor in the default order, else the order, the
    last run's id and its sort value."""
    if listing.sort == "id" and not listing.descending:
        return encode_cursor(position.id)
    value = position.value.isoformat() if hasattr(position.value, "isoformat") else position.value
    text = f"sorted:{listing.sort}:{'d' if listing.descending else 'a'}:{position.id}:{json.dumps(value)}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_position(cursor: str, listing: Listing) -> Position:
    if listing.sort == "id" and not listing.descending:
        return Position(None, decode_cursor(cursor))
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, sort, direction, number, value = text.split(":", 4)
        if prefix != "sorted" or not number.isdigit() or len(number) > 18:
            raise ValueError
        decoded = json.loads(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _bad_cursor() from None
    if (sort, direction) != (listing.sort, "d" if listing.descending else "a"):
        raise _bad_cursor(f"this cursor pages sort={sort} order={'desc' if direction == 'd' else 'asc'}")
    if decoded is not None and not isinstance(decoded, (int, float, str)):
        raise _bad_cursor()
    return Position(runviews.parse_position_value(sort, decoded), int(number))


@dataclass(frozen=True)
class RunPage:
    items: list[dict[str, Any]]
    next_cursor: str | None
    # The fit whose view of the runs `fit_state` gives (the study's newest finished fit).
    fit_id: int | None = None
    # How many runs the listing shows in all (on its first page; None on the pages after it).
    total: int | None = None


def _states_for(engine: Engine, study: Study, listing: Listing) -> int | None:
    fit_id = run_states.ensure_states(engine, study)
    if fit_id is None and listing.state not in (None, runviews.EXCLUDED):
        raise InsufficientData(
            f"study '{study.name}' has no fit yet, so no run has a state in one: fit it first "
            f"(POST /v1/studies/{study.name}/fits) or filter by status"
        )
    return fit_id


def list_runs(
    engine: Engine,
    study_name: str,
    *,
    cursor: str | None,
    limit: int,
    filters: RunFilters,
    listing: Listing | None = None,
) -> RunPage:
    """One page of the study's runs: filtered (fields, and the latest fit's state), sorted by any
    column, keyset-paged; each run with its `fit_state`."""
    listing = listing or Listing(filters)
    study = find_study(engine, study_name)
    fit_id = _states_for(engine, study, listing)
    after = decode_position(cursor, listing) if cursor else None
    with read_connection(engine) as conn:
        page, last = runviews.list_page(conn, study.id, listing, after=after, limit=limit)
        total = runviews.count(conn, study.id, listing) if after is None else None
    return RunPage(page, None if last is None else encode_position(last, listing), fit_id, total)


def run_detail(engine: Engine, study_name: str, run_id: int) -> dict[str, Any]:
    """One run as its page shows it: the run, every curve, its state in the latest fit and
    why, the submission that stored it, and its audit trail."""
    study = find_study(engine, study_name)
    fit_id = run_states.ensure_states(engine, study)
    with read_connection(engine) as conn:
        run = runviews.get_run_with_state(conn, study.id, run_id)
        if run is None:
            raise RunNotFound(f"study '{study_name}' has no run {run_id}")
        series = stored_curves.run_curves(conn, run_id)
        submission = (
            audit.get_submission(conn, study.id, run["submission_id"]) if run["submission_id"] is not None else None
        )
        trail = audit.run_trail(conn, study.name, run_id, run["submission_id"])
    from service.fits import fit_by_id  # (service.fits imports this module's neighbours)

    fit = fit_by_id(engine, study_name, fit_id).result if fit_id is not None else None
    return {
        **run,
        "curves": [
            {
                "name": row["series"],
                "x_unit": row["x_unit"],
                "n_points": row["n_points"],
                "downsampled": row["n_points"] > len(row["points"]),
                "points": row["points"],
            }
            for row in series
        ],
        "fit_id": fit_id,
        "state_reason": run_states.state_reason(run, run["fit_state"], fit),
        "submission": submission,
        "audit": trail,
    }


_EXPORT_PAGE = 5000


def export_csv(engine: Engine, study_name: str, listing: Listing | None = None) -> tuple[Study, Iterator[str]]:
    """The study and its runs as CSV text, line by line (the same for runs.csv and the CLI); with
    a `listing`, only the runs it shows, in its order (the dashboard's "download this view")."""
    with read_connection(engine) as conn:
        study = get_study(conn, study_name)
        extra_keys = queries.study_extra_keys(conn, study.id)  # counted in the database
    columns = queries.EXPORT_ROW_COLUMNS
    if listing is None or listing == Listing():
        return study, csv_blocks(queries.iter_run_pages(engine, study.id), columns, extra_keys)
    _states_for(engine, study, listing)
    return study, csv_blocks(_listed_pages(engine, study, listing), columns, extra_keys)


def _listed_pages(engine: Engine, study: Study, listing: Listing) -> Iterator[list[tuple[Any, ...]]]:
    """The listing's runs as export row tuples, a page at a time (each in its own transaction)."""
    after: Position | None = None
    while True:
        with read_connection(engine) as conn:
            page, after = runviews.list_page(conn, study.id, listing, after=after, limit=_EXPORT_PAGE)
            others = stored_curves.other_series(conn, [row["id"] for row in page])
        yield [
            tuple(others.get(row["id"]) if name == "curves" else row.get(name) for name in queries.EXPORT_ROW_COLUMNS)
            for row in page
        ]
        if after is None:
            return


# --- import (the CLI) --------------------------------------------------------------------

# Columns of our own export that an import carries over besides the run's fields: whether the
# run was excluded (and why), and which submission of the exported study stored it.
CARRIED = ("excluded", "excluded_reason", "submission_id")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no", ""})


@dataclass(frozen=True)
class ImportResult:
    study: Study
    inserted: int
    duplicates: int
    submission_id: int | None = None
    created: bool = False  # the import created the study
    # --skip-invalid: the rows left out, as details ({index: line or source id, field, message}).
    skipped: tuple[dict[str, Any], ...] = ()
    # The exported study's submission ids and the ones the runs got here ({old: new}).
    submissions: dict[int, int] = field(default_factory=dict)
    keyed_by_content: int = 0  # rows without a run_key that got one from their content


@dataclass
class _Prepared:
    """A row split into the run to validate and what an import carries beside it."""

    run: dict[str, Any]
    excluded: bool = False
    excluded_reason: str | None = None
    source_submission: int | None = None
    keyed: bool = False


def _prepare(row: Mapping[str, Any]) -> tuple[_Prepared, list[dict[str, Any]]]:
    """The row's run (with a content-derived run_key if it has none) and its carried fields,
    and the details of what is wrong with those fields."""
    run = {k: v for k, v in row.items() if k not in CARRIED}
    out = _Prepared(run)
    details = []
    excluded = row.get("excluded")
    if isinstance(excluded, bool):
        out.excluded = excluded
    elif excluded is not None:
        text = str(excluded).strip().lower()
        if text in _TRUE or text in _FALSE:
            out.excluded = text in _TRUE
        else:
            details.append(field_detail("excluded", "must be true or false"))
    reason = row.get("excluded_reason")
    if reason is not None and str(reason).strip():
        out.excluded_reason = str(reason)[:1000]
        if "\x00" in out.excluded_reason:
            details.append(field_detail("excluded_reason", "must not contain NUL characters"))
    if out.excluded and not out.excluded_reason:
        out.excluded_reason = "excluded in the exported study (no reason given)"
    if not out.excluded:
        out.excluded_reason = None
    submission = row.get("submission_id")
    if submission is not None and submission != "":
        try:
            number = int(submission)
            if number < 1 or number != float(submission):
                raise ValueError
            out.source_submission = number
        except (TypeError, ValueError):
            details.append(field_detail("submission_id", "must be a positive integer (an exported submission id)"))
    if not run.get("run_key"):
        # The Python client's rule: the same row imported again gets the same key.
        run["run_key"] = content_run_key({k: v for k, v in run.items() if k != "run_key"})
        out.keyed = True
    return out, details


def _validate(prepared: _Prepared, line: Any, existing: Study | None) -> tuple[RunIn | None, list[dict[str, Any]]]:
    try:
        run = _RUN.validate_python(prepared.run, context=IMPORT_CONTEXT)
    except ValidationError as error:
        return None, [{**d, "index": line} for d in validation_details(error.errors())]
    details = [{**d, "index": line} for d in study_rule_details([run], existing, indexed=False)]
    return (None if details else run), details


def import_runs(
    engine: Engine,
    study_name: str,
    rows: Sequence[tuple[Any, Mapping[str, Any]]] | Callable[[], Iterable[tuple[Any, Mapping[str, Any]]]],
    *,
    create: StudyIn | None = None,
    batch_size: int = DEFAULT_IMPORT_BATCH,
    created_by: str | None = "cli",
    progress: Callable[[int, int], None] | None = None,
    source: str = "import",
    what: str = "the file",
    skip_invalid: bool = False,
    description: str | None = None,
) -> ImportResult:
    """Validate every (line, row) first, then store in transactions of `batch_size` runs.

    A file with a bad row stores nothing: InvalidRuns lists every problem, each detail's
    `index` being the row's line number (or the source run's id; `what` names the source in
    the message). With `skip_invalid` the bad rows are left out instead and listed in the
    result's `skipped`. `create`: make the study with these fields if it does not exist
    (otherwise an unknown study is StudyNotFound). Every run stored records one submission id
    (in the result): `hpscale import --undo ID` deletes them again; rows of our own export
    that name their submission get one new submission per exported one (`submissions`), and
    keep their exclusion. A row without a run_key gets one from its content (the client's
    rule: `content_run_key`), so an import run again stores nothing twice. The audit log
    records the import (action `import_<source>`, the count stored, `description`).

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
    kept: list[tuple[RunIn, _Prepared]] = []
    details: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    bad_lines: set[Any] = set()
    extra_keys: set[str] = set()
    count = keyed = 0
    for line, row in rows() if callable(rows) else rows:
        prepared, problems = _prepare(row)
        run, run_problems = _validate(prepared, line, existing)
        problems = [{**d, "index": line} for d in problems] + run_problems
        if problems or run is None:
            (skipped if skip_invalid else details).extend(problems)
            bad_lines.add(line)
            continue
        extra_keys.update(run.extra or ())
        count += 1
        keyed += prepared.keyed
        if not streamed:
            kept.append((run, prepared))
    if details:
        lines = len({d["index"] for d in details})
        raise InvalidRuns(
            f"{len(details)} problem(s) in {lines} run(s) of {what}; nothing was imported "
            "(--skip-invalid imports the others and lists these)",
            details,
        )
    created = existing is None
    if created:
        assert create is not None
        run_in_transaction(engine, lambda conn: queries.create_study(conn, create.model_dump(), created_by))
    with read_connection(engine) as conn:
        study = get_study(conn, study_name)
        check_extra_key_set(conn, study, extra_keys)
    submission_id = run_in_transaction(
        engine, lambda conn: queries.create_submission(conn, study.id, source, created_by)
    )
    # One new submission per submission of an exported study, made as its first run is written.
    submissions: dict[int, int] = {}
    audits: dict[int, int] = {}  # submission id here → its audit record
    inserted = duplicates = done = 0
    known_keys: set[str] = set()
    action = audit.IMPORT_PREFIX + source

    def target(conn: Connection, prepared: _Prepared) -> int:
        old = prepared.source_submission
        if old is None:
            return submission_id
        if old not in submissions:
            submissions[old] = queries.create_submission(conn, study.id, source, created_by)
        return submissions[old]

    def write(conn: Connection, batch: list[tuple[dict[str, Any], _Prepared]], keys: set[str]) -> InsertResult:
        # Keys known to be in the study (a committed batch stored them): a batch bringing any other
        # is checked again in its own transaction, since other writers may have added keys since.
        if not keys <= known_keys:
            check_extra_key_set(conn, study, keys)
        groups: dict[int, list[dict[str, Any]]] = {}
        for row, prepared in batch:
            row.update(excluded=prepared.excluded, excluded_reason=prepared.excluded_reason)
            groups.setdefault(target(conn, prepared), []).append(row)
        total = InsertResult(0, 0, [])
        for sub_id, group in groups.items():
            result = queries.insert_runs(conn, study.id, group, created_by, sub_id)
            audit_replaced(conn, study, result, created_by)
            if result.inserted:
                if sub_id in audits:
                    audit.add_to_count(conn, audits[sub_id], result.inserted)
                else:
                    origin = f" (submission {_old_of(sub_id)} of the exported study)" if sub_id != submission_id else ""
                    audits[sub_id] = audit.insert_audit(
                        conn,
                        actor=created_by,
                        action=action,
                        study=study.name,
                        submission_id=sub_id,
                        count=result.inserted,
                        reason=(f"imported from {description}" if description else f"imported ({source})") + origin,
                    )
            total = InsertResult(
                total.inserted + result.inserted,
                total.duplicates + result.duplicates,
                [],
                replaced=total.replaced + result.replaced,
            )
        return total

    def _old_of(sub_id: int) -> int | None:
        return next((old for old, new in submissions.items() if new == sub_id), None)

    def store(batch: list[tuple[dict[str, Any], _Prepared]]) -> None:
        nonlocal inserted, duplicates, done
        keys = {key for row, _ in batch for key in (row.get("extra") or ())}
        saved = (dict(submissions), dict(audits))
        try:
            result = run_in_transaction(engine, lambda conn: write(conn, batch, keys))
        except BaseException:
            # Ids handed out inside the failed transaction were rolled back with it.
            submissions.clear()
            submissions.update(saved[0])
            audits.clear()
            audits.update(saved[1])
            raise
        known_keys.update(keys)
        inserted += result.inserted
        duplicates += result.duplicates
        done += len(batch)
        if progress is not None:
            progress(done, count)

    batch: list[tuple[dict[str, Any], _Prepared]] = []
    try:
        stream = _validated_again(rows, existing, bad_lines) if callable(rows) else iter(kept)
        for run, prepared in stream:
            batch.append((with_defaults(run, study), prepared))
            if len(batch) >= batch_size:
                store(batch)
                batch = []
        if batch:
            store(batch)
    except InvalidRuns:

        def undo(conn: Connection) -> None:
            for sub_id in (submission_id, *submissions.values()):
                queries.delete_submission_runs(conn, study.id, sub_id)

        run_in_transaction(engine, undo)
        raise
    return ImportResult(
        study,
        inserted,
        duplicates,
        submission_id,
        created,
        tuple(skipped),
        dict(submissions),
        keyed,
    )


def _validated_again(
    rows: Callable[[], Iterable[tuple[Any, Mapping[str, Any]]]], existing: Study | None, bad_lines: set[Any]
) -> Iterator[tuple[RunIn, _Prepared]]:
    """The write pass of a streamed import: the rows validated again, one at a time (the
    lines the first pass skipped are skipped again)."""
    for line, row in rows():
        if line in bad_lines:
            continue
        prepared, problems = _prepare(row)
        run, run_problems = _validate(prepared, line, existing)
        if problems or run is None:
            details = [{**d, "index": line} for d in problems] + run_problems
            raise InvalidRuns("the file changed during the import; nothing was imported", details)
        yield run, prepared

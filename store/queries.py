"""Queries the API makes: studies, runs (idempotent batch insert, keyset paging), tokens.

Every function takes a `Connection` already inside a transaction (see
`store.db.run_in_transaction`), so a caller composes several into one atomic unit.
Values always travel as bound parameters.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    case,
    delete,
    false,
    func,
    insert,
    literal_column,
    null,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from store import curves
from store.db import read_connection
from store.models import (
    ApiToken,
    AuditEntry,
    ExpiredFit,
    Fit,
    FitLease,
    Run,
    RunFitState,
    RunStateMark,
    Study,
    Submission,
    utcnow,
)

RUN_FIELDS: tuple[str, ...] = (
    "run_key",
    "n_params",
    "tokens",
    "width",
    "depth",
    "seq_len",
    "learning_rate",
    "batch_size",
    "weight_decay",
    "status",
    "final_loss",
    "loss_curve",
    "curves",
    "seed",
    "extra",
)
# The run fields that are columns of `runs` (the loss curve and other curves live in `run_curves`).
RUN_COLUMN_FIELDS: tuple[str, ...] = tuple(name for name in RUN_FIELDS if name not in ("loss_curve", "curves"))
_RUNS = cast(Table, Run.__table__)
# A listed run: its columns and, from run_curves, its `loss_curve`.
_RUNS_WITH_LOSS, _LOSS_POINTS = curves.loss_join(_RUNS)
_RUN_COLUMNS = [
    *(
        _RUNS.c[name] if name != "loss_curve" else _LOSS_POINTS.label("loss_curve")
        for name in ("id", *RUN_FIELDS, "created_at", "created_by", "submission_id", "excluded", "excluded_reason")
        if name != "curves"
    )
]
# Stay under SQLite's 32,766 bound-parameter limit in IN (...) lists.
_KEY_CHUNK = 900


# --- studies -----------------------------------------------------------------------


def get_study(conn: Connection, name: str) -> Study | None:
    row = conn.execute(select(Study.__table__).where(Study.name == name)).first()
    return None if row is None else Study(**row._mapping)


def get_study_by_id(conn: Connection, study_id: int) -> Study:
    row = conn.execute(select(Study.__table__).where(Study.id == study_id)).one()
    return Study(**row._mapping)


def list_studies(conn: Connection) -> list[Study]:
    rows = conn.execute(select(Study.__table__).order_by(Study.name)).all()
    return [Study(**row._mapping) for row in rows]


def create_study(conn: Connection, fields: Mapping[str, Any], created_by: str | None) -> Study | None:
    """Insert a study; None when the name is taken (no exception, so the caller says 409)."""
    values = {**fields, "data_version": 0, "created_at": utcnow(), "created_by": created_by}
    stmt = (
        _dialect_insert(conn, Study)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["name"])
        .returning(Study.id)
    )
    # rowcount is unreliable with RETURNING (psycopg reports -1); the returned id is not.
    if conn.execute(stmt).scalar_one_or_none() is None:
        return None
    return get_study(conn, fields["name"])


def study_run_count(conn: Connection, study_id: int) -> int:
    return conn.execute(select(func.count()).where(Run.study_id == study_id)).scalar_one()


def latest_fit_id(conn: Connection, study_id: int) -> int | None:
    return conn.execute(select(func.max(Fit.id)).where(Fit.study_id == study_id, Fit.status == "done")).scalar_one()


# --- runs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InsertResult:
    inserted: int
    duplicates: int
    ids: list[int]
    submission_id: int | None = None
    # Stored `failed` runs a retry under the same run_key replaced (see insert_runs).
    replaced: int = 0
    replaced_runs: tuple[Replaced, ...] = ()


@dataclass(frozen=True)
class Replaced:
    """A stored `failed` run a retry replaced: its id and key, and what the failed attempt was."""

    run_id: int
    run_key: str
    old_submission_id: int | None
    old_error: str | None


# A retry may replace a stored run only if that run failed and the retry reached an outcome.
SUPERSEDABLE_STATUS = "failed"
SUPERSEDING_STATUSES = frozenset({"completed", "diverged"})


def _dialect_insert(conn: Connection, model: type) -> Any:
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(model)


def insert_runs(
    conn: Connection,
    study_id: int,
    runs: Sequence[Mapping[str, Any]],
    created_by: str | None,
    submission_id: int | None = None,
) -> InsertResult:
    """Store `runs` (already validated) once each; a `run_key` already in the study is a duplicate,
    except that a stored `failed` run is replaced by a `completed` or `diverged` one under its key
    (a requeued job's retry: same id, `replaced` in the result; the caller audits it).

    Conflicts are resolved by the unique (study_id, run_key) constraint with
    ON CONFLICT DO NOTHING, never by check-then-insert, so concurrent writers with
    overlapping keys store each run exactly once; a replacement is an UPDATE guarded by
    `status = 'failed'`, so of two racing retries one replaces and the other is a duplicate.
    """
    now = utcnow()
    ids: list[int | None] = [None] * len(runs)
    first_index_of_key: dict[str, int] = {}
    repeats: list[tuple[int, str]] = []
    keyed_rows: list[dict[str, Any]] = []
    unkeyed_rows: list[dict[str, Any]] = []
    unkeyed_positions: list[int] = []
    for position, run in enumerate(runs):
        row = {name: run.get(name) for name in RUN_COLUMN_FIELDS}
        row.update(study_id=study_id, created_at=now, created_by=created_by, submission_id=submission_id)
        # An import may bring a run's exclusion along (an export of another study).
        row.update(excluded=bool(run.get("excluded") or False), excluded_reason=run.get("excluded_reason"))
        key = row["run_key"]
        if key is None:
            unkeyed_rows.append(row)
            unkeyed_positions.append(position)
        elif key in first_index_of_key:
            repeats.append((position, key))
        else:
            first_index_of_key[key] = position
            keyed_rows.append(row)

    table = cast(Table, Run.__table__)  # a mapped class's table (typed as the wider FromClause)
    inserted = 0
    id_of_key: dict[str, int] = {}
    replaced: list[Replaced] = []
    if keyed_rows:
        if conn.dialect.name == "postgresql":
            # A transaction that meets a key another one inserted but has not committed
            # waits for it, so two batches sharing keys in different orders deadlock.
            # Insert in run_key order (one global order: they only queue), with ids taken
            # from the sequence beforehand in input order, so ids still follow the input.
            # (SQLite needs neither: BEGIN IMMEDIATE already serialises writers.)
            new_ids = (
                conn.execute(
                    text("SELECT nextval(pg_get_serial_sequence('runs', 'id')) FROM generate_series(1, :n) ORDER BY 1"),
                    {"n": len(keyed_rows)},
                )
                .scalars()
                .all()
            )
            for row, new_id in zip(keyed_rows, new_ids):
                row["id"] = new_id
            keyed_rows.sort(key=lambda row: row["run_key"])
        stmt = (
            _dialect_insert(conn, Run)
            .on_conflict_do_nothing(index_elements=["study_id", "run_key"])
            .returning(table.c.id, table.c.run_key)
        )
        for new_id, key in conn.execute(stmt, keyed_rows):
            id_of_key[key] = new_id
        inserted += len(id_of_key)
        new_ids_of_key = dict(id_of_key)
        missing = [key for key in first_index_of_key if key not in id_of_key]
        failed_keys: list[str] = []
        for start in range(0, len(missing), _KEY_CHUNK):
            chunk = missing[start : start + _KEY_CHUNK]
            for existing_id, key, status in conn.execute(
                select(table.c.id, table.c.run_key, table.c.status).where(
                    table.c.study_id == study_id, table.c.run_key.in_(chunk)
                )
            ):
                id_of_key[key] = existing_id
                if status == SUPERSEDABLE_STATUS:
                    failed_keys.append(key)
        replaced = _supersede_failed(conn, study_id, failed_keys, runs, first_index_of_key, created_by, submission_id)
        for key, position in first_index_of_key.items():
            ids[position] = id_of_key[key]
        for position, key in repeats:
            ids[position] = id_of_key[key]
    stored_positions: list[tuple[int, int]] = []  # (position in `runs`, id) of every run written now
    if keyed_rows:
        stored_positions += [(first_index_of_key[key], run_id) for key, run_id in new_ids_of_key.items()]
        stored_positions += [(first_index_of_key[r.run_key], r.run_id) for r in replaced]
    if unkeyed_rows:
        stmt = insert(table).returning(table.c.id, sort_by_parameter_order=True)
        for position, (new_id,) in zip(unkeyed_positions, conn.execute(stmt, unkeyed_rows)):
            ids[position] = new_id
            stored_positions.append((position, new_id))
        inserted += len(unkeyed_rows)
    # Curves of the runs written now (a replaced run's old curves go first); duplicates keep theirs.
    curves.delete_curves(conn, [r.run_id for r in replaced])
    curves.insert_curves(
        conn,
        [row for position, run_id in stored_positions for row in curves.curve_rows(run_id, study_id, runs[position])],
    )

    if inserted or replaced:
        bump_data_version(conn, study_id)
    return InsertResult(
        inserted=inserted,
        duplicates=len(runs) - inserted - len(replaced),
        ids=[int(i) for i in ids],  # type: ignore[arg-type]
        submission_id=submission_id,
        replaced=len(replaced),
        replaced_runs=tuple(replaced),
    )


def _supersede_failed(
    conn: Connection,
    study_id: int,
    failed_keys: Sequence[str],
    runs: Sequence[Mapping[str, Any]],
    first_index_of_key: Mapping[str, int],
    created_by: str | None,
    submission_id: int | None,
) -> list[Replaced]:
    """Replace the stored `failed` runs under `failed_keys` whose incoming run (the first of
    its key in the batch) completed or diverged. Rare (requeued jobs), so one guarded UPDATE
    per run, in key order (one lock order for concurrent batches)."""
    replaced: list[Replaced] = []
    table = cast(Table, Run.__table__)
    for key in sorted(failed_keys):
        run = runs[first_index_of_key[key]]
        if run.get("status", "completed") not in SUPERSEDING_STATUSES:
            continue
        old = conn.execute(
            select(table.c.submission_id, table.c.extra).where(table.c.study_id == study_id, table.c.run_key == key)
        ).first()
        values = {name: run.get(name) for name in RUN_COLUMN_FIELDS if name != "run_key"}
        values.update(created_at=utcnow(), created_by=created_by, submission_id=submission_id)
        values.update(excluded=bool(run.get("excluded") or False), excluded_reason=run.get("excluded_reason"))
        stmt = (
            update(table)
            .where(table.c.study_id == study_id, table.c.run_key == key, table.c.status == SUPERSEDABLE_STATUS)
            .values(**values)
            .returning(table.c.id)
        )
        run_id = conn.execute(stmt).scalar_one_or_none()
        if run_id is not None and old is not None:
            error = (old.extra or {}).get("error")
            replaced.append(Replaced(int(run_id), key, old.submission_id, None if error is None else str(error)))
    return replaced


def bump_data_version(conn: Connection, study_id: int) -> None:
    conn.execute(update(Study).where(Study.id == study_id).values(data_version=Study.data_version + 1))


@dataclass(frozen=True)
class RunFilters:
    status: str | None = None
    width: int | None = None
    depth: int | None = None
    created_by: str | None = None
    excluded: bool | None = None


def _filtered(stmt: Any, study_id: int, filters: RunFilters) -> Any:
    c = Run.__table__.c
    stmt = stmt.where(c.study_id == study_id)
    if filters.status is not None:
        stmt = stmt.where(c.status == filters.status)
    if filters.width is not None:
        stmt = stmt.where(c.width == filters.width)
    if filters.depth is not None:
        stmt = stmt.where(c.depth == filters.depth)
    if filters.created_by is not None:
        stmt = stmt.where(c.created_by == filters.created_by)
    if filters.excluded is not None:
        stmt = stmt.where(c.excluded == filters.excluded)
    return stmt


def list_runs(
    conn: Connection, study_id: int, *, after_id: int, limit: int, filters: RunFilters = RunFilters()
) -> tuple[list[dict[str, Any]], int | None]:
    """One page of runs in id order after `after_id`, and the last id if more follow."""
    c = Run.__table__.c
    stmt = _filtered(select(*_RUN_COLUMNS).select_from(_RUNS_WITH_LOSS), study_id, filters)
    rows = conn.execute(stmt.where(c.id > after_id).order_by(c.id).limit(limit + 1)).all()
    page = [dict(row._mapping) for row in rows[:limit]]
    return page, (page[-1]["id"] if len(rows) > limit else None)


def iter_runs(
    engine: Engine, study_id: int, *, filters: RunFilters = RunFilters(), chunk: int = 5000
) -> Iterator[dict[str, Any]]:
    """Every run of a study in id order, read in keyset chunks (each in its own transaction)."""
    after_id = 0
    while True:
        with read_connection(engine) as conn:
            page, _ = list_runs(conn, study_id, after_id=after_id, limit=chunk, filters=filters)
        yield from page
        if len(page) < chunk:
            return
        after_id = page[-1]["id"]


EXPORT_ROW_COLUMNS: tuple[str, ...] = (
    "id",
    *RUN_FIELDS,
    "created_at",
    "created_by",
    "excluded",
    "excluded_reason",
    "submission_id",
)


def iter_run_pages(engine: Engine, study_id: int, *, chunk: int = 10_000) -> Iterator[list[tuple[Any, ...]]]:
    """Every run of a study as pages of row tuples (`EXPORT_ROW_COLUMNS`), in id order, read in
    keyset chunks (each in its own transaction): the export's fast path, no dict per run."""
    c = Run.__table__.c
    curves_at = EXPORT_ROW_COLUMNS.index("curves")
    columns = [
        _LOSS_POINTS if name == "loss_curve" else null().label("curves") if name == "curves" else _RUNS.c[name]
        for name in EXPORT_ROW_COLUMNS
    ]
    after_id = 0
    while True:
        with read_connection(engine) as conn:
            stmt = (
                select(*columns)
                .select_from(_RUNS_WITH_LOSS)
                .where(c.study_id == study_id, c.id > after_id)
                .order_by(c.id)
                .limit(chunk)
            )
            page = [tuple(row) for row in conn.execute(stmt)]
            if page:
                others = curves.other_series_between(conn, study_id, page[0][0], page[-1][0])
                if others:
                    page = [
                        (*row[:curves_at], others.get(row[0]), *row[curves_at + 1 :]) if row[0] in others else row
                        for row in page
                    ]
        if page:
            yield page
        if len(page) < chunk:
            return
        after_id = page[-1][0]


def run_extra_keys(engine: Engine, study_id: int, *, chunk: int = 20_000) -> set[str]:
    """Every key used in the study's runs' `extra` (the CSV export's extra.* columns)."""
    c = Run.__table__.c
    keys: set[str] = set()
    after_id = 0
    while True:
        with read_connection(engine) as conn:
            rows = conn.execute(
                select(c.id, c.extra).where(c.study_id == study_id, c.id > after_id).order_by(c.id).limit(chunk)
            ).all()
        for _, extra in rows:
            keys.update(extra or ())
        if len(rows) < chunk:
            return keys
        after_id = rows[-1][0]


def fits_with_status(conn: Connection, status: str) -> list[tuple[int, datetime | None]]:
    """(id, finished_at) of every fit of any study in `status`, by id (benchmarks and checks)."""
    c = Fit.__table__.c
    return [(int(i), f) for i, f in conn.execute(select(c.id, c.finished_at).where(c.status == status).order_by(c.id))]


def fit_input_count(conn: Connection, study_id: int, after_id: int = 0) -> tuple[int, int]:
    """How many runs a fit of the study reads now (excluded runs are not counted) with ids
    above `after_id`, and the highest such id (`after_id` if none): a range of the
    (study_id, id) index, so counting only the runs added since a full count is cheap."""
    c = Run.__table__.c
    stmt = select(func.count(), func.max(c.id)).where(c.study_id == study_id, c.id > after_id, c.excluded == false())
    count, last = conn.execute(stmt).one()
    return int(count), int(last if last is not None else after_id)


# The columns a fit reads, for every run of the study (no curves, no extras); `id` and
# `run_key` name the runs a fit leaves out. Excluded runs stay stored and listed, but no fit
# reads them. The one list of fit-input columns: every reader below goes by it.
FIT_INPUT_COLUMNS = (
    "id",
    "run_key",
    "n_params",
    "tokens",
    "width",
    "depth",
    "seq_len",
    "learning_rate",
    "batch_size",
    "weight_decay",
    "final_loss",
    "status",
)
# The numeric fit inputs, and how the fast PostgreSQL read encodes the rest as numbers.
FIT_INPUT_NUMBERS = tuple(name for name in FIT_INPUT_COLUMNS if name not in ("run_key", "status"))
FIT_STATUS_CODES = ("completed", "diverged", "failed")


def _status_code_sql() -> str:
    """SQL of a run's status as its index in FIT_STATUS_CODES (NULL is completed, anything else
    len(FIT_STATUS_CODES)): readers get a small integer per run, not a string object."""
    cases = " ".join(f"WHEN '{code}' THEN {i}" for i, code in enumerate(FIT_STATUS_CODES))
    return f"CASE COALESCE(status, 'completed') {cases} ELSE {len(FIT_STATUS_CODES)} END"


def _fit_input_select(study_id: int, after_id: int = 0) -> Any:
    c = Run.__table__.c
    status: Any = literal_column(_status_code_sql())
    stmt = select(*[status if name == "status" else c[name] for name in FIT_INPUT_COLUMNS])
    return stmt.where(c.study_id == study_id, c.excluded == false(), c.id > after_id).order_by(c.id)


def fit_input_chunks(conn: Connection, study_id: int, *, chunk: int = 50_000) -> Iterator[list[tuple[Any, ...]]]:
    """The study's fit inputs as plain row tuples (`FIT_INPUT_COLUMNS`, the status as its index in
    FIT_STATUS_CODES), `chunk` rows at a time in id order.

    Keyset pages on the caller's connection, so inside a snapshot transaction every page
    sees the same data; no per-row dicts, so a million runs need tens of MB, not a GB.
    """
    if conn.dialect.name == "sqlite":
        # One statement on the driver's own cursor: plain tuples, no SQLAlchemy row per run (a
        # million runs read in about half the time); the transaction keeps it one snapshot.
        columns = ", ".join(_status_code_sql() if name == "status" else name for name in FIT_INPUT_COLUMNS)
        sql = f"SELECT {columns} FROM runs WHERE study_id = ? AND NOT excluded ORDER BY id"
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(sql, (study_id,))
            while rows := cursor.fetchmany(chunk):
                yield rows
        finally:
            cursor.close()
        return
    after = 0
    while True:
        rows = [tuple(row) for row in conn.execute(_fit_input_select(study_id, after).limit(chunk))]
        if rows:
            yield rows
        if len(rows) < chunk:
            return
        after = rows[-1][0]


def fit_input_copy(conn: Connection, study_id: int) -> tuple[bytearray, bytearray]:
    """PostgreSQL only: the study's fit inputs by COPY, in id order, as (numbers, run keys).

    `numbers` is COPY's binary format of fixed-width rows: every `FIT_INPUT_NUMBERS` column as
    float8 (NULL as NaN) and the status as its index in FIT_STATUS_CODES (int2; NULL is
    completed, anything else 3). `run keys` is COPY's text format of the run_key column, one
    line per run (`\\N` for NULL). Fixed-width rows let the caller read a million runs into
    numpy without a Python object per value; two statements of one snapshot transaction
    see the same runs.
    """
    table = f"runs WHERE study_id = {int(study_id)} AND NOT excluded ORDER BY id"
    numbers = ", ".join(f"COALESCE({name}::float8, 'NaN'::float8)" for name in FIT_INPUT_NUMBERS)
    status = f"{_status_code_sql()}::int2"
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        # One block per row: appended to one buffer as they come (no object kept per row).
        binary, keys = bytearray(), bytearray()
        with cursor.copy(f"COPY (SELECT {numbers}, {status} FROM {table}) TO STDOUT (FORMAT BINARY)") as copy:
            for block in copy:
                binary += block
        with cursor.copy(f"COPY (SELECT run_key FROM {table}) TO STDOUT") as copy:
            for block in copy:
                keys += block
    finally:
        cursor.close()
    return binary, keys  # bytearrays: no second copy of ~130 MB per million runs


# --- submissions, exclusion, undo, audit ------------------------------------------------


def create_submission(conn: Connection, study_id: int, source: str | None, created_by: str | None) -> int:
    """A new submission's id: every run stored by one POST or one import records it."""
    stmt = insert(Submission).values(study_id=study_id, source=source, created_at=utcnow(), created_by=created_by)
    return int(conn.execute(stmt.returning(Submission.id)).scalar_one())


def get_run(conn: Connection, study_id: int, run_id: int) -> dict[str, Any] | None:
    c = Run.__table__.c
    stmt = select(*_RUN_COLUMNS).select_from(_RUNS_WITH_LOSS).where(c.study_id == study_id, c.id == run_id)
    row = conn.execute(stmt).first()
    return None if row is None else dict(row._mapping)


def set_run_excluded(conn: Connection, study_id: int, run_id: int, excluded: bool, reason: str | None) -> bool:
    """Exclude (or include) a run; True if the run exists. The data version changes only
    when what fits read changes (a new reason for an excluded run does not)."""
    c = Run.__table__.c
    current = conn.execute(select(c.excluded).where(c.study_id == study_id, c.id == run_id)).first()
    if current is None:
        return False
    conn.execute(
        update(Run)
        .where(c.study_id == study_id, c.id == run_id)
        .values(excluded=excluded, excluded_reason=reason if excluded else None)
    )
    if bool(current[0]) != excluded:
        bump_data_version(conn, study_id)
    return True


def submission_exists(conn: Connection, study_id: int, submission_id: int) -> bool:
    stmt = select(Submission.id).where(Submission.study_id == study_id, Submission.id == submission_id)
    return conn.execute(stmt).first() is not None


def delete_submission_runs(conn: Connection, study_id: int, submission_id: int) -> int:
    """Delete the runs a submission stored (not the duplicates it met); how many went."""
    c = Run.__table__.c
    ids = conn.execute(select(c.id).where(c.study_id == study_id, c.submission_id == submission_id)).scalars().all()
    for start in range(0, len(ids), _KEY_CHUNK):
        chunk = ids[start : start + _KEY_CHUNK]
        conn.execute(delete(Run).where(c.id.in_(chunk)))
        conn.execute(delete(RunFitState).where(RunFitState.run_id.in_(chunk)))
    curves.delete_curves(conn, ids)
    if ids:
        bump_data_version(conn, study_id)
    return len(ids)


def delete_study(conn: Connection, study_id: int) -> None:
    """The study with its runs, fits and submissions (explicitly: no reliance on cascades)."""
    curves.delete_study_curves(conn, study_id)
    for model in (Run, Fit, FitLease, Submission, RunFitState, RunStateMark):
        conn.execute(delete(model).where(model.study_id == study_id))
    conn.execute(delete(Study).where(Study.id == study_id))


def add_audit(
    conn: Connection,
    *,
    actor: str | None,
    action: str,
    study: str,
    run_id: int | None = None,
    submission_id: int | None = None,
    count: int | None = None,
    reason: str | None = None,
) -> None:
    conn.execute(
        insert(AuditEntry).values(
            created_at=utcnow(),
            actor=actor,
            action=action,
            study=study,
            run_id=run_id,
            submission_id=submission_id,
            count=count,
            reason=reason,
        )
    )


def list_audit(conn: Connection, study: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """The newest audit entries first (of one study, if given)."""
    stmt = select(AuditEntry.__table__)
    if study is not None:
        stmt = stmt.where(AuditEntry.study == study)
    return [dict(row._mapping) for row in conn.execute(stmt.order_by(AuditEntry.id.desc()).limit(limit))]


# --- fits ---------------------------------------------------------------------------

# Fits kept per study when a new one finishes or one is pinned: the newest KEEP_FITS, and
# besides them the pinned fits (whose id a recommendation handed out: a launcher may ask
# for it again) that an answer used within PIN_KEEP_DAYS, at most MAX_PINNED_FITS of them,
# least recently used pruned first. A pruned fit's id goes to expired_fits (at most
# MAX_EXPIRED_FITS per study, the oldest forgotten first), so asking for it is 410, not 404.
KEEP_FITS = 20
PIN_KEEP_DAYS = 30
MAX_PINNED_FITS = 50
MAX_EXPIRED_FITS = 10_000

_FIT_COLUMNS = Fit.__table__.c
# Fit rows are looked up on every recommendation; the (large) result is read only when a
# process has not cached that fit yet (see fit_result).
_FIT_HEADER = [column for column in Fit.__table__.c if column.name != "result"]


def _fit_row(conn: Connection, stmt: Any) -> dict[str, Any] | None:
    row = conn.execute(stmt).first()
    return None if row is None else dict(row._mapping)


def fit_result(conn: Connection, fit_id: int) -> dict[str, Any] | None:
    return conn.execute(select(_FIT_COLUMNS.result).where(_FIT_COLUMNS.id == fit_id)).scalar_one_or_none()


def get_fit(conn: Connection, study_id: int, fit_id: int) -> dict[str, Any] | None:
    return _fit_row(conn, select(*_FIT_HEADER).where(_FIT_COLUMNS.study_id == study_id, _FIT_COLUMNS.id == fit_id))


def latest_done_fit(conn: Connection, study_id: int, data_version: int | None = None) -> dict[str, Any] | None:
    """The newest finished fit of the study (of one data version, if given)."""
    stmt = select(*_FIT_HEADER).where(_FIT_COLUMNS.study_id == study_id, _FIT_COLUMNS.status == "done")
    if data_version is not None:
        stmt = stmt.where(_FIT_COLUMNS.data_version == data_version)
    return _fit_row(conn, stmt.order_by(_FIT_COLUMNS.id.desc()).limit(1))


def fit_outcome(
    conn: Connection, study_id: int, min_version: int, bootstrap: int | None = None
) -> dict[str, Any] | None:
    """The newest outcome of the study's runs as of `min_version` or later: a done fit (with
    exactly `bootstrap` resamples, if given) or a failed one (a failure is the data's, whatever
    the resamples); None while there is none. Data versions only grow, so any fit of a version
    ≥ `min_version` read all the runs that were there at `min_version`."""
    c = _FIT_COLUMNS
    done = c.status == "done" if bootstrap is None else (c.status == "done") & (c.bootstrap == bootstrap)
    stmt = select(*_FIT_HEADER).where(
        c.study_id == study_id, c.data_version >= min_version, done | (c.status == "failed")
    )
    return _fit_row(conn, stmt.order_by(c.data_version.desc(), c.id.desc()).limit(1))


def fit_of_version(conn: Connection, study_id: int, data_version: int) -> dict[str, Any] | None:
    """A fit row of exactly this data version, any bootstrap count: done first, then failed, then running."""
    rank = case((_FIT_COLUMNS.status == "done", 0), (_FIT_COLUMNS.status == "failed", 1), else_=2)
    return _fit_row(
        conn,
        select(*_FIT_HEADER)
        .where(
            _FIT_COLUMNS.study_id == study_id,
            _FIT_COLUMNS.data_version == data_version,
            _FIT_COLUMNS.status.in_(("done", "failed", "running")),
        )
        .order_by(rank, _FIT_COLUMNS.id.desc())
        .limit(1),
    )


def claim_fit(
    conn: Connection, study_id: int, data_version: int, bootstrap: int, owner: str, created_by: str | None
) -> int | None:
    """Make this owner's 'running' row for the fit of (study, data version, bootstrap); its id.

    Call it only while holding the study's fit lock (`store.leases`): another 'running' row
    of that fit then belongs to a process that is gone, and is taken over; a 'stale' one (an
    older engine's) is replaced by a new row. None when the fit has an outcome already.
    """
    c = _FIT_COLUMNS
    key = (c.study_id == study_id, c.data_version == data_version, c.bootstrap == bootstrap)
    row = conn.execute(select(c.id, c.status).where(*key)).first()
    now = utcnow()
    if row is not None and row.status == "stale":
        # A new fit gets a new id: the old id named a result that is gone, not this one.
        conn.execute(delete(Fit).where(c.id == row.id))
        row = None
    if row is not None:
        if row.status in ("done", "failed"):
            return None
        conn.execute(
            update(Fit)
            .where(c.id == row.id)
            .values(status="running", owner=owner, created_at=now, created_by=created_by, result=None, error=None)
        )
        return int(row.id)
    stmt = insert(Fit).values(
        study_id=study_id,
        data_version=data_version,
        bootstrap=bootstrap,
        status="running",
        n_runs=0,
        created_at=now,
        created_by=created_by,
        owner=owner,
    )
    return int(conn.execute(stmt.returning(c.id)).scalar_one())


def drop_abandoned_fits(conn: Connection, study_id: int, owner: str) -> int:
    """Delete the study's 'running' rows of other owners (while holding its fit lock, they are
    dead: their process or connection is gone); how many went."""
    c = _FIT_COLUMNS
    owned = (c.owner.is_(None)) | (c.owner != owner)
    return conn.execute(delete(Fit).where(c.study_id == study_id, c.status == "running", owned)).rowcount


def finish_fit(
    conn: Connection,
    fit_id: int,
    owner: str,
    *,
    status: str,
    n_runs: int,
    result: dict[str, Any] | None,
    error_code: str | None = None,
    error: str | None = None,
) -> bool:
    """Record a running fit's outcome, if `owner` still owns it; whether it did.

    False when the row is gone or belongs to someone else (the claim was released or taken
    over meanwhile): the caller's result is then not written, and nothing raises.
    """
    c = _FIT_COLUMNS
    written = conn.execute(
        update(Fit)
        .where(c.id == fit_id, c.status == "running", c.owner == owner)
        .values(status=status, n_runs=n_runs, result=result, error_code=error_code, error=error, finished_at=utcnow())
        .returning(c.study_id)
    ).scalar_one_or_none()
    if written is None:
        return False
    if status == "done":
        # Fits are derived data: keep the newest few and every pinned one, not all of them.
        prune_fits(conn, written, KEEP_FITS)
    return True


def fail_owned_fits(conn: Connection, owner: str, error_code: str, error: str) -> int:
    """Record every running fit of `owner` as failed (its process was stopped); how many."""
    c = _FIT_COLUMNS
    return conn.execute(
        update(Fit)
        .where(c.owner == owner, c.status == "running")
        .values(status="failed", error_code=error_code, error=error, finished_at=utcnow())
    ).rowcount


def record_failed_fit(conn: Connection, study_id: int, bootstrap: int, owner: str, error_code: str, error: str) -> None:
    """Record the owner's running fit of the study as failed; if it had none yet (stopped
    before it claimed one), a failed fit of the study's current data version (once)."""
    if fail_owned_fits(conn, owner, error_code, error):
        return
    version = conn.execute(select(Study.data_version).where(Study.id == study_id)).scalar_one()
    values = {
        "study_id": study_id,
        "data_version": version,
        "bootstrap": bootstrap,
        "status": "failed",
        "n_runs": 0,
        "created_at": utcnow(),
        "finished_at": utcnow(),
        "error_code": error_code,
        "error": error,
    }
    stmt = _dialect_insert(conn, Fit).values(**values)
    conn.execute(stmt.on_conflict_do_nothing(index_elements=["study_id", "data_version", "bootstrap"]))


def drop_owned_fits(conn: Connection, owner: str) -> int:
    """Delete every running fit of `owner` (its fit will not be finished); how many."""
    c = _FIT_COLUMNS
    return conn.execute(delete(Fit).where(c.owner == owner, c.status == "running")).rowcount


def mark_fit_stale(conn: Connection, fit_id: int) -> None:
    """A done fit whose stored state this engine cannot read: never served again, refitted."""
    conn.execute(update(Fit).where(_FIT_COLUMNS.id == fit_id, _FIT_COLUMNS.status == "done").values(status="stale"))


def pin_fit(conn: Connection, fit_id: int, now: datetime | None = None) -> None:
    """Record that an answer handed out (or used) this fit: pinned, used now; then prune the
    study's fits to the pin policy (KEEP_FITS above)."""
    now = now or utcnow()
    study_id = conn.execute(
        update(Fit).where(_FIT_COLUMNS.id == fit_id).values(pinned=True, pinned_at=now).returning(_FIT_COLUMNS.study_id)
    ).scalar_one_or_none()
    if study_id is not None:
        prune_fits(conn, study_id, KEEP_FITS, now=now)


def prune_fits(conn: Connection, study_id: int, keep: int, now: datetime | None = None) -> int:
    """Delete the study's finished or failed fits beyond its newest `keep`, except the pinned
    ones the policy keeps (KEEP_FITS above); a 'running' fit is never touched. Each deleted
    fit is recorded in expired_fits. How many went."""
    now = now or utcnow()
    rows = conn.execute(
        select(_FIT_COLUMNS.id, _FIT_COLUMNS.pinned, _FIT_COLUMNS.pinned_at)
        .where(_FIT_COLUMNS.study_id == study_id, _FIT_COLUMNS.status != "running")
        .order_by(_FIT_COLUMNS.id.desc())
    ).all()
    used_since = now - timedelta(days=PIN_KEEP_DAYS)
    recent_pins = sorted(
        (row for row in rows[keep:] if row.pinned and row.pinned_at is not None and row.pinned_at >= used_since),
        key=lambda row: (row.pinned_at, row.id),
        reverse=True,
    )
    kept = {row.id for row in rows[:keep]} | {row.id for row in recent_pins[:MAX_PINNED_FITS]}
    doomed = [row for row in rows if row.id not in kept]
    if doomed:
        ids = [row.id for row in doomed]
        conn.execute(delete(Fit).where(_FIT_COLUMNS.id.in_(ids)))
        # Another process may be pruning the same fits at this moment: one record each.
        conn.execute(
            _dialect_insert(conn, ExpiredFit).on_conflict_do_nothing(index_elements=["fit_id"]),
            [{"fit_id": row.id, "study_id": study_id, "pinned": bool(row.pinned), "expired_at": now} for row in doomed],
        )
        # The record of pruned fits is bounded too: the oldest are forgotten (then 404).
        forgotten = (
            select(ExpiredFit.fit_id)
            .where(ExpiredFit.study_id == study_id)
            .order_by(ExpiredFit.fit_id.desc())
            .offset(MAX_EXPIRED_FITS)
        )
        conn.execute(delete(ExpiredFit).where(ExpiredFit.fit_id.in_(forgotten)))
    return len(doomed)


def expired_fit(conn: Connection, study_id: int, fit_id: int) -> dict[str, Any] | None:
    """The record of this study's fit `fit_id` if pruning removed it: {"pinned", "expired_at"}."""
    row = conn.execute(
        select(ExpiredFit.pinned, ExpiredFit.expired_at).where(
            ExpiredFit.study_id == study_id, ExpiredFit.fit_id == fit_id
        )
    ).first()
    return None if row is None else dict(row._mapping)


# --- tokens -------------------------------------------------------------------------

TOKEN_PREFIX = "hps_"
# Writing last_used_at on every request would turn every read into a write.
_LAST_USED_RESOLUTION = timedelta(seconds=60)


def hash_token(token: str) -> str:
    """SHA-256 hex: tokens are 256-bit random strings, so a slow KDF buys nothing here."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(conn: Connection, name: str, scope: str, token: str | None = None) -> str:
    """Store a new token's hash and return the token (the only time it exists in clear).

    `scope` is one of `service.limits.SCOPES` (checked by the service)."""
    token = token or TOKEN_PREFIX + secrets.token_urlsafe(32)
    conn.execute(insert(ApiToken).values(name=name, scope=scope, token_hash=hash_token(token), created_at=utcnow()))
    return token


def token_name_exists(conn: Connection, name: str) -> bool:
    return conn.execute(select(ApiToken.id).where(ApiToken.name == name)).first() is not None


def find_token(conn: Connection, token: str) -> ApiToken | None:
    """The live token matching `token`, compared in constant time."""
    digest = hash_token(token)
    row = conn.execute(
        select(ApiToken.__table__).where(ApiToken.token_hash == digest, ApiToken.revoked_at.is_(None))
    ).first()
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    return ApiToken(**row._mapping)


def token_use_is_stale(token: ApiToken, now: datetime) -> bool:
    """Whether `last_used_at` is old enough to be worth a write (once a minute at most)."""
    return token.last_used_at is None or now - token.last_used_at >= _LAST_USED_RESOLUTION


def touch_token(conn: Connection, token_id: int, now: datetime) -> None:
    conn.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))


def list_tokens(conn: Connection) -> list[ApiToken]:
    rows = conn.execute(select(ApiToken.__table__).order_by(ApiToken.id)).all()
    return [ApiToken(**row._mapping) for row in rows]


def delete_token(conn: Connection, name: str) -> None:
    conn.execute(delete(ApiToken).where(ApiToken.name == name))


def revoke_token(conn: Connection, name: str) -> bool:
    result = conn.execute(
        update(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return result.rowcount > 0


# --- extra keys per study (the cap on runs.csv's extra.* columns) ---------------------------


def study_has_extra_key(conn: Connection, study_id: int, key: str) -> bool:
    """Whether any run of the study has `key` in `extra` (stops at the first such run)."""
    if conn.dialect.name == "postgresql":
        sql = "SELECT EXISTS (SELECT 1 FROM runs WHERE study_id = :sid AND jsonb_exists(extra::jsonb, :key))"
    else:
        sql = (
            "SELECT EXISTS (SELECT 1 FROM runs, json_each(runs.extra) AS j WHERE runs.study_id = :sid AND j.key = :key)"
        )
    return bool(conn.execute(text(sql), {"sid": study_id, "key": key}).scalar())


def lock_study(conn: Connection, study_id: int) -> None:
    """Lock the study's row until the transaction ends (PostgreSQL; SQLite's write
    transactions are serialised already): writers that must count the study's extra keys
    before adding new ones take turns."""
    conn.execute(select(Study.id).where(Study.id == study_id).with_for_update())


def study_extra_keys(conn: Connection, study_id: int) -> set[str]:
    """Every distinct `extra` key of the study's runs, counted in the database."""
    if conn.dialect.name == "postgresql":
        sql = "SELECT DISTINCT jsonb_object_keys(extra::jsonb) FROM runs WHERE study_id = :sid AND extra IS NOT NULL"
    else:
        sql = "SELECT DISTINCT j.key FROM runs, json_each(runs.extra) AS j WHERE runs.study_id = :sid"
    return {row[0] for row in conn.execute(text(sql), {"sid": study_id})}

"""Runs as a person browses them: a study's runs sorted by any column and filtered by how the
latest fit used each run, on the server, in keyset pages; and the table of those fit states.

`run_fit_states` holds, per run, the state the study's latest fit gives it (near_optimal,
used, diverged, outlier, failed; `service.run_states` computes and refreshes them);
exclusion is the run's own `excluded` column, read live. A state filter walks the
(study_id, state, run_id) index, so a page of a rare state in a 100k-run study costs about
what a page of the unfiltered listing does (`bench/runs_listing.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, and_, case, delete, false, func, or_, select, true

from store.models import Fit, Run, RunFitState, RunStateMark, utcnow
from store.queries import _RUN_COLUMNS, _RUNS_WITH_LOSS, RunFilters, _dialect_insert, _filtered

# Columns a listing may be sorted by (each a column of `runs`).
SORTABLE: tuple[str, ...] = (
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
    "status",
    "final_loss",
    "seed",
    "created_at",
    "created_by",
    "submission_id",
)
# What the latest fit made of a run; "excluded" (a user's decision) is not among them.
STORED_STATES: tuple[str, ...] = ("near_optimal", "used", "diverged", "outlier", "failed")
EXCLUDED = "excluded"

_RUNS = cast(Table, Run.__table__)
_STATES = cast(Table, RunFitState.__table__)
_MARKS = cast(Table, RunStateMark.__table__)
_CHUNK = 900


@dataclass(frozen=True)
class Listing:
    """What a listing shows: filters, a fit state (or "excluded"), and the order."""

    filters: RunFilters = field(default_factory=RunFilters)
    state: str | None = None
    sort: str = "id"
    descending: bool = False


@dataclass(frozen=True)
class Position:
    """Where a page ends: the sort column's value and the id of its last run (keyset)."""

    value: Any
    id: int


def _state_column() -> Any:
    # Exclusion is live (the run's own column); every other state is the latest fit's.
    return case((_RUNS.c.excluded == true(), EXCLUDED), else_=_STATES.c.state).label("fit_state")


def _listing_stmt(study_id: int, listing: Listing) -> tuple[Any, Any]:
    """(statement selecting a listing's runs with their loss curve and state, its id column)."""
    joined = _RUNS_WITH_LOSS.outerjoin(_STATES, _STATES.c.run_id == _RUNS.c.id)
    stmt = _filtered(select(*_RUN_COLUMNS, _state_column()).select_from(joined), study_id, listing.filters)
    return _state_filter(stmt, study_id, listing)


def _state_filter(stmt: Any, study_id: int, listing: Listing) -> tuple[Any, Any]:
    id_column = _RUNS.c.id
    if listing.state == EXCLUDED:
        stmt = stmt.where(_RUNS.c.excluded == true())
    elif listing.state is not None:
        stmt = stmt.where(_STATES.c.study_id == study_id, _STATES.c.state == listing.state)
        stmt = stmt.where(_RUNS.c.excluded == false())
        # Walk the (study_id, state, run_id) index in its own order: equal to runs.id here.
        id_column = _STATES.c.run_id
    return stmt, id_column


def _sorted_ids(
    conn: Connection, study_id: int, listing: Listing, after: Position | None, limit: int
) -> list[tuple[Any, int]]:
    """The next `limit` (value, id) of a listing sorted by a column, NULLs last, ties by id.

    Two ranges, each in one index order: the non-null values (after the cursor), then the NULLs
    by id; only ids and the sort column are read (rows are fetched for the page alone), so a
    sorted page of a 100k-run study reads no curves or extras of the runs it passes."""
    column = _RUNS.c[listing.sort]
    desc = listing.descending
    base = _filtered(select(column, _RUNS.c.id), study_id, listing.filters)
    if listing.state not in (None, EXCLUDED):
        base = base.select_from(_RUNS.join(_STATES, _STATES.c.run_id == _RUNS.c.id))
    base, _ = _state_filter(base, study_id, listing)
    out: list[tuple[Any, int]] = []
    if after is None or after.value is not None:
        stmt = base.where(column.is_not(None))
        if after is not None:
            beyond = column < after.value if desc else column > after.value
            tie = and_(column == after.value, _RUNS.c.id < after.id if desc else _RUNS.c.id > after.id)
            stmt = stmt.where(or_(beyond, tie))
        order = (column.desc(), _RUNS.c.id.desc()) if desc else (column, _RUNS.c.id)
        out = [(value, int(run_id)) for value, run_id in conn.execute(stmt.order_by(*order).limit(limit))]
    if len(out) < limit:
        stmt = base.where(column.is_(None))
        if after is not None and after.value is None:
            stmt = stmt.where(_RUNS.c.id < after.id if desc else _RUNS.c.id > after.id)
        stmt = stmt.order_by(_RUNS.c.id.desc() if desc else _RUNS.c.id).limit(limit - len(out))
        out += [(None, int(run_id)) for _, run_id in conn.execute(stmt)]
    return out


def list_page(
    conn: Connection, study_id: int, listing: Listing, *, after: Position | None, limit: int
) -> tuple[list[dict[str, Any]], Position | None]:
    """One page of the listing after `after`, and where the next page starts (None: no more).

    NULLs sort last in both directions; ties are broken by id (in the same direction)."""
    stmt, id_column = _listing_stmt(study_id, listing)
    desc = listing.descending
    if listing.sort == "id":
        if after is not None:
            stmt = stmt.where(id_column < after.id if desc else id_column > after.id)
        rows = conn.execute(stmt.order_by(id_column.desc() if desc else id_column).limit(limit + 1)).all()
        page = [dict(row._mapping) for row in rows[:limit]]
        more = len(rows) > limit
    else:
        ids = _sorted_ids(conn, study_id, listing, after, limit + 1)
        more = len(ids) > limit
        wanted = [run_id for _, run_id in ids[:limit]]
        by_id = {}
        if wanted:
            by_id = {row.id: dict(row._mapping) for row in conn.execute(stmt.where(_RUNS.c.id.in_(wanted)))}
        page = [by_id[run_id] for run_id in wanted if run_id in by_id]
    if not more or not page:
        return page, None
    last = page[-1]
    return page, Position(last[listing.sort], int(last["id"]))


def count(conn: Connection, study_id: int, listing: Listing) -> int:
    """How many runs the listing shows. A state alone is its stored count less the excluded runs
    in that state (few, found by the partial index); other views are counted."""
    if listing.state not in (None, EXCLUDED) and listing.filters == RunFilters():
        counts = state_counts(conn, study_id)
        if counts is not None:
            excluded = select(func.count()).select_from(_RUNS.join(_STATES, _STATES.c.run_id == _RUNS.c.id))
            excluded = excluded.where(
                _RUNS.c.study_id == study_id, _RUNS.c.excluded == true(), _STATES.c.state == listing.state
            )
            return int(counts.get(listing.state, 0)) - int(conn.execute(excluded).scalar_one())
    stmt = _filtered(select(func.count()).select_from(_RUNS), study_id, listing.filters)
    if listing.state not in (None, EXCLUDED):
        stmt = stmt.select_from(_RUNS.join(_STATES, _STATES.c.run_id == _RUNS.c.id))
    stmt, _ = _state_filter(stmt, study_id, listing)
    return int(conn.execute(stmt).scalar_one())


def get_run_with_state(conn: Connection, study_id: int, run_id: int) -> dict[str, Any] | None:
    stmt, _ = _listing_stmt(study_id, Listing())
    row = conn.execute(stmt.where(_RUNS.c.id == run_id)).first()
    return None if row is None else dict(row._mapping)


# --- the states table ---------------------------------------------------------------------


def state_mark(conn: Connection, study_id: int) -> tuple[int, int] | None:
    """(fit id, data version) the study's stored states describe, if any."""
    row = conn.execute(select(_MARKS.c.fit_id, _MARKS.c.data_version).where(_MARKS.c.study_id == study_id)).first()
    return None if row is None else (int(row[0]), int(row[1]))


def set_state_mark(conn: Connection, study_id: int, fit_id: int, data_version: int) -> None:
    """Record which fit and data version the study's stored states describe, with their counts."""
    counts = {
        state: int(n)
        for state, n in conn.execute(
            select(_STATES.c.state, func.count()).where(_STATES.c.study_id == study_id).group_by(_STATES.c.state)
        )
    }
    values = {"fit_id": fit_id, "data_version": data_version, "computed_at": utcnow(), "counts": counts}
    stmt = _dialect_insert(conn, RunStateMark).values(study_id=study_id, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=["study_id"], set_=values))


def state_counts(conn: Connection, study_id: int) -> dict[str, int] | None:
    """The stored states' counts per state (as of the last refresh), if any."""
    return conn.execute(select(RunStateMark.counts).where(RunStateMark.study_id == study_id)).scalar_one_or_none()


_STATE_INPUTS = ("id", "n_params", "tokens", "width", "depth", "status", "final_loss")


def state_inputs(conn: Connection, study_id: int, *, missing_only: bool) -> list[tuple[Any, ...]]:
    """What a run's fit state depends on, as rows (id, n_params, tokens, width, depth, status,
    final_loss), for every run of the study (or only for those with no stored state: runs stored
    since the states were computed). Plain tuples: a 100k-run study is read in ~0.3 s."""
    columns = [_RUNS.c[name] for name in _STATE_INPUTS]
    stmt = select(*columns).where(_RUNS.c.study_id == study_id)
    if missing_only:
        stmt = stmt.select_from(_RUNS.outerjoin(_STATES, _STATES.c.run_id == _RUNS.c.id)).where(
            _STATES.c.run_id.is_(None)
        )
    return [tuple(row) for row in conn.execute(stmt.order_by(_RUNS.c.id))]


def excluded_ids(conn: Connection, study_id: int) -> list[int]:
    """The study's excluded runs (the partial index)."""
    stmt = select(_RUNS.c.id).where(_RUNS.c.study_id == study_id, _RUNS.c.excluded == true())
    return [int(run_id) for run_id in conn.execute(stmt).scalars()]


def stored_states(conn: Connection, study_id: int) -> dict[int, str]:
    stmt = select(_STATES.c.run_id, _STATES.c.state).where(_STATES.c.study_id == study_id)
    return {int(run_id): state for run_id, state in conn.execute(stmt)}


def write_states(
    conn: Connection, study_id: int, states: Mapping[int, str], *, remove: Sequence[int] = (), replace: bool = False
) -> None:
    """Store these runs' states (inserting or, with `replace`, updating them) and drop `remove`'s.
    In run id order, so two processes refreshing one study lock rows in one order."""
    for start in range(0, len(remove), _CHUNK):
        conn.execute(delete(_STATES).where(_STATES.c.run_id.in_(list(remove[start : start + _CHUNK]))))
    rows = [(run_id, study_id, states[run_id]) for run_id in sorted(states)]
    if not rows:
        return
    # Plain DB-API executemany (a 100k-run study's first refresh writes 100k rows; SQLAlchemy's
    # per-row statement handling tripled that time). The same SQL on SQLite and PostgreSQL.
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    conflict = "DO UPDATE SET state = excluded.state" if replace else "DO NOTHING"
    sql = f"INSERT INTO run_fit_states (run_id, study_id, state) VALUES ({mark}, {mark}, {mark}) ON CONFLICT (run_id) {conflict}"
    for start in range(0, len(rows), 10_000):
        conn.exec_driver_sql(sql, rows[start : start + 10_000])


# --- counts for listings of studies ------------------------------------------------------------


def run_counts(conn: Connection) -> dict[int, int]:
    """Every study's number of runs, in one query (`GET /v1/studies`)."""
    stmt = select(_RUNS.c.study_id, func.count()).group_by(_RUNS.c.study_id)
    return {int(study_id): int(count) for study_id, count in conn.execute(stmt)}


def latest_fit_ids(conn: Connection) -> dict[int, int]:
    """Every study's newest finished fit id, in one query."""
    fits = cast(Table, Fit.__table__)
    stmt = select(fits.c.study_id, func.max(fits.c.id)).where(fits.c.status == "done").group_by(fits.c.study_id)
    return {int(study_id): int(fit_id) for study_id, fit_id in conn.execute(stmt)}


def parse_position_value(sort: str, value: Any) -> Any:
    """A cursor's sort value back as the column's type (timestamps travel as ISO text)."""
    if sort == "created_at" and isinstance(value, str):
        return datetime.fromisoformat(value)
    return value


__all__ = [
    "EXCLUDED",
    "SORTABLE",
    "STORED_STATES",
    "Listing",
    "Position",
    "count",
    "excluded_ids",
    "get_run_with_state",
    "latest_fit_ids",
    "list_page",
    "parse_position_value",
    "run_counts",
    "set_state_mark",
    "state_counts",
    "state_inputs",
    "state_mark",
    "stored_states",
    "write_states",
]

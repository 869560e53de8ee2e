"""A run's curves (`run_curves`): the loss curve and eval metrics, one row per run and series.

Each row holds a whole series as JSON text ([[x, value], ...] in `x_unit`, "tokens" or
"steps"): series are written whole with their run and read whole for one run's page. How
long a series may be is the service's business (`service.run_curves` downsamples before
storing); these queries store what they are given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Connection, Table, and_, delete, insert, select

from store.models import RunCurve

LOSS_SERIES = "loss"  # the contract's `loss_curve`
_TABLE = cast(Table, RunCurve.__table__)
_CHUNK = 900  # ids per IN (...) (SQLite's bound-parameter limit)


def curve_rows(run_id: int, study_id: int, run: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The run_curves rows of one stored run: the service's prepared `curve_rows`, or (a caller
    that passes a bare run dict) its `loss_curve` as the loss series, in the unit its extra names."""
    prepared = run.get("curve_rows")
    if prepared is not None:
        return [{**row, "run_id": run_id, "study_id": study_id} for row in prepared]
    curve = run.get("loss_curve")
    if not curve:
        return []
    extra = run.get("extra") or {}
    unit = "steps" if extra.get("loss_curve_x") == "steps" else "tokens"
    points = [[float(x), float(y)] for x, y in curve]
    return [
        {
            "run_id": run_id,
            "study_id": study_id,
            "series": LOSS_SERIES,
            "x_unit": unit,
            "n_points": len(points),
            "points": points,
        }
    ]


def insert_curves(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        conn.execute(insert(_TABLE), list(rows))


def delete_curves(conn: Connection, run_ids: Iterable[int]) -> None:
    ids = list(run_ids)
    for start in range(0, len(ids), _CHUNK):
        conn.execute(delete(_TABLE).where(_TABLE.c.run_id.in_(ids[start : start + _CHUNK])))


def delete_study_curves(conn: Connection, study_id: int) -> None:
    conn.execute(delete(_TABLE).where(_TABLE.c.study_id == study_id))


def run_curves(conn: Connection, run_id: int) -> list[dict[str, Any]]:
    """Every series of one run: {series, x_unit, n_points, points}, the loss curve first."""
    c = _TABLE.c
    rows = conn.execute(select(c.series, c.x_unit, c.n_points, c.points).where(c.run_id == run_id)).all()
    out = [dict(row._mapping) for row in rows]
    return sorted(out, key=lambda row: (row["series"] != LOSS_SERIES, row["series"]))


def other_series_between(conn: Connection, study_id: int, first_id: int, last_id: int) -> dict[int, dict[str, Any]]:
    """The series other than the loss curve of the study's runs with ids in [first_id, last_id]:
    {run_id: {series: points}} (one range of the primary key: the export's per-page read)."""
    c = _TABLE.c
    stmt = select(c.run_id, c.series, c.points).where(
        c.run_id >= first_id, c.run_id <= last_id, c.study_id == study_id, c.series != LOSS_SERIES
    )
    out: dict[int, dict[str, Any]] = {}
    for run_id, series, points in conn.execute(stmt):
        out.setdefault(run_id, {})[series] = points
    return out


def other_series(conn: Connection, run_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Each run's series other than the loss curve: {run_id: {series: points}}."""
    c = _TABLE.c
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(run_ids), _CHUNK):
        chunk = list(run_ids[start : start + _CHUNK])
        stmt = select(c.run_id, c.series, c.points).where(c.run_id.in_(chunk), c.series != LOSS_SERIES)
        for run_id, series, points in conn.execute(stmt):
            out.setdefault(run_id, {})[series] = points
    return out


def loss_join(runs: Table) -> tuple[Any, Any]:
    """(the runs table left-joined to each run's loss series, that series' `points` column):
    how a listing returns the contract's `loss_curve` beside the run's columns."""
    loss = _TABLE.alias("loss_curve")
    joined = runs.outerjoin(loss, and_(loss.c.run_id == runs.c.id, loss.c.series == LOSS_SERIES))
    return joined, loss.c.points

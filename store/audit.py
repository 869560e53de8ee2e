"""The audit log beyond exclusions and deletions: submissions and imports (who stored how many
runs, when, from where), a run's own trail, and the totals `/metrics` reports from it.

Actions: "submit" (a `POST …/runs` that stored or replaced runs), "import_<source>" (an
import: csv, optuna, mlflow, wandb), besides "exclude", "include", "superseded",
"delete_submission" and "delete_study" (`store.queries.add_audit`). An import writes its
record with its first batch and adds each later batch's count in that batch's transaction, so
the record always says what is stored.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, insert, or_, select, update

from store.models import AuditEntry, Submission, utcnow

SUBMIT = "submit"
IMPORT_PREFIX = "import_"
UNDO = "delete_submission"


def insert_audit(
    conn: Connection,
    *,
    actor: str | None,
    action: str,
    study: str,
    submission_id: int | None = None,
    count: int | None = None,
    reason: str | None = None,
) -> int:
    """A new audit record; its id."""
    stmt = insert(AuditEntry).values(
        created_at=utcnow(),
        actor=actor,
        action=action,
        study=study,
        submission_id=submission_id,
        count=count,
        reason=reason,
    )
    return int(conn.execute(stmt.returning(AuditEntry.id)).scalar_one())


def add_to_count(conn: Connection, audit_id: int, count: int) -> None:
    conn.execute(update(AuditEntry).where(AuditEntry.id == audit_id).values(count=AuditEntry.count + count))


def run_trail(
    conn: Connection, study: str, run_id: int, submission_id: int | None, limit: int = 200
) -> list[dict[str, Any]]:
    """The audit records about one run: its own (exclude, include, superseded) and its
    submission's (submit or import, undo), oldest first."""
    about = AuditEntry.run_id == run_id
    if submission_id is not None:
        about = or_(about, (AuditEntry.submission_id == submission_id) & AuditEntry.run_id.is_(None))
    stmt = select(AuditEntry.__table__).where(AuditEntry.study == study, about).order_by(AuditEntry.id).limit(limit)
    return [dict(row._mapping) for row in conn.execute(stmt)]


def undo_record(conn: Connection, study: str, submission_id: int) -> dict[str, Any] | None:
    """The record of an earlier undo of this submission, if it was undone."""
    stmt = (
        select(AuditEntry.__table__)
        .where(AuditEntry.study == study, AuditEntry.action == UNDO, AuditEntry.submission_id == submission_id)
        .order_by(AuditEntry.id)
        .limit(1)
    )
    row = conn.execute(stmt).first()
    return None if row is None else dict(row._mapping)


def get_submission(conn: Connection, study_id: int, submission_id: int) -> dict[str, Any] | None:
    stmt = select(Submission.__table__).where(Submission.study_id == study_id, Submission.id == submission_id)
    row = conn.execute(stmt).first()
    return None if row is None else dict(row._mapping)


def ingested_totals(conn: Connection) -> dict[str, int]:
    """Runs stored per source over the whole audit log ({"http": n, "csv": m, …}): the same
    total whichever process (server worker or `hpscale import`) stored them."""
    action = AuditEntry.action
    stmt = (
        select(action, func.coalesce(func.sum(AuditEntry.count), 0))
        .where(or_(action == SUBMIT, action.like(IMPORT_PREFIX + "%")))
        .group_by(action)
    )
    totals: dict[str, int] = {}
    for name, count in conn.execute(stmt):
        source = "http" if name == SUBMIT else name.removeprefix(IMPORT_PREFIX)
        totals[source] = totals.get(source, 0) + int(count or 0)
    return totals

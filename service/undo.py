"""Exclusion and undo (contract 1.1): exclude/include a run, delete a submission or a study.

Each changes what fits read, so each changes the study's `data_version` (in the same
transaction as the change), and each leaves an audit record of who, when, what and why
(`store.models.AuditEntry`, kept by the study's name so that a deleted study's record
stays). Excluded runs stay stored and listed; the fit-input readers of `store.queries` leave them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.errors import InvalidInput, RunNotFound, SubmissionNotFound, SubmissionUndone, field_detail
from service.studies import get_study
from store import audit, queries
from store.db import Connection, Engine, read_connection, run_in_transaction

__all__ = [
    "MAX_REASON_LENGTH",
    "AuditRecord",
    "audit_log",
    "delete_study",
    "delete_submission",
    "set_excluded",
]

MAX_REASON_LENGTH = 1000


@dataclass(frozen=True)
class AuditRecord:
    """One change to what a study's fits see: who (token name), when, what, why."""

    id: int
    created_at: datetime
    actor: str | None
    # "submit" | "import_<source>" | "exclude" | "include" | "superseded" | "delete_submission" | "delete_study"
    action: str
    study: str
    run_id: int | None
    submission_id: int | None
    count: int | None
    reason: str | None


def _check_reason(reason: str | None, *, required: bool) -> str | None:
    if reason is not None:
        reason = reason.strip()
    if required and not reason:
        message = "say why the run is excluded (it is shown with the run and kept in the audit log)"
        raise InvalidInput(f"reason: {message}", [field_detail("reason", message)])
    if reason and (len(reason) > MAX_REASON_LENGTH or "\x00" in reason):
        message = f"at most {MAX_REASON_LENGTH} characters, no NUL bytes"
        raise InvalidInput(f"reason: {message}", [field_detail("reason", message)])
    return reason or None


def set_excluded(
    engine: Engine, study_name: str, run_id: int, *, excluded: bool, reason: str | None, actor: str | None
) -> dict[str, Any]:
    """Exclude (a reason is required) or include a run; the run as stored afterwards."""
    reason = _check_reason(reason, required=excluded)

    def change(conn: Connection) -> dict[str, Any]:
        study = get_study(conn, study_name)
        if not queries.set_run_excluded(conn, study.id, run_id, excluded, reason):
            raise RunNotFound(f"study '{study_name}' has no run {run_id}")
        queries.add_audit(
            conn,
            actor=actor,
            action="exclude" if excluded else "include",
            study=study.name,
            run_id=run_id,
            reason=reason,
        )
        run = queries.get_run(conn, study.id, run_id)
        assert run is not None
        return run

    return run_in_transaction(engine, change)


def delete_submission(
    engine: Engine, study_name: str, submission_id: int, *, actor: str | None, reason: str | None = None
) -> int:
    """Delete every run the submission stored (not runs it met as duplicates); how many."""
    reason = _check_reason(reason, required=False)

    def change(conn: Connection) -> int:
        study = get_study(conn, study_name)
        if not queries.submission_exists(conn, study.id, submission_id):
            raise SubmissionNotFound(f"study '{study_name}' has no submission {submission_id}")
        done = audit.undo_record(conn, study.name, submission_id)
        if done is not None:
            raise SubmissionUndone(
                f"submission {submission_id} of study '{study_name}' was already undone on "
                f"{done['created_at']:%Y-%m-%d %H:%M} UTC by {done['actor'] or 'an unnamed token'} "
                f"({done['count'] or 0} runs deleted then); nothing to do"
            )
        deleted = queries.delete_submission_runs(conn, study.id, submission_id)
        queries.add_audit(
            conn,
            actor=actor,
            action="delete_submission",
            study=study.name,
            submission_id=submission_id,
            count=deleted,
            reason=reason,
        )
        return deleted

    return run_in_transaction(engine, change)


def delete_study(engine: Engine, study_name: str, *, actor: str | None, reason: str | None = None) -> int:
    """Delete the study with its runs and fits; how many runs went."""
    reason = _check_reason(reason, required=False)

    def change(conn: Connection) -> int:
        study = get_study(conn, study_name)
        count = queries.study_run_count(conn, study.id)
        queries.delete_study(conn, study.id)
        queries.add_audit(conn, actor=actor, action="delete_study", study=study.name, count=count, reason=reason)
        return count

    return run_in_transaction(engine, change)


def audit_log(engine: Engine, study_name: str | None = None, limit: int = 1000) -> list[AuditRecord]:
    """The newest audit records first (of one study, deleted or not, if named)."""
    with read_connection(engine) as conn:
        return [AuditRecord(**row) for row in queries.list_audit(conn, study_name, limit)]

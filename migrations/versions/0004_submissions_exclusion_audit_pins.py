"""Undo and exclusion (contract 1.1), an audit log, and pinned fits.

- `submissions`: one row per `POST .../runs` or import; each run records its
  `submission_id`, so a bad batch can be deleted as a whole.
- `runs.excluded` / `runs.excluded_reason`: an excluded run stays stored and listed, but
  no fit reads it. Existing runs are not excluded.
- `audit_log`: who did what to which study, when and why (exclude, include, delete a
  submission, delete a study). It keeps the study's name, not a foreign key, so the record
  of a deleted study outlives it.
- `fits.pinned`: a fit whose id was handed to a client; pruning old fits keeps it, so a
  launcher can ask for "the answer I launched with" later.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "submissions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=True),
    )
    op.create_index("ix_submissions_study_id_id", "submissions", ["study_id", "id"])
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("submission_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("excluded", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("excluded_reason", sa.Text(), nullable=True))
    op.create_index("ix_runs_study_id_submission_id", "runs", ["study_id", "submission_id"])
    with op.batch_alter_table("fits") as batch:
        batch.add_column(sa.Column("pinned", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=True),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("study", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("submission_id", sa.Integer(), nullable=True),
        sa.Column("count", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
    )
    op.create_index("ix_audit_log_study_id", "audit_log", ["study", "id"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_study_id", table_name="audit_log")
    op.drop_table("audit_log")
    with op.batch_alter_table("fits") as batch:
        batch.drop_column("pinned")
    op.drop_index("ix_runs_study_id_submission_id", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("excluded_reason")
        batch.drop_column("excluded")
        batch.drop_column("submission_id")
    op.drop_index("ix_submissions_study_id_id", table_name="submissions")
    op.drop_table("submissions")

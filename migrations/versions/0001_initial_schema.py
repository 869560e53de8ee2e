"""Initial schema: studies, runs, fits, api tokens.

Runs carry a unique (study_id, run_key) so that retried submissions are idempotent and
concurrent writers cannot duplicate a run; the (study_id, <filter>, id) indexes serve
the keyset-paged, filtered run listings. Fits are unique per (study, data_version,
bootstrap) so that one process computes a stale fit while the others wait for it.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(length=64), nullable=False, unique=True),
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False, unique=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("last_used_at", TIMESTAMP, nullable=True),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
    )
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(length=64), nullable=False, unique=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("parameterization", sa.String(length=16), nullable=False),
        sa.Column("optimizer", sa.String(length=64), nullable=False),
        sa.Column("base_width", sa.Integer(), nullable=True),
        sa.Column("base_depth", sa.Integer(), nullable=True),
        sa.Column("seq_len", sa.Integer(), nullable=True),
        sa.Column("data_version", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=True),
    )
    op.create_table(
        "fits",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
        sa.Column("data_version", sa.BigInteger(), nullable=False),
        sa.Column("bootstrap", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("n_runs", sa.Integer(), nullable=False),
        # JSON as text: fit states hold NaN, which PostgreSQL's json type refuses.
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("created_by", sa.String(length=64), nullable=True),
        sa.UniqueConstraint("study_id", "data_version", "bootstrap", name="uq_fits_study_id_data_version_bootstrap"),
    )
    op.create_index("ix_fits_study_id_id", "fits", ["study_id", "id"])
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
        sa.Column("run_key", sa.String(length=128), nullable=True),
        sa.Column("n_params", sa.Double(), nullable=False),
        sa.Column("tokens", sa.Double(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("depth", sa.Integer(), nullable=True),
        sa.Column("seq_len", sa.Integer(), nullable=True),
        sa.Column("learning_rate", sa.Double(), nullable=False),
        sa.Column("batch_size", sa.BigInteger(), nullable=False),
        sa.Column("weight_decay", sa.Double(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("final_loss", sa.Double(), nullable=True),
        sa.Column("loss_curve", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("extra", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=True),
        sa.UniqueConstraint("study_id", "run_key", name="uq_runs_study_id_run_key"),
    )
    op.create_index("ix_runs_study_id_id", "runs", ["study_id", "id"])
    op.create_index("ix_runs_study_id_status_id", "runs", ["study_id", "status", "id"])
    op.create_index("ix_runs_study_id_width_id", "runs", ["study_id", "width", "id"])
    op.create_index("ix_runs_study_id_depth_id", "runs", ["study_id", "depth", "id"])
    op.create_index("ix_runs_study_id_created_by_id", "runs", ["study_id", "created_by", "id"])


def downgrade() -> None:
    op.drop_table("runs")
    op.drop_table("fits")
    op.drop_table("studies")
    op.drop_table("api_tokens")

"""Fit outcomes recorded once, fit owners, and fit leases on the database's clock (issue 18).

- `fits.owner`: the token of the process computing a running fit; renewing, finishing and
  dropping a fit check it, so a process that lost its claim cannot overwrite another's.
- `fits.error_code`: why a failed fit failed ("insufficient_data" or "fit_failed"), so a
  request for that data version answers at once with the right status.
- `fit_leases`: one row per study being fitted where there are no advisory locks (SQLite):
  owner token and expiry in seconds on the database's clock, never a host's.
- SQLite: `fits` gets AUTOINCREMENT, so a fit id handed to a client is never reused.

Revision ID: 0005_fit_outcomes
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_fit_outcomes"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # On SQLite the table is rebuilt with AUTOINCREMENT: the id of a deleted fit (pruned,
    # or replaced after an engine upgrade) is never given to another fit.
    with op.batch_alter_table("fits", recreate="always", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("owner", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("error_code", sa.String(length=32), nullable=True))
    # A failed fit of the old engine said only InsufficientData.
    op.execute("UPDATE fits SET error_code = 'insufficient_data' WHERE status = 'failed'")
    op.create_table(
        "fit_leases",
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("fit_leases")
    with op.batch_alter_table("fits") as batch:
        batch.drop_column("error_code")
        batch.drop_column("owner")

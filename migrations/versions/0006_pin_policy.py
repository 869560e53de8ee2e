"""Pins expire: fits.pinned_at, and a record of pruned fits (issue 19).

- `fits.pinned_at`: when an answer last used a pinned fit. A study keeps its newest fits,
  and besides them only the pinned fits used within the last 30 days, at most 50, least
  recently used pruned first (`store.queries.prune_fits`). Fits pinned before this
  revision count as used now, so none is pruned by the upgrade itself.
- `expired_fits`: the id of each pruned fit (and whether it was pinned), so that asking for
  it answers 410 Gone with the policy rather than 404; at most 10,000 per study.

Revision ID: 0006_pin_policy
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0006_pin_policy"
down_revision: str | None = "0005_fit_outcomes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("fits") as batch:
        batch.add_column(sa.Column("pinned_at", sa.DateTime(timezone=True), nullable=True))
    now = datetime.now(UTC)
    if op.get_bind().dialect.name == "sqlite":
        now = now.replace(tzinfo=None)  # SQLite stores UTC without a zone (store.models.UTCDateTime)
    fits = sa.table("fits", sa.column("pinned", sa.Boolean()), sa.column("pinned_at", sa.DateTime(timezone=True)))
    op.execute(fits.update().where(fits.c.pinned == sa.true()).values(pinned_at=now))
    op.create_table(
        "expired_fits",
        sa.Column("fit_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
        sa.Column("pinned", sa.Boolean(), nullable=False),
        sa.Column("expired_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_expired_fits_study_id_fit_id", "expired_fits", ["study_id", "fit_id"])


def downgrade() -> None:
    op.drop_index("ix_expired_fits_study_id_fit_id", table_name="expired_fits")
    op.drop_table("expired_fits")
    with op.batch_alter_table("fits") as batch:
        batch.drop_column("pinned_at")

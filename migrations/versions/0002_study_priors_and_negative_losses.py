"""Studies: `priors` ("published" | "none") and `loss_can_be_negative` (contract 1.1).

Both columns are NOT NULL with a server default, so existing studies keep their meaning:
published priors, and a final loss that must be positive.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("priors", sa.String(length=16), nullable=False, server_default="published"))
        batch.add_column(sa.Column("loss_can_be_negative", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("loss_can_be_negative")
        batch.drop_column("priors")

"""Fits: drop the stored fits of the first fitting engine; they are recomputed on demand.

Fits are derived data. The second engine (laws as a model average with published priors,
robust per-scale optima) stores a different state (`state.version` 2) and would answer
differently from the same runs, so an old fit must not be served as if it were current:
the next request for a study's fit computes a new one from its runs. Runs, studies and
tokens are untouched. Downgrading cannot bring the old fits back; it does nothing.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("DELETE FROM fits")


def downgrade() -> None:
    pass

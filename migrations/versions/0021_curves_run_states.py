"""Runs as people look at them (issue 21): curves in their own table, fit states for server-side
filters, weight decay that may be unknown.

- `run_curves`: one row per run and series (`loss`, eval metrics), the series as JSON text.
  Every stored `runs.loss_curve` moves there as the `loss` series (x in tokens, or in steps
  where the run's extra says `loss_curve_x: steps`), then the column goes: listings,
  exports and fits no longer drag curves through the runs table.
- `run_fit_states` and `run_state_marks`: how the latest fit used each run, kept so that
  `GET …/runs?state=…` pages on the server (derived data, filled on first use).
- `runs.weight_decay` may be NULL: a source that never gave a weight decay no longer reads
  as a measured 0.
- Two indexes on `runs`: (study_id, final_loss, id) for listings sorted by loss, and a partial
  (study_id, id) of the excluded runs.

The new tables have no foreign key to `runs`: on SQLite, altering `runs` later (Alembic's
batch mode copies and drops the table) would cascade a drop into them. The queries that
delete runs delete their curves and states too.

Revision ID: 0021_curves_run_states
Revises: 0006_pin_policy
Create Date: 2026-12-03
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021_curves_run_states"
down_revision: str | None = "0006_pin_policy"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every stored loss curve becomes a run_curves row in SQL (INSERT … SELECT: nothing of a
# million-run study's curves passes through Python memory).
_COPY_CURVES = {
    "sqlite": """
        INSERT INTO run_curves (run_id, series, study_id, x_unit, n_points, points)
        SELECT id, 'loss', study_id,
               CASE WHEN json_extract(extra, '$.loss_curve_x') = 'steps' THEN 'steps' ELSE 'tokens' END,
               json_array_length(loss_curve), json(loss_curve)
        FROM runs WHERE loss_curve IS NOT NULL AND json_type(loss_curve) = 'array' AND json_array_length(loss_curve) > 0
    """,
    "postgresql": """
        INSERT INTO run_curves (run_id, series, study_id, x_unit, n_points, points)
        SELECT id, 'loss', study_id,
               CASE WHEN (extra::jsonb ->> 'loss_curve_x') = 'steps' THEN 'steps' ELSE 'tokens' END,
               json_array_length(loss_curve), loss_curve::text
        FROM runs WHERE loss_curve IS NOT NULL AND json_typeof(loss_curve) = 'array' AND json_array_length(loss_curve) > 0
    """,
}


def upgrade() -> None:
    op.create_table(
        "run_curves",
        sa.Column("run_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("series", sa.String(length=64), primary_key=True),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("x_unit", sa.String(length=8), nullable=False),
        sa.Column("n_points", sa.Integer(), nullable=False),
        sa.Column("points", sa.Text(), nullable=False),
    )
    op.create_index("ix_run_curves_study_id", "run_curves", ["study_id"])
    op.execute(sa.text(_COPY_CURVES[op.get_bind().dialect.name]))
    with op.batch_alter_table("runs") as batch:
        batch.alter_column("weight_decay", existing_type=sa.Double(), nullable=True)
        batch.drop_column("loss_curve")
    op.create_index("ix_runs_study_id_final_loss_id", "runs", ["study_id", "final_loss", "id"])
    op.create_index(
        "ix_runs_study_id_excluded_id",
        "runs",
        ["study_id", "id"],
        sqlite_where=sa.text("excluded = 1"),  # as SQLAlchemy writes `excluded == true()` there
        postgresql_where=sa.text("excluded"),
    )
    op.create_table(
        "run_fit_states",
        sa.Column("run_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
    )
    op.create_index("ix_run_fit_states_study_id_state_run_id", "run_fit_states", ["study_id", "state", "run_id"])
    op.create_table(
        "run_state_marks",
        sa.Column("study_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("fit_id", sa.Integer(), nullable=False),
        sa.Column("data_version", sa.BigInteger(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("counts", sa.Text(), nullable=True),
    )


def downgrade() -> None:
    op.drop_index("ix_runs_study_id_excluded_id", table_name="runs")
    op.drop_index("ix_runs_study_id_final_loss_id", table_name="runs")
    op.drop_table("run_state_marks")
    op.drop_index("ix_run_fit_states_study_id_state_run_id", table_name="run_fit_states")
    op.drop_table("run_fit_states")
    bind = op.get_bind()
    loss = bind.execute(sa.text("SELECT run_id, points FROM run_curves WHERE series = 'loss'")).all()
    op.drop_index("ix_run_curves_study_id", table_name="run_curves")
    op.drop_table("run_curves")
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("loss_curve", sa.JSON(none_as_null=True), nullable=True))
    runs = sa.table("runs", sa.column("id", sa.Integer()), sa.column("loss_curve", sa.JSON()))
    for run_id, points in loss:
        bind.execute(runs.update().where(runs.c.id == run_id).values(loss_curve=json.loads(points)))
    bind.execute(sa.text("UPDATE runs SET weight_decay = 0 WHERE weight_decay IS NULL"))
    with op.batch_alter_table("runs") as batch:
        batch.alter_column("weight_decay", existing_type=sa.Double(), nullable=False)

"""SQLAlchemy 2.0 models: studies, their runs, fits, and API tokens.

A run's `extra` is a JSON column. Its curves (the loss curve and any eval metrics) live in
`run_curves`, one row per run and series holding the whole series as JSON text: a curve is
read and written whole and never queried point by point, and keeping it out of `runs`
keeps the listing, the export and a fit's scan of a million runs narrow.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class FloatJSON(TypeDecorator[Any]):
    """JSON kept as text so that NaN and infinities round-trip (fit states use NaN for
    "unknown"); PostgreSQL's json type rejects them. Never queried inside, only stored whole."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        return None if value is None else json.dumps(value, separators=(",", ":"))

    def process_result_value(self, value: str | None, dialect: Any) -> Any:
        return None if value is None else json.loads(value)


class Base(DeclarativeBase):
    pass


class Study(Base):
    """One model family + optimizer + parameterization + data recipe; its runs are comparable."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    parameterization: Mapped[str] = mapped_column(String(16), default="sp")
    optimizer: Mapped[str] = mapped_column(String(64), default="adamw")
    base_width: Mapped[int | None] = mapped_column(Integer)
    base_depth: Mapped[int | None] = mapped_column(Integer)
    seq_len: Mapped[int | None] = mapped_column(Integer)
    # "published": the laws start from the published results for the parameterization;
    # "none": the study's data alone.
    priors: Mapped[str] = mapped_column(String(16), default="published", server_default="published")
    # Accept final_loss ≤ 0 (a loss that is not cross-entropy-like).
    loss_can_be_negative: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Bumped in the same transaction as every insert or delete of the study's runs, so a
    # stored fit knows whether it still describes the data.
    data_version: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(64))


class Run(Base):
    """One proxy training run: its scale, hyperparameters and outcome (fields of the HTTP contract)."""

    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("study_id", "run_key", name="uq_runs_study_id_run_key"),
        # Keyset paging walks (study_id, id); the filtered listings get their own prefixes.
        Index("ix_runs_study_id_id", "study_id", "id"),
        Index("ix_runs_study_id_status_id", "study_id", "status", "id"),
        Index("ix_runs_study_id_width_id", "study_id", "width", "id"),
        Index("ix_runs_study_id_depth_id", "study_id", "depth", "id"),
        Index("ix_runs_study_id_created_by_id", "study_id", "created_by", "id"),
        Index("ix_runs_study_id_submission_id", "study_id", "submission_id"),
        # The dashboard's "best (or worst) runs first": a sort by final loss walks this index.
        Index("ix_runs_study_id_final_loss_id", "study_id", "final_loss", "id"),
        # Excluded runs are few: a partial index finds them without a scan (`?state=excluded`).
        # SQLite uses a partial index only for a query whose WHERE names its predicate as written:
        # `excluded = 1` is how `Run.excluded == true()` reads there (PostgreSQL reads it as `excluded`).
        Index(
            "ix_runs_study_id_excluded_id",
            "study_id",
            "id",
            sqlite_where=text("excluded = 1"),
            postgresql_where=text("excluded"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    run_key: Mapped[str | None] = mapped_column(String(128))
    n_params: Mapped[float] = mapped_column(Double)
    tokens: Mapped[float] = mapped_column(Double)
    width: Mapped[int | None] = mapped_column(Integer)
    depth: Mapped[int | None] = mapped_column(Integer)
    seq_len: Mapped[int | None] = mapped_column(Integer)
    learning_rate: Mapped[float] = mapped_column(Double)
    batch_size: Mapped[int] = mapped_column(BigInteger)
    # None: the source never said (an import without a weight-decay column); a fit reads it as 0.
    weight_decay: Mapped[float | None] = mapped_column(Double, default=0.0)
    status: Mapped[str] = mapped_column(String(16), default="completed")
    final_loss: Mapped[float | None] = mapped_column(Double)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(64))
    # The submission (POST or import) that stored the run: deleting it undoes the batch.
    submission_id: Mapped[int | None] = mapped_column(Integer)
    # An excluded run stays stored and listed, but no fit reads it (contract 1.1).
    excluded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    excluded_reason: Mapped[str | None] = mapped_column(Text)


class RunCurve(Base):
    """One series of a run's curves: `loss` (the contract's `loss_curve`) or an eval metric.

    `points` is the whole series, [[x, value], ...] in `x_unit` ("tokens" or "steps"),
    downsampled by the service to its stored cap; `n_points` is how many were submitted.
    No foreign key to `runs` on purpose: SQLite rebuilds a table to alter it (Alembic's batch
    mode), and dropping the old `runs` would cascade into its children. The queries that
    delete runs delete their curves too."""

    __tablename__ = "run_curves"
    __table_args__ = (Index("ix_run_curves_study_id", "study_id"),)

    run_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    series: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_id: Mapped[int] = mapped_column(Integer)
    x_unit: Mapped[str] = mapped_column(String(8), default="tokens")
    n_points: Mapped[int] = mapped_column(Integer)
    points: Mapped[list[list[float]]] = mapped_column(FloatJSON)


class RunFitState(Base):
    """How the study's latest fit used a run (near_optimal, used, diverged, outlier, failed),
    kept so that a listing can filter and page by it on the server. Exclusion is not kept
    here (it is the run's own `excluded`). Derived data, rewritten when a newer fit is
    looked at (`service.run_states`); no foreign key, for the reason given at RunCurve."""

    __tablename__ = "run_fit_states"
    __table_args__ = (Index("ix_run_fit_states_study_id_state_run_id", "study_id", "state", "run_id"),)

    run_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    study_id: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))


class RunStateMark(Base):
    """Which fit (and data version) a study's `run_fit_states` describe."""

    __tablename__ = "run_state_marks"

    study_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    fit_id: Mapped[int] = mapped_column(Integer)
    data_version: Mapped[int] = mapped_column(BigInteger)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # {state: runs} of the stored states when they were computed: a state filter's total without
    # counting tens of thousands of index entries on every first page.
    counts: Mapped[dict[str, int] | None] = mapped_column(FloatJSON)


class Submission(Base):
    """One `POST .../runs` or import: the unit a bad batch is undone by."""

    __tablename__ = "submissions"
    __table_args__ = (Index("ix_submissions_study_id_id", "study_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    source: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(64))


class AuditEntry(Base):
    """Who changed what a study's fits see, when and why (exclude, include, undo, delete).

    Keyed by the study's name, not a foreign key, so the record of a deleted study stays."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_study_id", "study", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    study: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[int | None] = mapped_column(Integer)
    submission_id: Mapped[int | None] = mapped_column(Integer)
    count: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)


class Fit(Base):
    """A fit of a study's laws, valid for the `data_version` of the runs it read.

    `status`: "running" while one process computes it (`owner` is that process's token),
    then "done", or "failed" when the engine refused or failed on those runs (`error_code`:
    "insufficient_data" or "fit_failed", `error`: why) — recorded once, so requests for that
    data version answer at once and nothing refits until the runs change; "stale" when its
    stored state predates the engine (it is refitted). The unique (study_id, data_version,
    bootstrap) row is each fit's identity across processes.
    """

    __tablename__ = "fits"
    __table_args__ = (
        UniqueConstraint("study_id", "data_version", "bootstrap", name="uq_fits_study_id_data_version_bootstrap"),
        Index("ix_fits_study_id_id", "study_id", "id"),
        # A fit id handed to a client names that result forever: SQLite must not reuse the id
        # of a deleted fit (PostgreSQL's sequences never do).
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    data_version: Mapped[int] = mapped_column(BigInteger)
    bootstrap: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="running")
    n_runs: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(FloatJSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_by: Mapped[str | None] = mapped_column(String(64))
    # Its id was handed to a client (a recommendation): pruning old fits keeps it while the
    # pin policy does (store.queries.prune_fits); pinned_at is when an answer last used it.
    pinned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    pinned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The token of the process computing a running fit: only it may renew, finish or drop it.
    owner: Mapped[str | None] = mapped_column(String(64))
    error_code: Mapped[str | None] = mapped_column(String(32))


class ExpiredFit(Base):
    """A fit that pruning removed: asking for it by id is 410 Gone (it existed), not 404."""

    __tablename__ = "expired_fits"
    __table_args__ = (Index("ix_expired_fits_study_id_fit_id", "study_id", "fit_id"),)

    fit_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    pinned: Mapped[bool] = mapped_column(Boolean, default=False)
    expired_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class FitLease(Base):
    """Who fits a study now, where no advisory lock exists (SQLite): an owner token and an
    expiry on the database's own clock (seconds since the epoch), renewed by the owner's
    heartbeat. PostgreSQL uses a session-level advisory lock instead and never this table."""

    __tablename__ = "fit_leases"

    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[float] = mapped_column(Double)


class ApiToken(Base):
    """A bearer token: only its SHA-256 is stored; the token itself is shown once at creation."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(8))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

"""Who fits a study now: one lock per study, safe across processes and hosts (issue 18).

- PostgreSQL: a session-level advisory lock, `pg_try_advisory_lock(ADVISORY_NAMESPACE,
  study_id)`, held by a connection of the fitting process itself. The server releases it the
  moment that connection ends — the process exits, is killed, or loses its network — so no
  clock, heartbeat or expiry is involved, and another process can fit the study at once.
- SQLite (one host): a row of `fit_leases` with the owner's token and an expiry on the
  database's own clock, renewed by the owner's heartbeat every HEARTBEAT_SECONDS; a lease
  not renewed for LEASE_SECONDS belongs to a process that died. Renewing and releasing
  check the owner token; no host's wall clock ever decides.

`try_lock` gives a `StudyLock` or None (someone else holds it); `is_locked` tells whether
anyone does. Only SQL lives here; what a fit does under the lock is `service.fits`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy import Connection, Double, Engine, delete, literal_column, select, text, update
from sqlalchemy.dialects import sqlite

from store.db import run_in_transaction, storage_errors
from store.models import FitLease

# The first key of the study locks ('hpsf'); the migration lock (migrations/env.py) uses the
# one-key form, so the two never meet.
ADVISORY_NAMESPACE = 0x68707366
HEARTBEAT_SECONDS = 2.0
LEASE_SECONDS = 10.0

log = logging.getLogger("hpscale")


def _is_postgresql(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "postgresql"


def database_clock(conn: Connection) -> float:
    """Seconds since the epoch by the database's clock (the same for every process using it)."""
    return float(conn.execute(select(_clock_sql(conn))).scalar_one())


def _clock_sql(conn: Connection) -> Any:
    """The database's clock as a SQL expression (seconds since the epoch)."""
    if _is_postgresql(conn):
        return literal_column("extract(epoch from clock_timestamp())", Double)
    return literal_column("((julianday('now') - 2440587.5) * 86400.0)", Double)


class StudyLock:
    """A held fit lock of one study. `lost` turns True once the holder knows it no longer has it."""

    owner: str
    study_id: int

    @property
    def lost(self) -> bool:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> StudyLock:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


class AdvisoryLock(StudyLock):
    """PostgreSQL: held by `conn` (autocommit, kept out of the pool while held)."""

    def __init__(self, conn: Connection, study_id: int, owner: str) -> None:
        self._conn: Connection | None = conn
        self.study_id = study_id
        self.owner = owner

    @property
    def lost(self) -> bool:
        if self._conn is None:
            return True
        try:
            self._conn.execute(text("SELECT 1"))
            return False
        except Exception:  # noqa: BLE001 - a broken connection has released the lock
            return True

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(text("SELECT pg_advisory_unlock(:ns, :sid)"), {"ns": ADVISORY_NAMESPACE, "sid": self.study_id})
            conn.close()
        except Exception:  # noqa: BLE001 - never give a connection that may hold the lock back to the pool
            log.warning("study %s: could not unlock; closing the connection releases it", self.study_id)
            conn.invalidate()
            conn.close()


class LeaseLock(StudyLock):
    """SQLite: a `fit_leases` row, renewed from a daemon thread while the lock is held."""

    def __init__(self, engine: Engine, study_id: int, owner: str) -> None:
        self._engine = engine
        self.study_id = study_id
        self.owner = owner
        self._lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"hpscale-lease-{study_id}", daemon=True)
        self._thread.start()

    @property
    def lost(self) -> bool:
        return self._lost

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                if not run_in_transaction(self._engine, lambda conn: renew_lease(conn, self.study_id, self.owner)):
                    self._lost = True  # released or taken over: this holder must not write
                    return
            except Exception:  # the database may come back before the lease runs out
                log.warning("study %s: lease heartbeat failed", self.study_id, exc_info=True)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        try:
            run_in_transaction(self._engine, lambda conn: release_lease(conn, self.study_id, self.owner), attempts=3)
        except Exception:  # noqa: BLE001 - then the lease runs out instead
            log.warning("study %s: could not release the lease; it expires in %ss", self.study_id, LEASE_SECONDS)


def try_lock(engine: Engine, study_id: int, owner: str) -> StudyLock | None:
    """Take the study's fit lock for `owner`, or None if another holder has it (never waits)."""
    if _is_postgresql(engine):
        with storage_errors():
            conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            with storage_errors():
                got = conn.execute(
                    text("SELECT pg_try_advisory_lock(:ns, :sid)"), {"ns": ADVISORY_NAMESPACE, "sid": study_id}
                ).scalar_one()
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            return None
        return AdvisoryLock(conn, study_id, owner)
    if run_in_transaction(engine, lambda conn: acquire_lease(conn, study_id, owner)):
        return LeaseLock(engine, study_id, owner)
    return None


def is_locked(conn: Connection, study_id: int) -> bool:
    """Whether some process holds the study's fit lock now."""
    if _is_postgresql(conn):
        return bool(
            conn.execute(
                text(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                    "AND classid = :ns AND objid = :sid AND objsubid = 2)"
                ),
                {"ns": ADVISORY_NAMESPACE, "sid": study_id},
            ).scalar_one()
        )
    now = _clock_sql(conn)
    stmt = select(FitLease.study_id).where(FitLease.study_id == study_id, FitLease.expires_at >= now)
    return conn.execute(stmt).first() is not None


def acquire_lease(conn: Connection, study_id: int, owner: str, seconds: float = LEASE_SECONDS) -> bool:
    """Take the study's lease if it is free or expired (by the database's clock); whether `owner` holds it."""
    now = _clock_sql(conn)
    conn.execute(delete(FitLease).where(FitLease.study_id == study_id, FitLease.expires_at < now))
    stmt = sqlite.insert(FitLease).values(study_id=study_id, owner=owner, expires_at=now + seconds)
    conn.execute(stmt.on_conflict_do_nothing(index_elements=["study_id"]))
    holder = conn.execute(select(FitLease.owner).where(FitLease.study_id == study_id)).scalar_one_or_none()
    return holder == owner


def renew_lease(conn: Connection, study_id: int, owner: str, seconds: float = LEASE_SECONDS) -> bool:
    """Extend `owner`'s lease; False if it is no longer theirs (released, expired and taken)."""
    now = _clock_sql(conn)
    stmt = update(FitLease).where(FitLease.study_id == study_id, FitLease.owner == owner)
    return conn.execute(stmt.values(expires_at=now + seconds)).rowcount == 1


def release_lease(conn: Connection, study_id: int, owner: str) -> bool:
    """Drop `owner`'s lease (never another owner's); whether there was one."""
    stmt = delete(FitLease).where(FitLease.study_id == study_id, FitLease.owner == owner)
    return conn.execute(stmt).rowcount == 1

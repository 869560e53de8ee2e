"""Engines and transactions: SQLite (embedded default) or PostgreSQL, chosen by URL.

SQLite runs in WAL mode with foreign keys on. Write transactions start with
`BEGIN IMMEDIATE` so that two processes never both hold a read lock and then deadlock
upgrading it; a writer that still finds the database locked is retried with backoff
instead of surfacing `database is locked` to the client.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from store.errors import Conflict, DatabaseUnavailable, MissingReference, SchemaNotMigrated, StorageError

SQLITE_BUSY_TIMEOUT_MS = 30_000
_WRITE_OPTION = "hpscale_write"

T = TypeVar("T")

__all__ = [
    "UNAVAILABLE_ERRORS",
    "ChangeProbe",
    "Connection",
    "Engine",
    "make_engine",
    "normalize_url",
    "ping",
    "read_connection",
    "redact_url",
    "run_in_transaction",
    "snapshot_connection",
    "storage_error",
    "storage_errors",
    "unavailable_reason",
    "write_probe",
]

# Database failures that say "the database cannot serve this now" rather than "this request
# is wrong": the server is down or unreachable, the pool is exhausted, the disk is full, the
# file or server is read-only, a lock outlived every retry. The HTTP layer answers them with
# 503 + Retry-After (one mapping, app/errors.py) instead of a 500 that drops the connection;
# the pool's pre-ping replaces dead connections, so the service heals when the database returns.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)


def unavailable_reason(error: BaseException) -> str:
    """A short, credential-free sentence saying why the database could not serve a request."""
    original = getattr(error, "orig", None) or error
    text_ = str(original).lower()
    if "disk is full" in text_ or "no space left" in text_ or getattr(original, "sqlstate", None) == "53100":
        return "the database's disk is full"
    if "readonly" in text_ or "read-only" in text_ or getattr(original, "sqlstate", None) == "25006":
        return "the database is read-only"
    if "locked" in text_ or "busy" in text_:
        return "the database is busy"
    if isinstance(error, PoolTimeout):
        return "no database connection is free"
    return "the database is unavailable"


# SQLSTATEs (PostgreSQL) and SQLite messages of a database without the schema this code expects.
_UNDEFINED = {"42P01", "42703"}  # undefined_table, undefined_column
_UNIQUE, _FOREIGN_KEY = "23505", "23503"


def _sqlstate(error: BaseException) -> str | None:
    return getattr(getattr(error, "orig", None), "sqlstate", None)


def storage_error(error: BaseException) -> StorageError | None:
    """The store's error for a SQLAlchemy exception (None: not a database condition, a bug)."""
    if isinstance(error, StorageError):
        return error
    text_ = str(getattr(error, "orig", None) or error).lower()
    if _sqlstate(error) in _UNDEFINED or "no such table" in text_ or "no such column" in text_:
        return SchemaNotMigrated(
            "the database does not have hpscale's current schema (a table or column is missing): "
            "run `hpscale db upgrade` against it"
        )
    if isinstance(error, IntegrityError):
        if _sqlstate(error) == _FOREIGN_KEY or "foreign key constraint" in text_:
            return MissingReference("what this change refers to was deleted meanwhile")
        if _sqlstate(error) == _UNIQUE or "unique constraint" in text_:
            return Conflict("a concurrent change took the same name or key; try again")
        return None
    if isinstance(error, UNAVAILABLE_ERRORS):
        return DatabaseUnavailable(unavailable_reason(error))
    return None


@contextmanager
def storage_errors() -> Iterator[None]:
    """The store's one wrapper: SQLAlchemy errors leave as `store.errors` (see `storage_error`);
    anything else (a bug, a domain refusal raised inside a transaction) passes unchanged."""
    try:
        yield
    except (DBAPIError, PoolTimeout, DisconnectionError) as error:
        mapped = storage_error(error)
        if mapped is None:
            raise
        raise mapped from error


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain `postgresql://` URLs (psycopg2 is not a dependency)."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("postgres://"):
        return "postgresql+psycopg://" + url[len("postgres://") :]
    return url


def redact_url(url: str) -> str:
    """`url` with its password hidden, for logs."""
    return make_url(normalize_url(url)).render_as_string(hide_password=True)


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine for `url`, with SQLite's pragmas and write-transaction mode set up."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)

    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # Created owner-only before SQLite opens it: SQLite gives the -wal and -shm files the
        # database file's own mode, so runs and token hashes stay private to the service user.
        Path(database).expanduser().touch(mode=0o600, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        pool_size=pool_size,
        max_overflow=pool_size,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Let SQLAlchemy's "begin" hook below emit BEGIN itself (pysqlite would defer it).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _is_retryable(error: DBAPIError) -> bool:
    message = str(error.orig).lower() if error.orig is not None else str(error).lower()
    if "database is locked" in message or "database is busy" in message:
        return True
    # PostgreSQL serialization failures and deadlocks are safe to retry as a whole.
    code = getattr(error.orig, "sqlstate", None)
    return code in {"40001", "40P01"}


def run_in_transaction(engine: Engine, work: Callable[[Connection], T], *, write: bool = True, attempts: int = 8) -> T:
    """Run `work(conn)` in one transaction; retry it whole on lock/serialization errors.

    What still fails leaves as a `store.errors` error (`storage_errors`)."""
    delay = 0.05
    with storage_errors():
        for attempt in range(attempts):
            try:
                with engine.connect() as raw:
                    conn = raw.execution_options(**{_WRITE_OPTION: True}) if write else raw
                    with conn.begin():
                        return work(conn)
            except DBAPIError as error:
                if attempt == attempts - 1 or not _is_retryable(error):
                    raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


@contextmanager
def read_connection(engine: Engine) -> Iterator[Connection]:
    """A connection in a (deferred) read transaction, rolled back on exit."""
    with storage_errors(), engine.connect() as conn, conn.begin():
        yield conn


@contextmanager
def snapshot_connection(engine: Engine) -> Iterator[Connection]:
    """A read transaction whose queries all see one snapshot of the database.

    SQLite's transactions already do; PostgreSQL needs REPEATABLE READ for it.
    """
    with storage_errors(), engine.connect() as raw:
        conn = raw.execution_options(isolation_level="REPEATABLE READ") if raw.dialect.name == "postgresql" else raw
        with conn.begin():
            yield conn


def ping(engine: Engine) -> None:
    """Raise if the database does not answer."""
    with storage_errors(), engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def write_probe(engine: Engine) -> None:
    """Raise if the database cannot commit a write now (disk full, read-only file or server).

    Commits a no-op update of Alembic's one-row version table: a real write (a new row
    version on PostgreSQL, a WAL frame on SQLite) that changes nothing. SQLite only notices
    a full disk when it must grow a file, so its directory's free space is checked too.
    """
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            free = shutil.disk_usage(Path(database).expanduser().resolve().parent).free
            if free < _MIN_FREE_BYTES:
                raise OperationalError("write probe", {}, Exception(f"disk is full: {free} bytes free"))
    with engine.connect() as raw:
        conn = raw.execution_options(**{_WRITE_OPTION: True})
        with conn.begin():
            conn.execute(text("UPDATE alembic_version SET version_num = version_num"))


_MIN_FREE_BYTES = 1 << 20


class ChangeProbe:
    """Tells, cheaply, whether anything was committed to a SQLite database since last asked.

    `PRAGMA data_version` on a connection that never writes changes whenever any other
    connection, in any process, commits. Reading it costs microseconds, so results derived
    from the database (a token's scope, a study's current fit) can be reused exactly until
    the next commit anywhere. Other backends have no such counter: `version()` is None
    there and callers simply query.
    """

    def __init__(self, engine: Engine) -> None:
        self._connection = None
        self._lock = threading.Lock()
        if engine.dialect.name == "sqlite":
            self._connection = engine.raw_connection()

    def version(self) -> int | None:
        if self._connection is None:
            return None
        with self._lock:
            cursor = self._connection.cursor()
            try:
                cursor.execute("PRAGMA data_version")
                row = cursor.fetchone()
                assert row is not None  # the pragma always returns one row
                return int(row[0])
            finally:
                cursor.close()


def create_database(server_url: str, name: str) -> str:
    """Create database `name` on the PostgreSQL server of `server_url`; its URL (benchmarks)."""
    admin = create_engine(normalize_url(server_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return normalize_url(server_url).rsplit("/", 1)[0] + f"/{name}"


def drop_database(server_url: str, name: str) -> None:
    """Drop database `name` from the PostgreSQL server of `server_url` (benchmarks)."""
    admin = create_engine(normalize_url(server_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def engine_url(engine: Engine) -> str:
    """The URL `engine` was made from, password included (to open the same database in a child process)."""
    return engine.url.render_as_string(hide_password=False)

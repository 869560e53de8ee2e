"""The database as the outside sees it: open, upgrade, readiness (the store does the work)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from store import migrate
from store.db import (
    UNAVAILABLE_ERRORS,
    Engine,
    make_engine,
    ping,
    redact_url,
    storage_errors,
    unavailable_reason,
    write_probe,
)

__all__ = [
    "UNAVAILABLE_ERRORS",
    "Engine",
    "Readiness",
    "open_database",
    "readiness",
    "readiness_async",
    "redact_url",
    "unavailable_reason",
    "upgrade",
]


def open_database(url: str, *, upgrade_schema: bool = False) -> Engine:
    """An engine on `url`; with `upgrade_schema`, migrated to the latest revision first."""
    engine = make_engine(url)
    if upgrade_schema:
        with storage_errors():
            migrate.upgrade(engine)
    return engine


def upgrade(engine: Engine) -> str | None:
    """Migrate to the latest schema; the revision now in place."""
    with storage_errors():
        migrate.upgrade(engine)
        with engine.connect() as conn:
            return migrate.current_revision(conn)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    message: str
    revision: str | None = None


def readiness(engine: Engine) -> Readiness:
    """Whether the database answers, its schema is at the latest migration and it takes writes.

    A server whose database cannot commit (disk full, read-only) cannot store runs or fits,
    so it is not ready even though reads still work.
    """
    try:
        ping(engine)
        with engine.connect() as conn:
            current = migrate.current_revision(conn)
    except Exception as error:  # noqa: BLE001 - any database failure means "not ready"
        return Readiness(False, f"database unavailable: {type(error).__name__}")
    head = migrate.head_revision()
    if current != head:
        return Readiness(False, f"schema at revision {current}, latest is {head}: run 'hpscale db upgrade'")
    try:
        write_probe(engine)
    except Exception as error:  # noqa: BLE001 - any failure to commit means "not ready"
        return Readiness(False, f"database does not take writes: {unavailable_reason(error)}")
    return Readiness(True, "ready", current)


# Readiness probes run in their own two threads, not the server's worker pool: a pool full
# of requests waiting on the database must not make the probe itself wait.
_probe_threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="hpscale-readyz")
READINESS_TIMEOUT_SECONDS = 5.0


async def readiness_async(engine: Engine, timeout: float = READINESS_TIMEOUT_SECONDS) -> Readiness:
    """`readiness` from the event loop, off the worker pool, answered within `timeout`."""
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.run_in_executor(_probe_threads, readiness, engine), timeout)
    except TimeoutError:
        return Readiness(False, f"database did not answer within {timeout:g} s")

"""The database as the outside sees it: open, upgrade, readiness (the store does the work)."""

from __future__ import annotations

from dataclasses import dataclass

from store import migrate
from store.db import Engine, make_engine, ping, redact_url

__all__ = ["Engine", "Readiness", "open_database", "readiness", "redact_url", "upgrade"]


def open_database(url: str, *, upgrade_schema: bool = False) -> Engine:
    """An engine on `url`; with `upgrade_schema`, migrated to the latest revision first."""
    engine = make_engine(url)
    if upgrade_schema:
        migrate.upgrade(engine)
    return engine


def upgrade(engine: Engine) -> str | None:
    """Migrate to the latest schema; the revision now in place."""
    migrate.upgrade(engine)
    with engine.connect() as conn:
        return migrate.current_revision(conn)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    message: str
    revision: str | None = None


def readiness(engine: Engine) -> Readiness:
    """Whether the database answers and its schema is at the latest migration."""
    try:
        ping(engine)
        with engine.connect() as conn:
            current = migrate.current_revision(conn)
    except Exception as error:  # noqa: BLE001 - any database failure means "not ready"
        return Readiness(False, f"database unavailable: {type(error).__name__}")
    head = migrate.head_revision()
    if current != head:
        return Readiness(False, f"schema at revision {current}, latest is {head}: run 'hpscale db upgrade'")
    return Readiness(True, "ready", current)

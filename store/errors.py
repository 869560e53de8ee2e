"""What the store raises instead of a database driver's exception (`store.db.storage_errors`).

Like Optuna's RDB storage, every transaction goes through one wrapper that turns SQLAlchemy's
errors into these, so the layers above never see a driver exception: the service maps each
to one domain error (`service.errors.from_storage`), hence one HTTP status and one line of
the command line, with no traceback.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base of the store's errors; `message` is a sentence for people (no SQL, no credentials)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DatabaseUnavailable(StorageError):
    """The database cannot serve now (down, unreachable, no free connection, disk full,
    read-only, locked past every retry): try again."""


class SchemaNotMigrated(StorageError):
    """The database has no hpscale schema, or an older one: `hpscale db upgrade`."""


class Conflict(StorageError):
    """A concurrent change took what this one wanted (a unique name, a key)."""


class MissingReference(StorageError):
    """A row this change refers to is gone (e.g. the study was deleted meanwhile)."""

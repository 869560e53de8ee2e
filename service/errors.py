"""Domain exceptions: what the service refuses, each with a machine code.

The HTTP layer maps every concrete class here to exactly one status (`app/errors.py`,
`HTTP_STATUS`); the command line maps them to exit codes. `details` are the contract's
error details: dicts naming the `field` (and, inside a batch, the run's `index`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import fitting.common
import store.errors


class DomainError(Exception):
    """Base of every refusal the service makes; never raised itself."""

    code = "error"

    def __init__(self, message: str, details: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)


def field_detail(field: str, message: str, index: int | None = None) -> dict[str, Any]:
    """One error detail naming `field` (and the run's `index` inside a batch)."""
    loc: list[str | int] = [field] if index is None else ["runs", index, field]
    return {"field": field, "message": message, "index": index, "loc": loc}


# --- authentication ------------------------------------------------------------------


class Unauthorized(DomainError):
    """No token, an unknown one, or a revoked one."""

    code = "unauthorized"


class Forbidden(DomainError):
    """A valid token without the scope the operation needs."""

    code = "forbidden"


# --- not found -------------------------------------------------------------------------


class StudyNotFound(DomainError):
    code = "not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"study '{name}' does not exist")
        self.name = name


class FitNotFound(DomainError):
    code = "not_found"


class FitExpired(DomainError):
    """A fit that existed but was pruned under the pin policy (`service.pins`): 410 Gone."""

    code = "gone"


class RunNotFound(DomainError):
    code = "not_found"


class SubmissionNotFound(DomainError):
    code = "not_found"


# --- conflicts -------------------------------------------------------------------------


class StudyExists(DomainError):
    code = "conflict"

    def __init__(self, name: str) -> None:
        super().__init__(f"study '{name}' already exists")
        self.name = name


class TokenExists(DomainError):
    code = "conflict"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"a token named '{name}' already exists (only its hash is stored, so it cannot be shown again); "
            "choose another --name, or pass --force to replace it (the old token stops working)"
        )
        self.name = name


class SubmissionUndone(DomainError):
    """The submission was undone already: undoing it again would do nothing (and say nothing)."""

    code = "conflict"


class TokenNotFound(DomainError):
    code = "not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"no active token named '{name}'")
        self.name = name


class InsufficientData(DomainError, fitting.common.InsufficientData):
    """The runs cannot support what was asked; the message says what runs are missing."""

    code = "insufficient_data"

    def __init__(self, message: str, details: Sequence[dict[str, Any]] = ()) -> None:
        DomainError.__init__(self, message, details)
        self.missing = None


class FitFailed(DomainError):
    """The fitting engine failed on the study's runs (or took longer than allowed). Recorded
    once for that data version: asking again answers at once; a change of runs refits."""

    code = "fit_failed"


# --- unavailable -------------------------------------------------------------------------


class FitInProgress(DomainError):
    """Another request is still computing the fit this one waits for (past the deadline)."""

    code = "unavailable"


class DatabaseUnavailable(DomainError):
    """The database cannot serve the request now (down, unreachable, disk full, read-only): retry."""

    code = "unavailable"


class DatabaseNotMigrated(DomainError):
    """The database lacks the schema this version needs: an operator runs `hpscale db upgrade`."""

    code = "unavailable"


class ConcurrentChange(DomainError):
    """A concurrent request took the name or key this one wanted: try again."""

    code = "conflict"


class ReferenceGone(DomainError):
    """What the request refers to was deleted while it ran."""

    code = "not_found"


# The storage wrapper's errors (store/errors.py) as domain errors: one each.
_FROM_STORAGE: dict[type[store.errors.StorageError], type[DomainError]] = {
    store.errors.DatabaseUnavailable: DatabaseUnavailable,
    store.errors.SchemaNotMigrated: DatabaseNotMigrated,
    store.errors.Conflict: ConcurrentChange,
    store.errors.MissingReference: ReferenceGone,
}
StorageError = store.errors.StorageError


def from_storage(error: store.errors.StorageError) -> DomainError:
    """The domain error for an error of the store (unavailable ones say to try again)."""
    cls = _FROM_STORAGE.get(type(error), DatabaseUnavailable)
    message = error.message
    if cls is DatabaseUnavailable and "try again" not in message:
        message += "; try again shortly"
    return cls(message)


# --- invalid input -----------------------------------------------------------------------


class InvalidInput(DomainError):
    """Base of the 422s: every detail names the field."""

    code = "validation_error"


class InvalidRuns(InvalidInput):
    """A run, or runs of a batch, break the run rules (details carry each run's index)."""


class InvalidStudy(InvalidInput):
    """A study's fields break the study rules."""


class InvalidTarget(InvalidInput):
    """A recommendation or suggestion target outside the limits, or with no finite answer."""


class MissingTarget(InvalidInput):
    """The fitted laws use a target variable the request did not give."""

    def __init__(self, variable: str, message: str | None = None) -> None:
        message = message or f"missing target variable {variable}: the fitted laws use it"
        super().__init__(message, [field_detail(variable, message)])
        self.variable = variable


class InvalidQuery(InvalidInput):
    """A query parameter the endpoint does not know, or a malformed one (e.g. a cursor)."""


class InvalidArgument(InvalidInput):
    """A command-line argument or file the service cannot use (bad --map, unreadable CSV)."""

"""Every error as the contract's body `{"error": {"code", "message", "details"}}`.

The service raises domain exceptions (`service/errors.py`); `HTTP_STATUS` below is the
one place that gives each its status. FastAPI's own validation errors name the field
(and, inside a batch, the run's index); anything the handlers do not know becomes a 500
with the same shape (and is a bug to fix).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import errors
from service.database import UNAVAILABLE_ERRORS, unavailable_reason
from service.schemas import summarize, validation_details

log = logging.getLogger("hpscale")

# Each domain exception's HTTP status: exactly one entry per class of service/errors.py
# (tests/test_architecture.py checks it), looked up by exact class.
HTTP_STATUS: dict[type[errors.DomainError], int] = {
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.StudyNotFound: 404,
    errors.FitNotFound: 404,
    errors.FitExpired: 410,
    errors.RunNotFound: 404,
    errors.SubmissionNotFound: 404,
    errors.TokenNotFound: 404,
    errors.StudyExists: 409,
    errors.TokenExists: 409,
    errors.SubmissionUndone: 409,
    errors.InsufficientData: 409,
    errors.FitFailed: 409,
    errors.InvalidInput: 422,
    errors.InvalidRuns: 422,
    errors.InvalidStudy: 422,
    errors.InvalidTarget: 422,
    errors.MissingTarget: 422,
    errors.InvalidQuery: 422,
    errors.InvalidArgument: 422,
    errors.FitInProgress: 503,
    errors.DatabaseUnavailable: 503,
    errors.DatabaseNotMigrated: 503,
    errors.ConcurrentChange: 409,
    errors.ReferenceGone: 404,
}
_HEADERS: dict[type[errors.DomainError], dict[str, str]] = {
    errors.Unauthorized: {"WWW-Authenticate": "Bearer"},
    errors.FitInProgress: {"Retry-After": "5"},
    errors.DatabaseUnavailable: {"Retry-After": "2"},
    errors.DatabaseNotMigrated: {"Retry-After": "30"},
}

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    503: "unavailable",
}

_BODY_PARSE_FAILED = "There was an error parsing the body"


def error_response(
    status_code: int,
    code: str,
    message: str,
    details: Sequence[dict[str, Any]] = (),
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": list(details)}}
    return JSONResponse(body, status_code=status_code, headers=headers)


def domain_error_response(exc: errors.DomainError) -> JSONResponse:
    status = HTTP_STATUS[type(exc)]
    return error_response(status, exc.code, exc.message, exc.details, _HEADERS.get(type(exc)))


def _body_detail(message: str) -> dict[str, Any]:
    return {"field": "body", "message": message, "index": None, "loc": ["body"]}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.DomainError)
    async def _domain_error(_: Request, exc: errors.DomainError) -> JSONResponse:
        return domain_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = []
        for error in exc.errors():
            where = error["loc"][0] if error["loc"] else "body"
            if where == "body" and error["type"] == "json_invalid":
                reason = error.get("ctx", {}).get("error", error["msg"])
                details.append(_body_detail(f"invalid JSON: {reason}"))
            elif where in ("query", "path", "header", "body"):
                # The field is the parameter's name, or the body field's dotted path.
                details.extend(validation_details([error], drop_prefix=1))
            else:
                details.extend(validation_details([error]))
        return error_response(422, "validation_error", summarize(details), details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == _BODY_PARSE_FAILED:
            # FastAPI's answer when json.loads fails with something other than a syntax
            # error: a bound of service.json_bounds (a domain error naming the field),
            # nesting too deep (RecursionError) or an integer literal too long.
            cause = exc.__cause__
            if isinstance(cause, errors.DomainError):
                return domain_error_response(cause)
            reason = (
                "nested too deeply"
                if isinstance(cause, RecursionError)
                else "a number is too long"
                if isinstance(cause, ValueError)
                else "unreadable"
            )
            return error_response(
                422,
                "validation_error",
                f"invalid input: body: invalid JSON: {reason}",
                [_body_detail(f"invalid JSON: {reason}")],
            )
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(errors.StorageError)
    async def _storage_error(_: Request, exc: errors.StorageError) -> JSONResponse:
        # The store's wrapper (store.db.storage_errors) already named the condition.
        log.warning("storage: %s: %s", type(exc).__name__, exc.message)
        return domain_error_response(errors.from_storage(exc))

    async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
        # Handled here (not by the catch-all below, which re-raises and so makes uvicorn close
        # the keep-alive connection): the client may retry on the same connection.
        log.warning("database unavailable: %s", type(exc).__name__)
        return domain_error_response(errors.DatabaseUnavailable(unavailable_reason(exc) + "; try again shortly"))

    for database_error in UNAVAILABLE_ERRORS:
        app.add_exception_handler(database_error, _database_unavailable)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", "internal server error")


class DatabaseUnavailableGuard:
    """ASGI middleware, outermost: a database failure raised outside the routes (e.g. while a
    middleware checks a token) is 503 + Retry-After too, not a 500 that drops the connection.

    Inside the routes the exception handlers above answer first; this catches the rest, as
    long as no response has started.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except (*UNAVAILABLE_ERRORS, errors.StorageError) as exc:
            if started:
                raise
            log.warning("database unavailable: %s", type(exc).__name__)
            if isinstance(exc, errors.StorageError):
                error = errors.from_storage(exc)
            else:
                error = errors.DatabaseUnavailable(unavailable_reason(exc) + "; try again shortly")
            await domain_error_response(error)(scope, receive, send)

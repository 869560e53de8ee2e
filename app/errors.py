"""The contract's error body `{"error": {"code", "message", "details"}}` for every 4xx.

Validation errors name the field and, inside a batch, the run's index; anything the
handlers do not know becomes a 500 with the same shape (and is a bug to fix).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.schemas import CROSS_FIELD_ERRORS

log = logging.getLogger("hpscale")

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    503: "unavailable",
}


_BODY_PARSE_FAILED = "There was an error parsing the body"


class ApiError(Exception):
    """Raised by handlers for any contract error; rendered as the error body."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        details: Sequence[dict[str, Any]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = list(details)
        self.headers = headers


def error_response(
    status_code: int,
    code: str,
    message: str,
    details: Sequence[dict[str, Any]] = (),
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": list(details)}}
    return JSONResponse(body, status_code=status_code, headers=headers)


def validation_details(errors: Sequence[Any], *, drop_prefix: int = 0) -> list[dict[str, Any]]:
    """Pydantic errors → details naming the field (dotted) and, for batch items, the index."""
    details = []
    for error in errors:
        loc = [part for part in error["loc"][drop_prefix:] if part not in ("batch", "run")]
        index = None
        if len(loc) >= 2 and loc[0] == "runs" and isinstance(loc[1], int):
            index, field_parts = loc[1], loc[2:]
        else:
            field_parts = loc
        field = ".".join(str(part) for part in field_parts) or "body"
        if error["type"] in CROSS_FIELD_ERRORS:
            field = CROSS_FIELD_ERRORS[error["type"]]
        message = error["msg"]
        if error["type"] == "missing":
            message = "field required"
        details.append(
            {"field": field, "message": message, "index": index, "loc": [str(p) if not isinstance(p, int) else p for p in loc]}
        )
    return details


def summarize(details: Sequence[dict[str, Any]]) -> str:
    indexes = sorted({d["index"] for d in details if d["index"] is not None})
    first = details[0]
    where = f"run {first['index']}: " if first["index"] is not None else ""
    text = f"invalid input: {where}{first['field']}: {first['message']}"
    if indexes:
        text += f" ({len(indexes)} invalid run(s), indexes {', '.join(map(str, indexes[:20]))}"
        text += ", …)" if len(indexes) > 20 else ")"
    return text


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        details = []
        for error in errors:
            where = error["loc"][0] if error["loc"] else "body"
            # Query/path parameters: the field is the parameter's name.
            if where in ("query", "path", "header"):
                details.extend(validation_details([error], drop_prefix=1))
            elif where == "body":
                if error["type"] == "json_invalid":
                    details.append(
                        {"field": "body", "message": f"invalid JSON: {error.get('ctx', {}).get('error', error['msg'])}", "index": None, "loc": ["body"]}
                    )
                else:
                    details.extend(validation_details([error], drop_prefix=1))
            else:
                details.extend(validation_details([error]))
        return error_response(422, "validation_error", summarize(details), details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == _BODY_PARSE_FAILED:
            # FastAPI's answer when json.loads fails with something other than a syntax
            # error: nesting too deep (RecursionError) or an integer literal too long.
            cause = exc.__cause__
            reason = (
                "nested too deeply" if isinstance(cause, RecursionError)
                else "a number is too long" if isinstance(cause, ValueError)
                else "unreadable"
            )
            detail = {"field": "body", "message": f"invalid JSON: {reason}", "index": None, "loc": ["body"]}
            return error_response(422, "validation_error", f"invalid input: body: invalid JSON: {reason}", [detail])
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", "internal server error")

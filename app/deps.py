"""FastAPI dependencies, as `Annotated` aliases a route names in its signature.

`EngineDep` and `SettingsDep` are the app's one engine and settings object; `Reader`,
`Writer` and `Admin` authenticate the bearer token (checked by `service.tokens`) and
demand that scope: a missing or unknown token is 401, a token without the scope 403.
`reject_unknown_query` refuses query parameters the route does not declare (422 naming
the parameter), so a misspelt one is never silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from service import tokens
from service.database import Engine
from service.errors import InvalidQuery, Unauthorized, field_detail
from service.settings import Settings
from service.tokens import NO_AUTH_PRINCIPAL, Principal


# Dependencies that do no I/O are `async def`: FastAPI would run a plain `def` one in the
# thread pool, a thread hop per dependency per request on the hot recommendation path.
async def get_engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def _bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("missing bearer token")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Authorization header must be 'Bearer <token>'")
    return token


async def authenticate(request: Request, engine: EngineDep, settings: SettingsDep) -> Principal:
    """The caller's token and scope; runs on the event loop, the database only on a cache miss."""
    resolved = request.scope.get("hpscale.principal")  # app.security.SecurityGate checked it already
    if isinstance(resolved, Principal):
        return resolved
    if not settings.auth_enabled:
        return NO_AUTH_PRINCIPAL
    return await tokens.authenticate(engine, _bearer_token(request))


def require(scope: str) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency that authenticates and demands at least `scope`."""

    async def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        return tokens.require_scope(principal, scope)

    # Read by app.security.SecurityGate, which checks the token before any body is read.
    dependency.required_scope = scope  # type: ignore[attr-defined]
    return dependency


Reader = Annotated[Principal, Depends(require("read"))]
Writer = Annotated[Principal, Depends(require("write"))]
Admin = Annotated[Principal, Depends(require("admin"))]


_known_query: dict[int, frozenset[str]] = {}


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def reject_unknown_query(request: Request) -> None:
    """422 naming each query parameter the route does not declare."""
    if not request.query_params:
        return
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = _known_query.get(id(route))
    if known is None:
        known = _known_query[id(route)] = frozenset(_query_names(route.dependant))
    unknown = [name for name in dict.fromkeys(request.query_params.keys()) if name not in known]
    if unknown:
        message = "unknown query parameter"
        allowed = ", ".join(sorted(known)) or "none"
        raise InvalidQuery(
            f"unknown query parameter(s): {', '.join(unknown)} (this endpoint takes: {allowed})",
            [field_detail(name, message) for name in unknown],
        )


UNKNOWN_QUERY_CHECK = [Depends(reject_unknown_query)]

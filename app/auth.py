"""Bearer-token authentication and scopes: read < write < admin.

Missing or unknown token → 401; a valid token without the needed scope → 403. With
`--no-auth` every request acts with admin scope (only allowed on a loopback address).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from app.cache import commit_cache
from app.errors import ApiError
from store import queries
from store.db import run_in_transaction
from store.models import ApiToken, utcnow

SCOPE_RANK = {"read": 0, "write": 1, "admin": 2}
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name (recorded on what it creates) and its scope."""

    name: str
    scope: str

    def allows(self, scope: str) -> bool:
        return SCOPE_RANK[self.scope] >= SCOPE_RANK[scope]


NO_AUTH_PRINCIPAL = Principal(name="no-auth", scope="admin")


# Dependencies that do no I/O are `async def`: FastAPI would run a plain `def` one in the
# thread pool, a thread hop per dependency per request on the hot recommendation path.
async def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def _bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise ApiError(401, "unauthorized", "missing bearer token", headers=_CHALLENGE)
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401, "unauthorized", "Authorization header must be 'Bearer <token>'", headers=_CHALLENGE
        )
    return token


async def authenticate(request: Request) -> Principal:
    """The caller's token and scope; runs on the event loop, the database only on a cache miss."""
    if not request.app.state.settings.auth_enabled:
        return NO_AUTH_PRINCIPAL
    token = _bearer_token(request)
    engine: Engine = request.app.state.engine
    if len(token) > 512:
        raise ApiError(401, "unauthorized", "invalid or revoked token", headers=_CHALLENGE)

    def load() -> ApiToken | None:
        with engine.connect() as conn, conn.begin():
            return queries.find_token(conn, token)

    # Keyed by the token's hash, never the token; a revocation is a commit, which ends reuse.
    record = await commit_cache(engine).get_or_load_async(("token", queries.hash_token(token)), load)
    if record is None:
        raise ApiError(401, "unauthorized", "invalid or revoked token", headers=_CHALLENGE)
    now = utcnow()
    if queries.token_use_is_stale(record, now):
        await run_in_threadpool(run_in_transaction, engine, lambda conn: queries.touch_token(conn, record.id, now))
    return Principal(name=record.name, scope=record.scope)


def require(scope: str) -> Callable[..., Principal]:
    """A dependency that authenticates and demands at least `scope`."""

    async def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not principal.allows(scope):
            raise ApiError(
                403,
                "forbidden",
                f"this endpoint needs a token with '{scope}' scope; yours has '{principal.scope}'",
            )
        return principal

    return dependency


Reader = Annotated[Principal, Depends(require("read"))]
Writer = Annotated[Principal, Depends(require("write"))]
Admin = Annotated[Principal, Depends(require("admin"))]
EngineDep = Annotated[Engine, Depends(get_engine)]

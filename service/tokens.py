"""Tokens: who is calling and what they may do (read < write < admin).

`app/deps.py` reads the bearer token off the request and calls `authenticate`; the CLI
creates, lists and revokes tokens here. Only a token's SHA-256 is stored.
"""

from __future__ import annotations

from dataclasses import dataclass

from anyio import to_thread

from service.cache import commit_cache
from service.errors import Forbidden, TokenExists, TokenNotFound, Unauthorized
from service.limits import SCOPE_RANK, SCOPES
from store import queries
from store.db import Connection, Engine, read_connection, run_in_transaction
from store.errors import Conflict
from store.models import ApiToken, utcnow

MAX_TOKEN_LENGTH = 512
BOOTSTRAP_ADMIN_NAME = "bootstrap-admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name (recorded on what it creates) and its scope."""

    name: str
    scope: str

    def allows(self, scope: str) -> bool:
        return SCOPE_RANK[self.scope] >= SCOPE_RANK[scope]


NO_AUTH_PRINCIPAL = Principal(name="no-auth", scope="admin")
CLI_PRINCIPAL = Principal(name="cli", scope="admin")


async def authenticate(engine: Engine, token: str) -> Principal:
    """The principal of `token`; raises Unauthorized for an unknown or revoked one.

    Runs on the event loop; the database is read only on a cache miss (keyed by the
    token's hash, never the token; a revocation is a commit, which ends reuse).
    """
    if len(token) > MAX_TOKEN_LENGTH:
        raise Unauthorized("invalid or revoked token")

    def load() -> ApiToken | None:
        with read_connection(engine) as conn:
            return queries.find_token(conn, token)

    key = ("token", queries.hash_token(token))
    record = await commit_cache(engine).get_or_load_async(key, load, keep=lambda found: found is not None)
    if record is None:
        raise Unauthorized("invalid or revoked token")
    now = utcnow()
    if queries.token_use_is_stale(record, now):
        token_id = record.id
        await to_thread.run_sync(
            lambda: run_in_transaction(engine, lambda conn: queries.touch_token(conn, token_id, now))
        )
    return Principal(name=record.name, scope=record.scope)


def require_scope(principal: Principal, scope: str) -> Principal:
    if not principal.allows(scope):
        raise Forbidden(f"this endpoint needs a token with '{scope}' scope; yours has '{principal.scope}'")
    return principal


def create_token(engine: Engine, name: str, scope: str, *, replace: bool = False) -> str:
    """A new token (returned once, in clear); raises TokenExists if the name is taken, unless
    `replace`: then the old token of that name stops working and a new one takes its name
    (what keeps a walkthrough's `TOKEN=$(hpscale tokens create ... --force)` re-runnable)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")

    def create(conn: Connection) -> str | None:
        if queries.token_name_exists(conn, name):
            if not replace:
                return None
            queries.delete_token(conn, name)
        return queries.create_token(conn, name, scope)

    try:
        token = run_in_transaction(engine, create)
    except Conflict:  # another request created the name between our check and our insert
        raise TokenExists(name) from None
    if token is None:
        raise TokenExists(name)
    return token


def list_tokens(engine: Engine) -> list[ApiToken]:
    with read_connection(engine) as conn:
        return queries.list_tokens(conn)


def revoke_token(engine: Engine, name: str) -> None:
    if not run_in_transaction(engine, lambda conn: queries.revoke_token(conn, name)):
        raise TokenNotFound(name)


def register_bootstrap_admin(engine: Engine, token: str) -> None:
    """Register `token` as admin `bootstrap-admin` unless it (or that name) already exists."""

    def register(conn: Connection) -> None:
        if queries.find_token(conn, token) is None and not queries.token_name_exists(conn, BOOTSTRAP_ADMIN_NAME):
            queries.create_token(conn, BOOTSTRAP_ADMIN_NAME, "admin", token=token)

    run_in_transaction(engine, register)

"""HTTP-level caching: repeated GETs answered from memory until the database's next commit."""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.cache import LRUCache, commit_cache
from service.database import Engine

# What a cacheable question looks like: a few short parameters, each a number or a boolean.
# Anything else (junk parameters, 64 KB values) still gets its answer but never a cache
# entry, so no caller can make the cache hold big keys: an entry stays under ~1 KB.
_MAX_QUERY_PARAMS = 16
_PARAM_NAME = re.compile(r"[a-z_]{1,32}")
_PARAM_VALUE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d{1,3})?|true|false", re.ASCII)


def query_key(query_string: bytes) -> tuple[tuple[str, str], ...] | None:
    """The query as sorted (name, value) pairs if it has the shape of a valid question, else None."""
    if len(query_string) > 1024:
        return None
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    if len(pairs) > _MAX_QUERY_PARAMS or len({name for name, _ in pairs}) != len(pairs):
        return None
    for name, value in pairs:
        if not _PARAM_NAME.fullmatch(name) or len(value) > 32 or not _PARAM_VALUE.fullmatch(value):
            return None
    return tuple(sorted(pairs))


class RepeatedGetCache:
    """ASGI middleware: answers a repeated GET from memory until the database's next commit.

    For read endpoints whose answer depends only on the request and the database (a
    recommendation): the same path, query string and Authorization header at the same
    commit counter get the same bytes. The key holds a hash of the header, so a cached
    answer only ever goes back to the credentials that earned it; a revoked token, a new
    run or a new fit is a commit, which ends reuse. Only complete 200 answers are kept, and
    the key changes every minute so that token use is still recorded (`last_used_at`).
    """

    def __init__(self, app: ASGIApp, engine: Engine, paths: re.Pattern[str], size: int = 4096) -> None:
        self.app = app
        self.cache = commit_cache(engine)
        self.paths = paths
        self.answers = LRUCache(size)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or not self.paths.fullmatch(scope["path"]):
            await self.app(scope, receive, send)
            return
        version = self.cache.version()
        if version is None:
            await self.app(scope, receive, send)
            return
        query = query_key(scope["query_string"])
        if query is None:  # not a well-formed question: answered (mostly 422), never kept
            await self.app(scope, receive, send)
            return
        credentials = b"".join(value for name, value in scope["headers"] if name == b"authorization")
        key = (scope["path"], query, hashlib.sha256(credentials).digest(), int(time.time() // 60))
        hit = self.answers.get(key)
        if hit is not None and hit[0] == version:
            await send({"type": "http.response.start", "status": 200, "headers": hit[1]})
            await send({"type": "http.response.body", "body": hit[2]})
            return

        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body") and start.get("status") == 200:
                    self.answers.put(key, (version, list(start.get("headers", [])), b"".join(chunks)))
            await send(message)

        await self.app(scope, receive, capture)

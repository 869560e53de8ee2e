"""Request security that must run before any body is read: one pure ASGI middleware.

`SecurityGate` sits outermost. For every HTTP request it, in order:

1. in no-auth mode, admits only a loopback peer whose `Host` is localhost, 127.0.0.1 or
   [::1] (so `--host 0.0.0.0` or a DNS-rebinding page cannot reach an open server);
2. refuses an unsafe method (POST, PUT, PATCH, DELETE) carrying a foreign `Origin` or
   `Sec-Fetch-Site: cross-site`, in every mode (a browser form cannot create a fit);
3. finds the route the request will reach and the scope it needs (from the route's
   `app.deps.require` dependency) and checks the bearer token *before the body is
   read*: an unauthenticated 60 MB upload costs a header parse, not a JSON parse;
4. answers a failed token lookup with 429 (Retry-After) instead of 401 once its client
   address has failed too often: only failed lookups count, and a valid token is always
   served, so guessing from an address (or a shared proxy) never locks its users out;
   `/metrics` with a metrics token goes through the same check;
5. limits the in-flight expensive requests (fits, suggestions) and large bodies per token
   (429 with Retry-After), and large bodies per process (503 with Retry-After).

The principal it resolves is left in the ASGI scope for `app.deps.authenticate`, so the
token is looked up once. Limits are per worker process. JSON bodies are parsed by
`ThreadedJSONRequest` (below) with the structural bounds of `service.json_bounds`.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import threading
import time
from collections import OrderedDict, deque
from typing import Any
from urllib.parse import urlsplit

from anyio import to_thread
from fastapi import Request
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import domain_error_response, error_response
from service import tokens
from service.database import Engine
from service.errors import DomainError
from service.json_bounds import loads_bounded
from service.settings import Settings
from service.tokens import NO_AUTH_PRINCIPAL

PRINCIPAL_SCOPE_KEY = "hpscale.principal"  # read by app.deps.authenticate
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
# Failed authentications one client address may make per window before it gets 429s.
MAX_FAILED_AUTH = 20
FAILED_AUTH_WINDOW_S = 60.0
# In-flight requests one token may have on each expensive route (a fit, suggestions).
MAX_EXPENSIVE_PER_TOKEN = 2
EXPENSIVE_ROUTES = frozenset(
    {
        ("POST", "/v1/studies/{name}/fits"),
        ("GET", "/v1/studies/{name}/suggestions"),
        ("GET", "/v1/studies/{name}/transfer-check"),
    }
)
# JSON bodies larger than this are parsed in a worker thread, off the event loop.
THREADED_JSON_BYTES = 64 * 1024
# A body larger than this (or of unknown length) is "large": parsing one costs up to ~15x its
# size in memory, so each token may send one at a time, and a process parses at most a few.
LARGE_BODY_BYTES = 1024 * 1024
MAX_LARGE_BODIES_PER_TOKEN = 1
MAX_LARGE_BODIES = 4
# Headers a reverse proxy adds: in no-auth mode such a request did not come from this machine.
PROXY_HEADERS = (b"x-forwarded-for", b"forwarded", b"x-real-ip", b"x-forwarded-host")
METRICS_PATH = "/metrics"


def is_loopback_peer(scope: Scope) -> bool:
    """Whether the TCP peer is a loopback address (an IPv4-mapped ::ffff:127.x counts)."""
    client = scope.get("client")
    if not client:
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def client_key(scope: Scope) -> str:
    """Whose failed authentications these are: the peer's IPv4 address, or its IPv6 /64 (one
    host usually holds a whole /64, so counting single IPv6 addresses would be no limit)."""
    client = scope.get("client")
    if not client:
        return "-"
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return str(client[0])
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


def host_name(host: str) -> str:
    """The Host header without its port: `[::1]:8000` → `[::1]`, `localhost:80` → `localhost`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.partition(":")[0]


def cross_site(scope: Scope) -> str | None:
    """Why an unsafe request looks cross-site, or None: its Origin is not its own Host."""
    if _header(scope, b"sec-fetch-site") == "cross-site":
        return "cross-site request (Sec-Fetch-Site)"
    origin = _header(scope, b"origin")
    if origin is None:
        return None  # not a browser, or a same-origin form in an old browser
    host = _header(scope, b"host") or ""
    if origin == "null" or urlsplit(origin).netloc.lower() != host.strip().lower():
        return f"cross-origin request from {origin[:100]!r}"
    return None


class FailedAuthLimiter:
    """Failed authentications per client address in a sliding window (bounded memory)."""

    def __init__(self, limit: int = MAX_FAILED_AUTH, window: float = FAILED_AUTH_WINDOW_S, addresses: int = 10_000):
        self.limit = limit
        self.window = window
        self.addresses = addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, address: str, now: float | None = None) -> int:
        """Seconds until `address` may try again (0: it may now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            failures = self._failures.get(address)
            if failures is None:
                return 0
            while failures and failures[0] <= now - self.window:
                failures.popleft()
            if len(failures) < self.limit:
                return 0
            return max(1, math.ceil(failures[0] + self.window - now))

    def failed(self, address: str, now: float | None = None) -> int:
        """Record a failed lookup from `address`; seconds it must now wait (0: not blocked yet)."""
        now = time.monotonic() if now is None else now
        wait = self.retry_after(address, now)
        with self._lock:
            failures = self._failures.pop(address, None) or deque(maxlen=self.limit)
            failures.append(now)
            self._failures[address] = failures
            while len(self._failures) > self.addresses:
                self._failures.popitem(last=False)
        return wait


def _large_body(scope: Scope) -> bool:
    """Whether the request announces a body over LARGE_BODY_BYTES, or one of unknown length."""
    if scope["method"] in SAFE_METHODS:
        return False
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value) > LARGE_BODY_BYTES
            except ValueError:
                return True
        if key == b"transfer-encoding":
            return True
    return False


def _required_scope(route: APIRoute) -> str | None:
    """The strongest scope any `app.deps.require(...)` dependency of the route demands."""
    from service.limits import SCOPE_RANK

    found: list[str] = []
    stack = [route.dependant]
    while stack:
        dependant = stack.pop()
        scope = getattr(dependant.call, "required_scope", None)
        if isinstance(scope, str):
            found.append(scope)
        stack.extend(dependant.dependencies)
    return max(found, key=SCOPE_RANK.__getitem__) if found else None


class SecurityGate:
    """The pure ASGI middleware described in the module docstring."""

    def __init__(self, app: ASGIApp, settings: Settings, engine: Engine, router_app: Any) -> None:
        self.app = app
        self.settings = settings
        self.engine = engine
        self.router_app = router_app  # the FastAPI app, whose routes say which scope they need
        self.failures = FailedAuthLimiter()
        self._scopes: dict[int, str | None] = {}
        self._routes: list[APIRoute] | None = None
        self._inflight: dict[tuple[str, ...], int] = {}

    def _api_routes(self) -> list[APIRoute]:
        """Every APIRoute of the app, included routers flattened (their paths carry the prefix).

        A route this misses (a router included under an extra prefix) is still protected by
        its dependencies in `app.deps`, only after its body is read."""
        if self._routes is None:
            found: list[APIRoute] = []

            def walk(routes: Any) -> None:
                for route in routes:
                    if isinstance(route, APIRoute):
                        found.append(route)
                    walk(getattr(getattr(route, "original_router", None), "routes", ()))

            walk(self.router_app.router.routes)
            self._routes = found
        return self._routes

    def _route(self, scope: Scope) -> APIRoute | None:
        for route in self._api_routes():
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route
        return None

    def _scope_of(self, route: APIRoute) -> str | None:
        key = id(route)
        if key not in self._scopes:
            self._scopes[key] = _required_scope(route)
        return self._scopes[key]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = await self._check(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        route = scope.get("hpscale.route")
        principal = scope.get(PRINCIPAL_SCOPE_KEY)
        if route is None or principal is None:
            await self.app(scope, receive, send)
            return
        # In-flight slots this request needs: (key, limit, refusal if none is free).
        slots: list[tuple[tuple[str, ...], int, Any]] = []
        if (scope["method"], route.path) in EXPENSIVE_ROUTES:
            message = f"token '{principal.name}' already has {MAX_EXPENSIVE_PER_TOKEN} of these requests running"
            slots.append(
                (
                    (principal.name, scope["method"], route.path),
                    MAX_EXPENSIVE_PER_TOKEN,
                    error_response(429, "too_many_requests", message, headers={"Retry-After": "1"}),
                )
            )
        if _large_body(scope):
            message = f"token '{principal.name}' is already sending a body over {LARGE_BODY_BYTES} bytes"
            slots.append(
                (
                    ("large-body", principal.name),
                    MAX_LARGE_BODIES_PER_TOKEN,
                    error_response(429, "too_many_requests", message, headers={"Retry-After": "1"}),
                )
            )
            message = f"{MAX_LARGE_BODIES} large request bodies are being read; try again shortly"
            slots.append(
                (
                    ("large-body",),
                    MAX_LARGE_BODIES,
                    error_response(503, "unavailable", message, headers={"Retry-After": "1"}),
                )
            )
        for key, limit, busy in slots:
            if self._inflight.get(key, 0) >= limit:
                await busy(scope, receive, send)
                return
        for key, _, _ in slots:
            self._inflight[key] = self._inflight.get(key, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            for key, _, _ in slots:
                self._inflight[key] -= 1
                if not self._inflight[key]:
                    del self._inflight[key]

    def _failed_lookup(self, scope: Scope, message: str, code: str = "unauthorized") -> Any:
        """A failed token lookup from this client: 401, or 429 once its address failed too often."""
        wait = self.failures.failed(client_key(scope))
        if wait:
            return error_response(
                429,
                "too_many_requests",
                f"too many failed authentications from this address; retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        return error_response(401, code, message, headers={"WWW-Authenticate": "Bearer"})

    def _check_metrics(self, scope: Scope) -> Any:
        """`/metrics` with a metrics token: the same bearer check and failed-lookup limit as /v1."""
        expected = self.settings.metrics_token
        if expected is None:
            return None
        header = _header(scope, b"authorization")
        if not header:
            message = "/metrics needs Authorization: Bearer <the server's metrics token>"
            return error_response(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})
        given = header.encode("latin-1")
        if hmac.compare_digest(given, f"Bearer {expected.get_secret_value()}".encode()):
            return None
        return self._failed_lookup(scope, "invalid metrics token")

    async def _check(self, scope: Scope) -> Any:
        """A response refusing the request, or None (the principal is then in the scope)."""
        if not self.settings.auth_enabled:
            host = _header(scope, b"host")
            if not is_loopback_peer(scope):
                return error_response(403, "forbidden", "no-auth mode serves loopback clients only")
            if host is None or host_name(host) not in LOOPBACK_HOSTS:
                return error_response(403, "forbidden", "no-auth mode answers only Host localhost, 127.0.0.1 or [::1]")
            if any(_header(scope, name) is not None for name in PROXY_HEADERS):
                # A proxy on this machine relays remote clients: they must not pass as local.
                return error_response(403, "forbidden", "no-auth mode refuses requests relayed by a proxy")
        if scope["method"] not in SAFE_METHODS:
            reason = cross_site(scope)
            if reason is not None:
                return error_response(403, "forbidden", f"{reason} refused for {scope['method']}")
        if scope["path"] == METRICS_PATH:
            return self._check_metrics(scope)
        route = self._route(scope)
        needed = self._scope_of(route) if route is not None else None
        if route is None or needed is None:
            return None
        scope["hpscale.route"] = route
        if not self.settings.auth_enabled:
            scope[PRINCIPAL_SCOPE_KEY] = NO_AUTH_PRINCIPAL
            return None
        header = _header(scope, b"authorization")
        if not header:
            return error_response(401, "unauthorized", "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return error_response(
                401,
                "unauthorized",
                "Authorization header must be 'Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        # The token is looked up first: a valid one is served whatever its address did before.
        try:
            principal = await tokens.authenticate(self.engine, token)
        except DomainError as error:
            if error.code == "unauthorized":
                return self._failed_lookup(scope, error.message)
            return domain_error_response(error)
        try:
            tokens.require_scope(principal, needed)
        except DomainError as error:
            return domain_error_response(error)
        scope[PRINCIPAL_SCOPE_KEY] = principal
        return None


class ThreadedJSONRequest(Request):
    """A request whose JSON body is parsed within `service.json_bounds` limits (a body that
    would build far more objects than any valid request is refused with 422 before it is
    parsed), in a worker thread when it is large, off the event loop."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            if len(body) > THREADED_JSON_BYTES:
                self._json = await to_thread.run_sync(loads_bounded, body)
            else:
                self._json = loads_bounded(body)
        return self._json


class OffLoopJSONRoute(APIRoute):
    """An APIRoute whose handler sees a `ThreadedJSONRequest` (set as routers' `route_class`)."""

    def get_route_handler(self):  # type: ignore[no-untyped-def]
        handler = super().get_route_handler()

        async def route_handler(request: Request):  # type: ignore[no-untyped-def]
            return await handler(ThreadedJSONRequest(request.scope, request.receive))

        return route_handler

"""The HTTP server `hpscale serve` runs: uvicorn's h11 protocol with connection-level limits.

uvicorn starts its keep-alive timer only after a response, so a connection that never
completes a request is never timed out, and it counts toward `limit_concurrency`: 512
connections that send nothing made every request a 503. `LimitedH11Protocol` (passed to
uvicorn by `hpscale serve` as `http="app.server:LimitedH11Protocol"`) closes them instead:

- **head deadline**: a connection must deliver a complete request head within
  `header_timeout` seconds of its start (of its first byte, for a later request on a
  keep-alive connection); a partial head then gets 408, an empty connection is closed;
- **body deadline**: the body must be complete within `body_timeout` seconds of the head,
  plus one second per `body_min_rate` bytes received (a large upload at a steady rate is
  never cut, a trickle is): 408 if no response has started, then close;
- **per-address cap**: a new connection from a client address (IPv6: its /64) that already
  holds `max_connections_per_client` closes that address's oldest idle one (no request in
  progress), so one address never holds more idle connections than that. Trusted proxies
  (`forwarded_allow_ips`) are exempt: they carry many clients;
- **process cap**: at most `max_connections` open connections (and never within 64 of the
  open-file limit); a new one beyond it closes the oldest idle connection, or is refused;
- **requests, not connections, count toward `limit_concurrency`**: past it a request gets
  503 with Retry-After at once, while idle connections cost nothing but a file descriptor.

All limits are per worker process and read from `service.settings.Settings` (the
`HPSCALE_*` variables `hpscale serve` hands its workers).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import re
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from app.errors import error_response
from app.security import client_key
from service.settings import Settings, parse_trusted_proxies

# Where a request head ends (h11 also accepts bare LF line endings).
_HEAD_END = re.compile(rb"\r?\n\r?\n")

# File descriptors a worker keeps for itself (database connections, log files, the refit child).
RESERVED_FILES = 64


def _open_file_limit() -> int | None:
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _raw_response(status: int, reason: str, code: str, message: str, extra: bytes = b"") -> bytes:
    """A complete `Connection: close` response in the contract's error shape, for moments when
    h11 has no request to answer (a head that never completed, a refused connection)."""
    body = json.dumps({"error": {"code": code, "message": message, "details": []}}).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


class ConnectionLimits:
    """The open connections of one worker process, oldest first, overall and per client address."""

    def __init__(self, settings: Settings) -> None:
        self.header_timeout = settings.header_timeout
        self.body_timeout = settings.body_timeout
        self.body_min_rate = settings.body_min_rate
        self.limit_concurrency = settings.limit_concurrency
        self.per_client = settings.max_connections_per_client
        files = _open_file_limit()
        self.max_connections = settings.max_connections
        if files is not None:
            self.max_connections = max(1, min(self.max_connections, files - RESERVED_FILES))
        trusted = parse_trusted_proxies(settings.forwarded_allow_ips or "")
        self.trust_all = "*" in trusted
        self.trusted = [ipaddress.ip_network(item, strict=False) for item in trusted if item != "*"]
        self.open: dict[LimitedH11Protocol, None] = {}  # insertion order: oldest first
        self.by_client: dict[str, dict[LimitedH11Protocol, None]] = {}

    def exempt(self, client: tuple[str, int] | None) -> bool:
        """Whether this peer is a trusted proxy (no per-address cap: it carries many clients)."""
        if client is None or not (self.trust_all or self.trusted):
            return False
        if self.trust_all:
            return True
        try:
            address = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted)

    @staticmethod
    def _oldest_idle(connections: dict[LimitedH11Protocol, None]) -> LimitedH11Protocol | None:
        return next((connection for connection in connections if connection.is_idle()), None)

    def admit(self, connection: LimitedH11Protocol) -> str | None:
        """Register a new connection, closing an idle one to make room; why it is refused, or None."""
        group = None
        if not connection.exempt:
            group = self.by_client.setdefault(connection.client_key, {})
            if len(group) >= self.per_client:
                # Requests in progress are bounded by limit_concurrency; what one address must
                # not do is hold idle connections. So only an idle one makes room.
                victim = self._oldest_idle(group)
                if victim is not None:
                    victim.close_idle()
        if len(self.open) >= self.max_connections:
            victim = self._oldest_idle(self.open)
            if victim is None:
                return f"the server holds its maximum of {self.max_connections} connections, all busy"
            victim.close_idle()
        self.open[connection] = None
        if group is not None:
            group[connection] = None
        return None

    def release(self, connection: LimitedH11Protocol) -> None:
        self.open.pop(connection, None)
        group = self.by_client.get(connection.client_key)
        if group is not None:
            group.pop(connection, None)
            if not group:
                del self.by_client[connection.client_key]


@functools.cache
def current_limits() -> ConnectionLimits:
    """This process's limits, built once from the environment's settings."""
    return ConnectionLimits(Settings())


def _requests_guard(app: Any, tasks: set[Any], limit: int) -> Any:
    """`app`, answering 503 + Retry-After while more than `limit` requests are in progress."""

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        # This request's own task is already in `tasks`.
        if scope["type"] == "http" and len(tasks) > limit:
            busy = error_response(
                503,
                "unavailable",
                f"the server has {limit} requests in progress; try again shortly",
                headers={"Retry-After": "1"},
            )
            await busy(scope, receive, send)
            return
        await app(scope, receive, send)

    return guarded


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the deadlines and caps of the module docstring."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = current_limits()
        # uvicorn would count open connections toward limit_concurrency; only requests count here.
        self.limit_concurrency = None
        self.app = _requests_guard(self.app, self.tasks, self.limits.limit_concurrency)
        self.client_key = "-"
        self.exempt = False
        self._admitted = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_started = 0.0
        self._body_received = 0

    # --- state --------------------------------------------------------------------------

    def is_idle(self) -> bool:
        """No request in progress: waiting for (the rest of) a request head."""
        return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

    def close_idle(self) -> None:
        """Close this idle connection to make room for a new one."""
        self._cancel_timers()
        if not self.transport.is_closing():
            self.transport.close()

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    def _sync_timers(self) -> None:
        """Arm or cancel the deadlines for where the request now is."""
        state = self.conn.their_state
        if state is not h11.IDLE and self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        elif state is h11.IDLE and self._head_timer is None and self.timeout_keep_alive_task is None:
            # Waiting for a head with no keep-alive timer running (e.g. a body that ended after
            # an early response, whose bytes cancelled that timer): the head's deadline runs.
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_deadline)
        if state is h11.SEND_BODY:
            if self._body_timer is None:
                self._body_started = self.loop.time()
                self._body_received = 0
                self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_deadline)
        elif self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    # --- deadlines ----------------------------------------------------------------------

    def _head_deadline(self) -> None:
        self._head_timer = None
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            return
        if self.conn.trailing_data[0]:  # part of a head arrived: say why the connection closes
            message = f"request head not complete within {self.limits.header_timeout:g} s"
            self.transport.write(_raw_response(408, "Request Timeout", "request_timeout", message))
        self.transport.close()

    def _body_deadline(self) -> None:
        self._body_timer = None
        if self.conn.their_state is not h11.SEND_BODY or self.transport.is_closing():
            return
        allowed = self.limits.body_timeout + self._body_received / self.limits.body_min_rate
        remaining = self._body_started + allowed - self.loop.time()
        if remaining > 0:  # the body keeps coming at the minimum rate: more time
            self._body_timer = self.loop.call_later(remaining, self._body_deadline)
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_started and self.conn.our_state is h11.SEND_RESPONSE:
            # The application waits for the body: it sees a disconnect and writes nothing more.
            cycle.disconnected = True
            cycle.message_event.set()
            message = (
                f"request body not complete within {self.limits.body_timeout:g} s "
                f"(+1 s per {self.limits.body_min_rate} bytes received)"
            )
            body = json.dumps({"error": {"code": "request_timeout", "message": message, "details": []}}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"connection", b"close"),
                (b"content-length", str(len(body)).encode()),
            ]
            try:
                output = self.conn.send(h11.Response(status_code=408, headers=headers, reason=b"Request Timeout"))
                output += self.conn.send(h11.Data(data=body))
                output += self.conn.send(h11.EndOfMessage())
                self.transport.write(output)
            except h11.LocalProtocolError:
                pass  # h11 will not frame it: the close below says enough
        self.transport.close()

    # --- the asyncio protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.client_key = client_key({"client": self.client})
        self.exempt = self.limits.exempt(self.client)
        refused = self.limits.admit(self)
        if refused is not None:
            transport.write(_raw_response(503, "Service Unavailable", "unavailable", refused, b"retry-after: 1\r\n"))
            transport.close()
            return
        self._admitted = True
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admitted:
            self.limits.release(self)
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        state = self.conn.their_state
        if state is h11.IDLE and self._head_too_long(data):
            return
        if state is h11.IDLE and self._head_timer is None and not self.transport.is_closing():
            # The first bytes of a later request on a keep-alive connection: its head's deadline.
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_deadline)
        elif state is h11.SEND_BODY:
            self._body_received += len(data)
        super().data_received(data)

    def _head_too_long(self, data: bytes) -> bool:
        """Refuse (431, then close) a request head longer than `h11_max_incomplete_event_size`.

        h11 applies that bound only while a head is incomplete, so a long head was refused
        (400) when TCP delivered it in pieces and served when it arrived whole: the same
        request got different answers. Measuring the head here makes the bound exact."""
        limit = self.config.h11_max_incomplete_event_size
        buffered = self.conn.trailing_data[0]
        if len(buffered) + len(data) <= limit:
            return False
        pending = buffered + data
        end = _HEAD_END.search(pending)
        if end is not None and end.end() <= limit:
            return False
        if not self.transport.is_closing():
            message = f"request line and headers exceed {limit} bytes (HPSCALE_H11_MAX_INCOMPLETE_EVENT_SIZE)"
            self.transport.write(
                _raw_response(431, "Request Header Fields Too Large", "request_head_too_large", message)
            )
            self._cancel_timers()
            self.transport.close()
        return True

    def handle_events(self) -> None:
        # Also called for pipelined requests once a response completes, not only on new data.
        super().handle_events()
        if not self.transport.is_closing():
            self._sync_timers()

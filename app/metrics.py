"""`GET /metrics` and the middleware that counts every request (see `service.metrics`)."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics


class MetricsMiddleware:
    """Count each HTTP request by method, route template and status, with its latency.

    The route template comes from the router (`scope["route"]`) after it has matched, so a
    study's name never becomes a label; a path no route matches is `unmatched`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        except BaseException as error:
            if metrics.is_database_error(error):
                metrics.DATABASE_ERRORS.labels(type(error).__name__).inc()
            raise
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            metrics.record_request(scope["method"], template, status, time.perf_counter() - started)


def metrics_endpoint() -> Any:
    """The `/metrics` handler. With a metrics token, `app.security.SecurityGate` checks it first
    (the same bearer check and failed-lookup limit as every /v1 route)."""

    async def endpoint(request: Request) -> Response:
        body, content_type = metrics.exposition(request.app.state.engine)
        return Response(body, media_type=content_type)

    return endpoint

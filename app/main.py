"""The FastAPI application: health, studies, runs, fits, the dashboard.

Routers parse the request, call the service (`service/`), and return its answer; the
service's domain exceptions become the contract's error bodies in `app/errors.py`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from app import dashboard, docs
from app.cache import RepeatedGetCache
from app.errors import DatabaseUnavailableGuard, error_response, install_error_handlers
from app.metrics import MetricsMiddleware, metrics_endpoint
from app.routers import curves, decisions, fits, runs, studies
from app.security import SecurityGate
from service.database import Engine, open_database, readiness_async
from service.fits import start_background_refits, stop_background_refits
from service.settings import Settings

CACHED_GET_PATHS = re.compile(r"/v1/studies/[^/]+/recommendation")


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413, before anything parses them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = error_response(413, "payload_too_large", f"request body exceeds {self.max_bytes} bytes")
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await too_large(scope, receive, send)
                    return
        received = 0

        async def limited_receive():  # type: ignore[no-untyped-def]
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException, because FastAPI re-raises those from body reading
                    # (anything else becomes a 400) and the error handlers render it.
                    raise StarletteHTTPException(413, f"request body exceeds {self.max_bytes} bytes")
            return message

        try:
            await self.app(scope, limited_receive, send)
        except StarletteHTTPException as error:
            if error.status_code != 413:
                raise
            await too_large(scope, receive, send)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """Build the app; settings default to the environment (what `hpscale serve` sets),
    validated here, before the app exists."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if engine is None:
            start_background_refits()  # a server: its fitting child is ready before the first fit
        yield
        if engine is None:
            # This app owns its resources (a server, not an embedding test): its refit child too.
            stop_background_refits()
            app.state.engine.dispose()

    app = FastAPI(
        title="hpscale",
        version="1",
        summary="Hyperparameter transfer and scaling laws: store proxy sweeps, fit laws, recommend.",
        lifespan=lifespan,
        # /docs and /redoc come from app/docs.py: packaged assets, no CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine or open_database(settings.database_url)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # Launchers ask the same question again and again right before jobs start.
    app.add_middleware(RepeatedGetCache, engine=app.state.engine, paths=CACHED_GET_PATHS)
    # Outermost: no-auth peer/Host rules, Origin, token and scope, all before any body is read.
    app.add_middleware(SecurityGate, settings=settings, engine=app.state.engine, router_app=app)
    # Outermost: database failures anywhere (the gate's token check too) are 503 + Retry-After.
    app.add_middleware(DatabaseUnavailableGuard)
    # Outside even that: every request is counted for /metrics, refusals included.
    app.add_middleware(MetricsMiddleware)
    # Guarded by SecurityGate when the server has a metrics token.
    app.add_route("/metrics", metrics_endpoint(), methods=["GET"], include_in_schema=False)

    # Both async: they must answer while every worker thread waits on the database or a fit.
    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "not ready"}})
    async def readyz() -> JSONResponse:
        state = await readiness_async(app.state.engine)
        if not state.ready:
            return error_response(503, "unavailable", state.message)
        return JSONResponse({"status": "ready", "schema_revision": state.revision})

    app.include_router(studies.router)
    app.include_router(runs.router)
    app.include_router(fits.router)
    app.include_router(curves.router)
    app.include_router(decisions.router)
    app.include_router(dashboard.router)
    app.include_router(docs.router)
    app.openapi = lambda: _openapi_with_bearer(app)  # type: ignore[method-assign]
    return app


BEARER_SCHEME = "bearerAuth"


def _openapi_with_bearer(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document with the bearer-token scheme declared and required by every /v1
    operation, so /docs offers "Authorize" and its "Try it out" sends the token (the routes read
    the header themselves, so FastAPI would not declare it)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes, description=app.description
        )
        schema.setdefault("components", {})["securitySchemes"] = {
            BEARER_SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "description": "a token from `hpscale tokens create --scope read|write|admin` "
                "(not needed when the server runs with --no-auth)",
            }
        }
        for path, operations in schema.get("paths", {}).items():
            if path.startswith("/v1/"):
                for operation in operations.values():
                    operation["security"] = [{BEARER_SCHEME: []}]
        app.openapi_schema = schema
    return app.openapi_schema

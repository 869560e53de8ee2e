"""`/docs` (Swagger UI) and `/redoc` (ReDoc) that work without internet.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so `/docs` is blank offline and
its inline script breaks the dashboard's Content-Security-Policy. Here the assets come from
a Python package installed with hpscale (`fastapi-offline`, which ships swagger-ui-bundle.js,
swagger-ui.css and redoc.standalone.js) and are served by the app at `/docs-assets/…`;
Swagger UI is started by a script file of ours (`app/docs_assets/swagger-init.js`), ReDoc by
its `<redoc>` element, so the pages need no inline script and no other origin. The pages and
assets carry the dashboard's security headers with one relaxation: inline *styles* are
allowed (`style-src 'self' 'unsafe-inline'`), because ReDoc's styled-components writes its
CSS into <style> elements and fails without them (Swagger UI sets style attributes).
Scripts stay `script-src 'self'`, and every fetch stays on the service (`connect-src 'self'`).
Two more things keep `/redoc` free of refused loads (console errors): ReDoc's search index runs
in a Web Worker it creates from a `blob:` URL of its own code, so these pages allow
`worker-src 'self' blob:` (a worker can only come from a script that already runs here); and
its sidebar's "API docs by Redocly" logo, fetched from cdn.redoc.ly, is served by the app
instead (the bundle's one outside URL is rewritten to `/docs-assets/redoc-logo.svg`).
`/openapi.json` declares the bearer-token scheme (`app.main`), so Swagger UI's "Authorize" sends
the token on every "Try it out".
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.dashboard import _SECURITY_HEADERS

_PACKAGED = Path(fastapi_offline.__file__).resolve().parent / "static"
_OURS = Path(__file__).resolve().parent / "docs_assets"
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
# ReDoc's only request to another origin, and what it becomes.
_REDOC_CDN_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
_REDOC_LOCAL_LOGO = b"/docs-assets/redoc-logo.svg"


def _assets() -> dict[str, tuple[bytes, str, str]]:
    """name → (body, content type, etag) of every asset the pages may load (read once)."""
    found = {}
    for directory in (_PACKAGED, _OURS):
        for path in sorted(directory.iterdir()):
            if path.suffix in _TYPES:
                body = path.read_bytes()
                if path.name == "redoc.standalone.js":
                    body = body.replace(_REDOC_CDN_LOGO, _REDOC_LOCAL_LOGO)
                found[path.name] = (body, _TYPES[path.suffix], '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    return found


ASSETS = _assets()
router = APIRouter(include_in_schema=False)
_HEADERS = {
    **_SECURITY_HEADERS,
    "Content-Security-Policy": _SECURITY_HEADERS["Content-Security-Policy"].replace(
        "style-src 'self'", "style-src 'self' 'unsafe-inline'"
    )
    + "; worker-src 'self' blob:",
}
assert "'unsafe-inline'" in _HEADERS["Content-Security-Policy"]

_SWAGGER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hpscale API: Swagger UI</title>
<link rel="icon" type="image/png" href="/docs-assets/favicon.png">
<link rel="stylesheet" href="/docs-assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs-assets/swagger-ui-bundle.js"></script>
<script src="/docs-assets/swagger-init.js"></script></body></html>
"""
_REDOC_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hpscale API: ReDoc</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" type="image/png" href="/docs-assets/favicon.png"></head>
<body><redoc spec-url="/openapi.json"></redoc>
<script src="/docs-assets/redoc.standalone.js"></script></body></html>
"""


@router.get("/docs", response_class=HTMLResponse)
def swagger_ui() -> HTMLResponse:
    return HTMLResponse(_SWAGGER_PAGE, headers=_HEADERS)


@router.get("/redoc", response_class=HTMLResponse)
def redoc() -> HTMLResponse:
    return HTMLResponse(_REDOC_PAGE, headers=_HEADERS)


@router.get("/docs-assets/{name}")
def asset(name: str) -> Response:
    found = ASSETS.get(name)
    if found is None:
        raise StarletteHTTPException(404, "no such asset")
    body, content_type, etag = found
    headers = {**_HEADERS, "ETag": etag, "Cache-Control": "public, max-age=3600"}
    return Response(body, media_type=content_type, headers=headers)

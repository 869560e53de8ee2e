"""The dashboard: static HTML shells at `/` and `/studies/{name}`, and their assets.

The pages are plain files that need no auth to load; their JavaScript is an ordinary
client of the `/v1` API (with the bearer token the user typed, kept in the browser's
session storage). Nothing here reads the database, so the dashboard sees exactly what
any other client sees.

Every asset is served by the service itself (no CDN): `app/static/`. Assets are read
once at import; each page links them as `/static/<file>?v=<content hash>`, so an asset
fetched with the current hash is cached for a year (`immutable`), and the pages
themselves are `no-cache` (revalidated with their ETag) so a new release shows at once.

Scripts: `common.js` (API client, DOM and number helpers: the global `HP`) and `charts.js`
(SVG plots: `Charts`) are classic scripts; everything else is an ES module (`study.js` loads
and wires the study page; `studystate.js` its state; one module per view: `recommend.js`,
`laws.js`, `landscape.js`, `diagnostics.js`, `runs.js`, `runstates.js`, `exclude.js`;
`index.js` the overview; `run.js` a run's page at `/studies/{name}/runs/{id}`), and their
relative imports are versioned the same way. The
dashboard computes no statistics: curves, bands and run states come from the API
(`GET /v1/studies/{name}/fits/{id}/curves`, `.../run-states`). Style: prettier at 120 columns
and eslint, configured in `.ci/js/` (`tests/test_dashboard_static.py`).
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

STATIC_DIR = Path(__file__).resolve().parent / "static"

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
    ".ico": "image/x-icon",
    ".png": "image/png",
}

# The pages load only what the service serves; no inline script, no other origin.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str
    version: str


# `import … from "./name.js"` in an ES module of app/static/.
_IMPORT = re.compile(rb"""(\bfrom\s+|\bimport\s*\(?\s*)(["'])\./([A-Za-z0-9_.-]+\.js)\2""")


def _load_assets() -> dict[str, Asset]:
    """Every file of app/static; an ES module's imports are rewritten to `./name.js?v=<hash>` of
    the imported module (dependencies first), so a versioned, immutable module never loads a
    stale dependency after a release."""
    raw: dict[str, bytes] = {}
    for path in sorted(STATIC_DIR.iterdir()) if STATIC_DIR.is_dir() else []:
        if path.is_file() and not path.name.startswith("."):
            raw[path.name] = path.read_bytes()
    assets: dict[str, Asset] = {}

    def load(name: str, seen: tuple[str, ...] = ()) -> Asset:
        if name in assets:
            return assets[name]
        if name in seen:
            raise RuntimeError(f"import cycle in app/static: {' -> '.join((*seen, name))}")
        body = raw[name]
        if name.endswith(".js"):

            def versioned(m: re.Match[bytes]) -> bytes:
                dep = m.group(3).decode()
                if dep not in raw:
                    raise RuntimeError(f"app/static/{name} imports a missing module ./{dep}")
                v = load(dep, (*seen, name)).version
                return m.group(1) + m.group(2) + f"./{dep}?v={v}".encode() + m.group(2)

            body = _IMPORT.sub(versioned, body)
        digest = hashlib.sha256(body).hexdigest()
        suffix = Path(name).suffix
        content_type = _CONTENT_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
        assets[name] = Asset(body, content_type, f'"{digest[:32]}"', digest[:12])
        return assets[name]

    for name in raw:
        load(name)
    return assets


ASSETS = _load_assets()


def _render_page(template: str) -> Asset:
    """A page with its asset links versioned by content hash."""
    text = ASSETS[template].body.decode()
    for name, asset in ASSETS.items():
        text = text.replace(f'"/static/{name}"', f'"/static/{name}?v={asset.version}"')
    body = text.encode()
    digest = hashlib.sha256(body).hexdigest()
    return Asset(body, _CONTENT_TYPES[".html"], f'"{digest[:32]}"', digest[:12])


PAGES = {"index": _render_page("index.html"), "study": _render_page("study.html"), "run": _render_page("run.html")}

router = APIRouter(include_in_schema=False)


def _not_modified(request: Request, asset: Asset) -> bool:
    tags = request.headers.get("if-none-match", "")
    return asset.etag in {t.strip().removeprefix("W/") for t in tags.split(",")}


def _page(request: Request, asset: Asset) -> Response:
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache", **_SECURITY_HEADERS}
    if _not_modified(request, asset):
        return Response(status_code=304, headers=headers)
    return HTMLResponse(asset.body, headers=headers)


@router.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
def index_page(request: Request) -> Response:
    """The list of studies."""
    return _page(request, PAGES["index"])


@router.api_route("/studies/{name}", methods=["GET", "HEAD"], response_class=HTMLResponse)
def study_page(request: Request, name: str) -> Response:
    """One study; the page reads the name from its own URL and asks the API."""
    return _page(request, PAGES["study"])


@router.api_route("/studies/{name}/runs/{run_id}", methods=["GET", "HEAD"], response_class=HTMLResponse)
def run_page(request: Request, name: str, run_id: str) -> Response:
    """One run; the page reads the study and run id from its own URL and asks the API."""
    return _page(request, PAGES["run"])


@router.api_route("/static/{filename}", methods=["GET", "HEAD"])
def static_asset(request: Request, filename: str, v: str | None = None) -> Response:
    asset = ASSETS.get(filename)
    if asset is None or filename.endswith(".html"):
        raise StarletteHTTPException(404, f"no static file '{filename}'")
    if v is not None and v == asset.version:
        cache = "public, max-age=31536000, immutable"
    else:
        cache = "public, max-age=300, must-revalidate"
    headers = {"ETag": asset.etag, "Cache-Control": cache, "X-Content-Type-Options": "nosniff"}
    if _not_modified(request, asset):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.content_type, headers=headers)


@router.get("/favicon.ico")
def favicon(request: Request) -> Response:
    return static_asset(request, "favicon.svg")

"""/docs (Swagger UI) and /redoc (ReDoc) render in Chromium from assets the service ships: no
request leaves the service, no inline script (the dashboard's CSP)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.test_dashboard_e2e import _serve, _stop, browser  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow  # starts a server and a browser


def test_docs_pages_name_only_local_assets(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        response = client.get(page)
        assert response.status_code == 200
        assert "http://" not in response.text and "https://" not in response.text
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert "<script>" not in response.text  # every script is a file
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "swagger-init.js"):
        asset = client.get(f"/docs-assets/{name}")
        assert asset.status_code == 200 and len(asset.content) > 100
    assert client.get("/docs-assets/..%2Fdocs.py").status_code == 404
    assert client.get("/docs-assets/nope.js").status_code == 404


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = f"sqlite:///{tmp_path_factory.mktemp('docs') / 'hpscale.db'}"
    process, base = _serve(url, no_auth=True)
    try:
        yield base
    finally:
        _stop(process)


@pytest.mark.parametrize(
    "page, ready",
    [
        ("/docs", ".swagger-ui .opblock-summary-path[data-path='/v1/studies/{name}/recommendation']"),
        ("/redoc", "h1 >> text=hpscale"),
    ],
)
def test_docs_render_offline(browser, server: str, page: str, ready: str, tmp_path: Path) -> None:  # noqa: F811
    context = browser.new_context()
    tab = context.new_page()
    requested: list[str] = []
    outside: list[str] = []

    def check(route) -> None:  # type: ignore[no-untyped-def]
        requested.append(route.request.url)
        if route.request.url.startswith(server):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    tab.route("**/*", check)
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.goto(server + page)
    tab.wait_for_selector(ready, timeout=30_000)
    tab.screenshot(path=str(tmp_path / "page.png"))
    context.close()
    assert outside == [], f"requests left the service: {outside}"
    assert any(url.endswith("/openapi.json") for url in requested)
    assert errors == []

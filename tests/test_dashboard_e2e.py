"""The dashboard end to end: a real `hpscale serve` on the Step Law data, driven by headless
Chromium (Debian's `chromium`, through Playwright for Python with `executable_path`).

Checks that every plot draws the number of series and points the API implies (counted
from the chart's data attributes *and* from the SVG elements actually drawn), that the
recommendation form answers what the API answers, and that it works both with `--no-auth`
and with a bearer token typed into the page. Screenshots go to tests/artifacts/ (git-ignored).

Without a browser the test is skipped locally, but fails when CI is set: `.ci/run`
installs Chromium, so a missing browser there is a broken CI, not a reason to skip.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import STEPLAW_CSV, steplaw_import_argv
from tests.test_serve import free_port, serve_argv, wait_healthy

pytestmark = pytest.mark.slow  # starts servers or a browser

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TARGET = {"n_params": "7e9", "tokens": "1.4e12", "width": "4096", "depth": "32"}
# A small bootstrap keeps the fit the page asks for at ~10 s; the numbers are still real.
FIT_BOOTSTRAP = "40"
TIMEOUT_MS = 90_000


def expect(locator):  # imported lazily: playwright may be missing where the test skips
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def _need(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: .ci/run must install it)")
    pytest.skip(reason)


def _chromium() -> str:
    path = os.environ.get("HPSCALE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        _need("no Chromium: apt-get install chromium (Debian) to run the dashboard e2e test")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("playwright (Python) is not installed: pip install -e '.[test]'")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS[1:], headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def steplaw_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    if not STEPLAW_CSV.exists():
        pytest.fail(f"shared Step Law data missing: {STEPLAW_CSV}")
    url = f"sqlite:///{tmp_path_factory.mktemp('dash') / 'hpscale.db'}"
    args = [sys.executable, "-m", "hpscale.cli", *steplaw_import_argv(url)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return url


def _serve(url: str, *, no_auth: bool, token: str | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "HPSCALE_BOOTSTRAP": FIT_BOOTSTRAP}
    env.pop("HPSCALE_NO_AUTH", None)
    if token:
        env["HPSCALE_BOOTSTRAP_ADMIN_TOKEN"] = token
    cmd = serve_argv(url, port)
    if no_auth:
        cmd.append("--no-auth")
    process = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, process)
    except BaseException:
        process.terminate()
        raise
    return process, base


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def _all_runs(client: httpx.Client) -> list[dict]:
    runs, cursor = [], None
    while True:
        page = client.get(
            "/v1/studies/steplaw/runs", params={"limit": 1000, **({"cursor": cursor} if cursor else {})}
        ).json()
        runs += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return runs


def _chart(page, chart_id: str) -> dict[str, int]:
    box = page.locator(f"#{chart_id}")
    counts = {k: int(box.get_attribute(f"data-{k}-count") or -1) for k in ("series", "point", "law", "band", "target")}
    counts["drawn_points"] = box.locator("[data-role=point]").count()
    counts["drawn_series"] = box.locator("g.series.role-data").count()
    counts["drawn_laws"] = box.locator("path.law").count()
    counts["drawn_bands"] = box.locator("path.band").count()
    counts["drawn_targets"] = box.locator("[data-role=target]").count()
    return counts


def _check_plots(page, client: httpx.Client, rec: dict | None) -> None:
    """Every plot against what the API says: scales, completed runs, optima, laws, target."""
    runs = _all_runs(client)
    fit = client.get("/v1/studies/steplaw/fits/latest").json()
    scales = {(r["n_params"], r["tokens"], r["width"], r["depth"]) for r in runs}
    completed = [r for r in runs if r["status"] == "completed" and r["final_loss"] is not None]
    assert len(scales) == 15 and len(runs) == 1746  # the shared data as we know it

    # Loss landscape: one panel per scale, every run drawn once (marked by its fit state).
    land = page.locator("#landscape")
    panels = land.locator(".chart.small")
    assert int(land.get_attribute("data-panel-count")) == panels.count() == len(scales)
    drawn = sum(int(p.get_attribute("data-point-count")) for p in panels.all())
    assert drawn == len(runs) and len(completed) <= drawn
    assert sum(p.locator("[data-role=point]").count() for p in panels.all()) == len(runs)
    states = client.get("/v1/studies/steplaw/fits/latest/run-states").json()
    assert sum(states["counts"].values()) == len(runs)
    # the runs drawn as diverged are the ones the fit counts as diverged (status, or left the basin)
    n_diverged = sum(o["n_diverged"] for o in fit["optima"])
    assert states["counts"]["diverged"] == n_diverged
    marked = land.locator("g.series[data-name^='treated as diverged'] [data-role=point]").count()
    assert marked == n_diverged
    # bowls and optimum intervals come from the API's curves: one per scale with a learning-rate optimum
    curves = client.get("/v1/studies/steplaw/fits/latest/curves", params={"points": 40}).json()
    assert sum(p.locator("path.law").count() for p in panels.all()) == len(curves["bowls"])

    # Heatmap: one cell per stored (lr, batch) grid point of the chosen (default: largest) scale.
    heat = page.locator("#heatmap")
    key = page.locator("#heat-scale").input_value()
    n, d = float(key.split("|")[0]), float(key.split("|")[1])
    grid = {
        (f"{r['learning_rate']:.5g}", f"{r['batch_size']:.5g}") for r in runs if (r["n_params"], r["tokens"]) == (n, d)
    }
    assert int(heat.get_attribute("data-cell-count")) == heat.locator("rect.cell").count() == len(grid)
    assert heat.locator("path.contour").count() == int(heat.get_attribute("data-contour-count")) >= 1

    for axis in ("learning_rate", "batch_size", "weight_decay"):
        c = _chart(page, f"chart-opt-{axis}")
        optima = [o for o in fit["optima"] if o.get(axis)]
        has_law = axis in fit["laws"]
        assert c["point"] == c["drawn_points"] == len(optima), axis
        assert c["law"] == c["drawn_laws"] == int(has_law and bool(optima)), axis
        assert c["band"] == c["drawn_bands"] == int(has_law and bool(optima)), axis
        expect_target = int(rec is not None and rec.get(axis) is not None and bool(optima))
        assert c["target"] == c["drawn_targets"] == expect_target, axis
    # Step Law sweeps learning rate and batch size at every scale, never weight decay.
    assert _chart(page, "chart-opt-learning_rate")["point"] == 15
    assert _chart(page, "chart-opt-batch_size")["point"] == 15
    assert "learning_rate" in fit["laws"] and "batch_size" in fit["laws"]

    loss = _chart(page, "chart-loss-law")
    with_loss = [o for o in fit["optima"] if o.get("loss") is not None]
    n_sizes = len({o["scale"]["n_params"] for o in with_loss})
    assert loss["point"] == loss["drawn_points"] == len(with_loss)
    if fit.get("loss_law"):
        # one law line per model size N, plus the target's N once there is a target
        assert loss["law"] == loss["drawn_laws"] == n_sizes + (1 if rec else 0)
        assert loss["target"] == int(rec is not None)


def _submit_recommendation(page) -> float:
    for field, value in TARGET.items():
        page.fill(f"#rec-{field}", value)
    page.click("#rec-submit")
    tile = page.locator("#rec-lr")
    tile.wait_for(timeout=TIMEOUT_MS)
    shown = float(tile.locator(".tile-value").inner_text())
    assert math.isclose(shown, float(tile.get_attribute("data-value")), rel_tol=5e-3)
    expect(page.locator("#chart-opt-learning_rate")).to_have_attribute("data-target-count", "1", timeout=TIMEOUT_MS)
    return shown


def _wait_for_charts(page) -> None:
    # (Playwright's expect, not wait_for_function: the pages' CSP forbids eval, rightly.)
    expect(page.locator("#chart-opt-learning_rate")).to_have_attribute("data-law-count", "1", timeout=TIMEOUT_MS)
    expect(page.locator("#heatmap")).to_have_attribute("data-rendered", "1", timeout=TIMEOUT_MS)
    for chart in ("chart-opt-batch_size", "chart-opt-weight_decay", "chart-loss-law"):
        expect(page.locator(f"#{chart}")).to_have_attribute("data-rendered", "1", timeout=TIMEOUT_MS)


def test_dashboard_no_auth(browser, steplaw_db: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    process, base = _serve(steplaw_db, no_auth=True)
    errors: list[str] = []
    try:
        # the pages are static shells next to the API, which they do not shadow
        assert httpx.get(f"{base}/").headers["content-type"].startswith("text/html")
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        assert "openapi" in httpx.get(f"{base}/openapi.json").json()
        client = httpx.Client(base_url=base, timeout=120)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        external: list[str] = []
        page.on(
            "request", lambda r: None if r.url.startswith(base) or r.url.startswith("data:") else external.append(r.url)
        )

        page.goto(f"{base}/")
        page.locator("#studies-table a", has_text="steplaw").click()
        page.wait_for_url(f"{base}/studies/steplaw")

        # No fit yet: the page says so and offers to fit (the no-auth principal may write).
        fit_now = page.locator("#fit-now")
        if client.get("/v1/studies/steplaw/fits/latest").status_code == 404:
            fit_now.wait_for(state="visible", timeout=TIMEOUT_MS)
            fit_now.click()
        _wait_for_charts(page)
        _check_plots(page, client, rec=None)

        shown_lr = _submit_recommendation(page)
        api_rec = client.get("/v1/studies/steplaw/recommendation", params=TARGET).json()
        assert math.isclose(shown_lr, api_rec["learning_rate"]["value"], rel_tol=5e-3)
        assert 1e-5 < shown_lr < 1e-2
        assert page.locator("#rec-baselines tr[data-baseline=step_law]").count() == 1
        _check_plots(page, client, rec=api_rec)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(ARTIFACTS / "dashboard-1280x800.png"))
        page.locator("#recommend").screenshot(path=str(ARTIFACTS / "dashboard-recommendation.png"))
        page.locator(".charts").screenshot(path=str(ARTIFACTS / "dashboard-charts-1280.png"))
        page.locator("#diagnostics").screenshot(path=str(ARTIFACTS / "dashboard-diagnostics.png"))

        # Runs table: server-side pages and filters.
        table = page.locator("#runs-table")
        assert table.get_attribute("data-row-count") == "100"
        page.click("#runs-next")
        expect(page.locator("#runs-page")).to_have_text(re.compile(r"^Page 2"), timeout=TIMEOUT_MS)
        page.fill("#filter-width", "960")
        page.select_option("#filter-limit", "1000")
        page.click("#runs-filter button[type=submit]")
        n960 = sum(1 for r in _all_runs(client) if r["width"] == 960)
        expect(table).to_have_attribute("data-row-count", str(n960), timeout=TIMEOUT_MS)
        box = page.locator("#runs").bounding_box()  # viewport coordinates; the clip wants page ones
        top = box["y"] + page.evaluate("window.scrollY")
        page.screenshot(
            path=str(ARTIFACTS / "dashboard-runs-1280.png"),
            full_page=True,
            clip={"x": box["x"], "y": top, "width": box["width"], "height": min(box["height"], 900)},
        )

        # A narrow window: everything stacks, the charts redraw at the new width.
        page.set_viewport_size({"width": 390, "height": 844})
        page.wait_for_timeout(400)
        width = page.evaluate("document.querySelector('#chart-opt-learning_rate svg').getAttribute('width')")
        assert int(width) < 390
        assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # no sideways scrolling
        _check_plots(page, client, rec=api_rec)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(ARTIFACTS / "dashboard-narrow-390x844.png"))
        page.locator(".charts").screenshot(path=str(ARTIFACTS / "dashboard-charts-narrow-390.png"))
        assert not external, f"requests left the service: {external}"
        assert not errors, errors
        context.close()
    finally:
        _stop(process)


def test_dashboard_with_token(browser, steplaw_db: str) -> None:
    token = "hps_dashboard-e2e-token-0123456789-ABCDEFGHIJKLMNOPQRS"
    process, base = _serve(steplaw_db, no_auth=False, token=token)
    errors: list[str] = []
    try:
        # The shells load without a token; the API does not.
        assert httpx.get(f"{base}/studies/steplaw").status_code == 200
        assert httpx.get(f"{base}/v1/studies").status_code == 401
        client = httpx.Client(base_url=base, timeout=120, headers={"Authorization": f"Bearer {token}"})
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        auth_headers: list[str | None] = []
        page.on("request", lambda r: auth_headers.append(r.headers.get("authorization")) if "/v1/" in r.url else None)

        page.goto(f"{base}/studies/steplaw")
        banner = page.locator("#banner")
        banner.wait_for(state="visible", timeout=TIMEOUT_MS)
        assert "token" in banner.inner_text().lower()

        page.fill("#token-input", token)
        page.click("#token-form button[type=submit]")
        assert page.evaluate("sessionStorage.getItem('hpscale.token')") == token
        _submit_recommendation(page)  # fits first if no fit is current
        _wait_for_charts(page)
        api_rec = client.get("/v1/studies/steplaw/recommendation", params=TARGET).json()
        assert math.isclose(
            float(page.locator("#rec-lr").get_attribute("data-value")), api_rec["learning_rate"]["value"], rel_tol=1e-9
        )
        _check_plots(page, client, rec=api_rec)
        assert f"Bearer {token}" in auth_headers

        # The token survives a reload (session storage) and the index lists the study.
        page.goto(f"{base}/")
        page.locator("#studies-table a", has_text="steplaw").wait_for(timeout=TIMEOUT_MS)
        assert page.locator("#banner").is_hidden()
        assert not errors, errors
        context.close()
    finally:
        _stop(process)


def test_static_assets_and_pages(steplaw_db: str) -> None:
    """Content types, caching and security headers, without a browser."""
    from fastapi.testclient import TestClient

    from app.dashboard import ASSETS
    from app.main import create_app
    from service.settings import Settings

    with TestClient(create_app(Settings(database_url=steplaw_db))) as client:
        page = client.get("/studies/steplaw")
        assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["cache-control"] == "no-cache"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert client.get("/studies/steplaw", headers={"If-None-Match": page.headers["etag"]}).status_code == 304
        assert client.head("/").status_code == 200
        for name, content_type in [
            ("charts.js", "text/javascript"),
            ("dashboard.css", "text/css"),
            ("favicon.svg", "image/svg+xml"),
        ]:
            versioned = f"/static/{name}?v={ASSETS[name].version}"
            assert versioned in page.text
            r = client.get(versioned)
            assert r.status_code == 200 and r.headers["content-type"].startswith(content_type)
            assert "immutable" in r.headers["cache-control"]
            assert "immutable" not in client.get(f"/static/{name}").headers["cache-control"]
        assert client.get("/static/nope.js").status_code == 404
        assert client.get("/static/..%2Fdashboard.py").status_code == 404
        assert client.get("/static/study.html").status_code == 404
        # the API keeps its own answers (auth on: 401 JSON, not a page)
        assert client.get("/v1/studies").status_code == 401
        assert client.get("/docs").status_code == 200
        # no CDN: every script and stylesheet the pages name is served here
        for html in ("/", "/studies/x"):
            text = client.get(html).text
            assert "http://" not in text and "https://" not in text

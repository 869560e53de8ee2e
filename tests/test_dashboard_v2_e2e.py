"""Dashboard v2 end to end on small real data: two Marin optimizers imported as two studies, a
3-run study with no law, and an unknown study. Chromium through Playwright, as in
tests/test_dashboard_e2e.py (its fixtures: Debian's browser, no request leaving the service).

Checks the studies overview (run counts, fit state, extrapolation), the comparison (one law per
selected study, exponents table), that a drawn band is the API's (whose edges equal the
recommendation's interval at two x values), the heatmap's cells, excluding a run from the table
changing `n_runs` of the next fit, the empty and 404 states, and no sideways scroll at 390 px.
Screenshots go to tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from fitting.datasets import load_marin
from tests import test_dashboard_e2e as e2e
from tests.test_dashboard_e2e import ARTIFACTS, TIMEOUT_MS, _serve, _stop, expect

browser = e2e.browser  # the same Chromium fixture
pytestmark = pytest.mark.slow  # starts a server and a browser
OPTIMIZERS = ("adamw", "muon")


def _records(optimizer: str) -> list[dict]:
    t = load_marin(optimizer)
    out = []
    for i in range(len(t)):
        r = {
            "n_params": float(t.n_params[i]),
            "tokens": float(t.tokens[i]),
            "width": int(t.width[i]),
            "depth": int(t.depth[i]),
            "seq_len": int(t.seq_len[i]),
            "learning_rate": float(t.learning_rate[i]),
            "batch_size": round(float(t.batch_size[i])),
            "weight_decay": float(t.weight_decay[i]),
            "status": str(t.status[i]),
            "run_key": f"marin-{optimizer}-{i}",
        }
        if math.isfinite(float(t.final_loss[i])):
            r["final_loss"] = float(t.final_loss[i])
        out.append(r)
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, httpx.Client]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('dash2') / 'hpscale.db'}"
    upgrade = [sys.executable, "-m", "hpscale.cli", "db", "upgrade", "--database-url", url]
    assert subprocess.run(upgrade, capture_output=True, timeout=120).returncode == 0
    process, base = _serve(url, no_auth=True)
    try:
        client = httpx.Client(base_url=base, timeout=120)
        for opt in OPTIMIZERS:
            name = f"marin-{opt}"
            r = client.post("/v1/studies", json={"name": name, "optimizer": opt, "description": f"Marin {opt}"})
            assert r.status_code == 201, r.text
            assert client.post(f"/v1/studies/{name}/runs", json={"runs": _records(opt)}).status_code in (200, 201)
            assert client.post(f"/v1/studies/{name}/fits", json={"bootstrap": 40}).status_code == 201
        assert client.post("/v1/studies", json={"name": "tiny"}).status_code == 201
        tiny = [
            {"n_params": 1e8, "tokens": 2e9, "learning_rate": lr, "batch_size": 64, "final_loss": loss}
            for lr, loss in ((1e-3, 3.3), (2e-3, 3.2), (4e-3, 3.25))
        ]
        assert client.post("/v1/studies/tiny/runs", json={"runs": tiny}).status_code in (200, 201)
        client.post("/v1/studies/tiny/fits", json={"bootstrap": 10})  # too little data for laws: 409 or a lawless fit
        yield base, client
    finally:
        _stop(process)


def _no_sideways_scroll(page) -> None:
    assert page.evaluate("document.documentElement.scrollWidth") <= page.viewport_size["width"] + 1


def _shoot(page, name: str, selector: str | None = None) -> None:
    target = page.locator(selector) if selector else page
    target.screenshot(path=str(ARTIFACTS / f"v2-{name}.png"))


def test_overview_and_comparison(browser, server) -> None:
    base, client = server
    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    external: list[str] = []
    for width, height in ((1280, 800), (390, 844)):
        context = browser.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: None if r.url.startswith(base) else external.append(r.url))
        page.goto(f"{base}/")
        for opt in OPTIMIZERS:
            row = page.locator(f"#studies-table tr[data-study=marin-{opt}]")
            n = client.get(f"/v1/studies/marin-{opt}").json()["run_count"]
            expect(row.locator("td").nth(3)).to_have_text(f"{n:,}", timeout=TIMEOUT_MS)
            expect(row.locator("td").nth(4)).to_contain_text("current", timeout=TIMEOUT_MS)
            expect(row.locator("td").nth(5)).to_contain_text(re.compile("interpolation|extrapolation|far"))
            row.locator("input.compare-pick").check()
        chart = page.locator("#compare-learning_rate")
        expect(chart).to_have_attribute("data-law-count", "2", timeout=TIMEOUT_MS)
        assert chart.locator("path.law").count() == 2 and chart.locator("path.band").count() == 2
        assert page.locator("#compare-batch_size path.law").count() == 2
        assert page.locator("#compare-table tr[data-law=learning_rate]").count() == 2
        assert chart.locator(".axes text").count() > 4  # tick labels and axis labels
        _no_sideways_scroll(page)
        suffix = f"{width}"
        page.evaluate("window.scrollTo(0, 0)")
        _shoot(page, f"overview-{suffix}")
        _shoot(page, f"comparison-{suffix}", "#compare")
        context.close()
    assert not external, external
    assert not errors, errors


def test_study_page_band_heatmap_exclude(browser, server) -> None:
    base, client = server
    name = "marin-adamw"
    errors: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{base}/studies/{name}")
    box = page.locator("#chart-opt-learning_rate")
    expect(box).to_have_attribute("data-band-count", "1", timeout=TIMEOUT_MS)
    fit = client.get(f"/v1/studies/{name}/fits/latest").json()
    law = fit["laws"]["learning_rate"]
    x_var = box.get_attribute("data-x-variable")
    assert x_var in law["variables"] or not law["variables"]
    api = client.get(
        f"/v1/studies/{name}/fits/{fit['id']}/curves", params={"law": "learning_rate", "x": x_var, "points": 60}
    )
    curve = api.json()["laws"]["learning_rate"]
    # the drawn band is the API's curve: one vertex per point on each edge, and the numbers it was
    # drawn from are the API's
    band = box.locator("path.band")
    assert band.get_attribute("d").count("L") + 1 == 2 * len(curve["x"])
    drawn = json.loads(band.get_attribute("data-band"))
    assert drawn == [[x, lo, hi] for x, lo, hi in zip(curve["x"], curve["low"], curve["high"])]
    # and its edges are the recommendation's interval at two x values
    for i in (5, 50):
        rec = client.get(
            f"/v1/studies/{name}/recommendation", params={**curve["fixed"], x_var: curve["x"][i], "fit_id": fit["id"]}
        ).json()
        assert rec["learning_rate"]["low"] == pytest.approx(curve["low"][i], rel=1e-12)
        assert rec["learning_rate"]["high"] == pytest.approx(curve["high"][i], rel=1e-12)
    assert box.locator(".axes text").count() > 4

    # LR × batch map: one mark per stored (lr, batch) point of the chosen scale; Marin varies one
    # hyperparameter at a time, so it is a scatter (a heatmap would smear a cross of points)
    heat = page.locator("#heatmap")
    expect(heat).to_have_attribute("data-rendered", "1", timeout=TIMEOUT_MS)
    key = page.locator("#heat-scale").input_value()
    n, d = (float(v) for v in key.split("|")[:2])
    runs = client.get(f"/v1/studies/{name}/runs", params={"limit": 1000}).json()["items"]
    grid = {(f"{r['learning_rate']:.5g}", r["batch_size"]) for r in runs if (r["n_params"], r["tokens"]) == (n, d)}
    assert heat.get_attribute("data-mode") == "scatter" and heat.locator("rect.cell").count() == 0
    assert heat.locator("circle.cell").count() == int(heat.get_attribute("data-cell-count")) == len(grid)
    panels = page.locator("#landscape .chart.small")
    assert sum(int(p.get_attribute("data-point-count")) for p in panels.all()) == len(runs)
    page.locator("#landscape-card").screenshot(path=str(ARTIFACTS / "v2-loss-landscape-1280.png"))
    page.locator("#heatmap-card").screenshot(path=str(ARTIFACTS / "v2-heatmap-1280.png"))
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / "v2-study-top-1280.png"))

    # runs table: state chips from the API, a state filter, and exclude with a reason
    table = page.locator("#runs-table")
    states = client.get(f"/v1/studies/{name}/fits/latest/run-states").json()["states"]
    first = table.locator("tbody tr").first
    run_id = first.get_attribute("data-run-id")
    assert first.locator("[data-state]").get_attribute("data-state") == states[run_id]
    page.select_option("#filter-state", "near_optimal")  # over the whole study, on the server
    near = [r for r in runs if states[str(r["id"])] == "near_optimal"]
    expect(table).to_have_attribute("data-shown-count", str(min(100, len(near))), timeout=TIMEOUT_MS)
    shown = int(table.get_attribute("data-shown-count"))
    assert shown >= 1 and table.locator("[data-state=near_optimal]").count() == shown
    assert table.locator("[data-state]:not([data-state=near_optimal])").count() == 0
    page.locator("#runs").screenshot(path=str(ARTIFACTS / "v2-runs-table-1280.png"))
    page.select_option("#filter-state", "")
    expect(table.locator(f"tbody tr[data-run-id='{run_id}']")).to_have_count(1, timeout=TIMEOUT_MS)
    n_before = fit["n_runs"]
    row = table.locator(f"tbody tr[data-run-id='{run_id}']")
    row.locator("button.exclude").click()
    row.locator("input.reason").fill("bad node")
    row.locator(".exclude-form button[type=submit]").click()
    expect(page.locator("#runs-message")).to_contain_text(f"Run {run_id} excluded", timeout=TIMEOUT_MS)
    listed = client.get(f"/v1/studies/{name}/runs", params={"excluded": "true"}).json()["items"]
    assert [r["id"] for r in listed] == [int(run_id)] and listed[0]["excluded_reason"] == "bad node"
    refit = client.post(f"/v1/studies/{name}/fits", json={"bootstrap": 40}).json()
    assert refit["n_runs"] == n_before - 1
    expect(table.locator(f"tbody tr[data-run-id='{run_id}'] [data-state=excluded]")).to_have_count(1)
    table.locator(f"tbody tr[data-run-id='{run_id}'] button.include").click()
    expect(page.locator("#runs-message")).to_contain_text(f"Run {run_id} included", timeout=TIMEOUT_MS)
    assert client.post(f"/v1/studies/{name}/fits", json={"bootstrap": 40}).json()["n_runs"] == n_before

    # 390 px: everything stacks, no sideways scroll
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(400)
    _no_sideways_scroll(page)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / "v2-study-top-390.png"))
    page.locator("#landscape-card").screenshot(path=str(ARTIFACTS / "v2-loss-landscape-390.png"))
    page.locator("#heatmap-card").screenshot(path=str(ARTIFACTS / "v2-heatmap-390.png"))
    page.locator("#runs").screenshot(path=str(ARTIFACTS / "v2-runs-table-390.png"))
    assert not errors, errors
    context.close()


def test_empty_and_unknown_studies(browser, server) -> None:
    base, _ = server
    errors: list[str] = []
    for width in (1280, 390):
        context = browser.new_context(viewport={"width": width, "height": 800})
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{base}/studies/no-such-study")
        expect(page.locator("#not-found")).to_be_visible(timeout=TIMEOUT_MS)
        assert page.locator("#not-found-name").inner_text() == "no-such-study"
        assert page.locator("#recommend").is_hidden() and page.locator(".charts").is_hidden()
        page.screenshot(path=str(ARTIFACTS / f"v2-unknown-study-{width}.png"))

        page.goto(f"{base}/studies/tiny")
        note = page.locator("#opt-learning_rate-note")
        expect(note).to_contain_text(re.compile("sweep|fit"), timeout=TIMEOUT_MS)
        # no law: a one-line reason with what would fix it, and no empty chart box
        for axis in ("learning_rate", "batch_size", "weight_decay"):
            box = page.locator(f"#chart-opt-{axis}")
            assert box.is_hidden() or int(box.get_attribute("data-point-count")) >= 1, axis
            assert box.locator(".chart-empty").count() == 0
            assert box.locator("path.law").count() == 0  # no law drawn
            expect(page.locator(f"#opt-{axis}-note")).to_contain_text("To get one: sweep")
        # the one scale's 3 runs are drawn with tick labels
        panel = page.locator("#landscape .chart.small").first
        expect(panel).to_have_attribute("data-point-count", "3", timeout=TIMEOUT_MS)
        assert panel.locator(".axes text").count() >= 4
        _no_sideways_scroll(page)
        page.screenshot(path=str(ARTIFACTS / f"v2-no-law-{width}.png"), full_page=True)
        context.close()
    assert not errors, errors

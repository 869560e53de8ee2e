"""The dashboard as people look at runs (issue 21), end to end: a real `hpscale serve` on real data
(the Step Law sweep, the Marin AdamW and Muon ablations, a study with curves, an empty one),
driven by Debian's Chromium at 1280 and 390 px.

Checks the runs table's state filter, sorting and CSV download over the whole study; a run's page
(curves as stored, its state and why, its history, exclude); the heatmap's colour bar and
labelled contours, and a scatter for one-at-a-time ablations; the law charts' colour keys; the
weight-decay label of a Muon study; the comparison in tokens when sequence lengths differ; the
backtest error's unit; an empty study's page; the 390 px runs cards; /docs' Authorize and a
CSP-clean /redoc — with no request leaving the service and no console error on any page.
Screenshots go to tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import csv
import io
import math
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests import test_dashboard_e2e as e2e
from tests.conftest import steplaw_import_argv
from tests.test_dashboard_e2e import ARTIFACTS, TIMEOUT_MS, _serve, _stop, expect
from tests.test_dashboard_v2_e2e import _records

browser = e2e.browser  # the same Chromium fixture
pytestmark = pytest.mark.slow  # starts a server and a browser


def curve(n: int, lr: float) -> list[list[float]]:
    return [[1e7 * (k + 1), 2.6 + 3.0 / math.sqrt(k + 1) + 10 * (lr - 2e-3) ** 2] for k in range(n)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, httpx.Client]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('dash-runs') / 'hpscale.db'}"
    assert (
        subprocess.run([sys.executable, "-m", "hpscale.cli", *steplaw_import_argv(url)], capture_output=True).returncode
        == 0
    )
    process, base = _serve(url, no_auth=True)
    try:
        client = httpx.Client(base_url=base, timeout=300)
        assert client.post("/v1/studies/steplaw/fits", json={"bootstrap": 40}).status_code == 201
        for opt in ("adamw", "muon"):
            name = f"marin-{opt}"
            r = client.post("/v1/studies", json={"name": name, "optimizer": opt, "seq_len": 4096})
            assert r.status_code == 201, r.text
            assert client.post(f"/v1/studies/{name}/runs", json={"runs": _records(opt)}).status_code == 201
            assert client.post(f"/v1/studies/{name}/fits", json={"bootstrap": 40}).status_code == 201
        assert client.post("/v1/studies", json={"name": "empty"}).status_code == 201
        assert client.post("/v1/studies", json={"name": "curves", "seq_len": 2048}).status_code == 201
        runs = [
            {
                "run_key": f"c{i}",
                "n_params": 1e8,
                "tokens": 3e10,
                "learning_rate": lr,
                "batch_size": 256,
                "final_loss": curve(3000, lr)[-1][1],
                "loss_curve": curve(3000, lr),
                "curves": {"eval_loss": [[1e9 * (k + 1), 3.4 - 0.02 * k] for k in range(30)]},
                "extra": {"schedule": "wsd", "branch_of": "main-7"},
            }
            for i, lr in enumerate((1e-3, 2e-3, 4e-3))
        ]
        assert client.post("/v1/studies/curves/runs", json={"runs": runs}).status_code == 201
        yield base, client
    finally:
        _stop(process)


class Watch:
    """Console errors, page errors and requests to other origins of every page of a context."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.errors: list[str] = []
        self.external: list[str] = []

    def page(self, context):
        page = context.new_page()
        page.on("console", lambda m: self.errors.append(f"{page.url}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"{page.url}: {e}"))
        local = (self.base, "blob:", "data:")
        page.on("request", lambda r: None if r.url.startswith(local) else self.external.append(r.url))
        return page

    def check(self) -> None:
        assert not self.external, self.external
        assert not self.errors, self.errors


def test_runs_table_filters_sorts_and_downloads_the_whole_study(browser, server) -> None:
    base, client = server
    ARTIFACTS.mkdir(exist_ok=True)
    watch = Watch(base)
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = watch.page(context)
    page.goto(f"{base}/studies/steplaw")
    table = page.locator("#runs-table")
    expect(table).to_have_attribute("data-row-count", "100", timeout=TIMEOUT_MS)
    rs = client.get("/v1/studies/steplaw/fits/latest/run-states").json()
    diverged = sorted(int(k) for k, v in rs["states"].items() if v == "diverged")
    assert len(diverged) > 100
    page.select_option("#filter-state", "diverged")
    expect(page.locator("#runs-page")).to_contain_text(
        f"of {len(diverged):,} (treated as diverged)", timeout=TIMEOUT_MS
    )
    assert table.get_attribute("data-shown-count") == "100"
    ids = [int(i) for i in table.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.runId)")]
    assert ids == diverged[:100]  # the first diverged runs of the study, not of a page
    assert table.locator("[data-state=diverged]").count() == 100
    page.locator("#runs").screenshot(path=str(ARTIFACTS / "runs-filtered-diverged-1280.png"))
    page.locator("#runs-next").click()
    expect(page.locator("#runs-page")).to_contain_text("runs 101–", timeout=TIMEOUT_MS)
    ids = [int(i) for i in table.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.runId)")]
    assert ids == diverged[100:200]
    # sort the whole (filtered) study by final loss, worst first, by clicking the header twice
    page.locator("th[data-col=final_loss] button").click()
    expect(page.locator("#runs-page")).to_contain_text("by final_loss asc", timeout=TIMEOUT_MS)
    page.locator("th[data-col=final_loss] button").click()
    expect(page.locator("#runs-page")).to_contain_text("by final_loss desc", timeout=TIMEOUT_MS)
    api = client.get("/v1/studies/steplaw/runs", params={"state": "diverged", "sort": "final_loss", "order": "desc"})
    first_id = table.locator("tbody tr").first.get_attribute("data-run-id")
    assert int(first_id) == api.json()["items"][0]["id"]
    # the CSV of this view
    with page.expect_download(timeout=TIMEOUT_MS) as download:
        page.locator("#runs-csv").click()
    with open(download.value.path(), encoding="utf-8") as handle:
        rows = list(csv.DictReader(io.StringIO(handle.read())))
    assert len(rows) == len(diverged) and {int(r["id"]) for r in rows} == set(diverged)
    losses = [float(r["final_loss"]) for r in rows if r["final_loss"]]
    assert losses == sorted(losses, reverse=True)
    expect(page.locator("#runs-message")).to_contain_text("Downloaded")
    context.close()
    watch.check()


def test_a_runs_page(browser, server) -> None:
    base, client = server
    watch = Watch(base)
    run = client.get("/v1/studies/curves/runs", params={"limit": 1}).json()["items"][0]
    for width in (1280, 390):
        context = browser.new_context(viewport={"width": width, "height": 900})
        page = watch.page(context)
        page.goto(f"{base}/studies/curves/runs/{run['id']}")
        expect(page.locator("#run-summary")).to_have_attribute("data-rendered", "1", timeout=TIMEOUT_MS)
        curves = page.locator("#run-curves")
        assert curves.get_attribute("data-curve-count") == "2"
        loss = page.locator("#curve-loss")
        assert loss.get_attribute("data-point-count") == "1000"  # stored: 1,000 of 3,000
        assert loss.locator("path.line").count() == 1 and loss.locator(".axes text").count() > 4
        expect(page.locator("#run-curves-note")).to_contain_text("loss keeps 1000 of 3000 points")
        assert page.locator("#curve-eval_loss path.line").count() == 1
        assert page.locator("#run-extra tr[data-key=branch_of] td").nth(1).inner_text() == "main-7"
        expect(page.locator("#run-audit tr[data-action=submit]")).to_have_count(1)
        assert page.evaluate("document.documentElement.scrollWidth") <= width + 1
        page.screenshot(path=str(ARTIFACTS / f"run-page-{width}.png"), full_page=True)
        context.close()
    # a Step Law run treated as diverged: its state and why, and exclude from its page
    rs = client.get("/v1/studies/steplaw/fits/latest/run-states").json()["states"]
    run_id = next(int(k) for k, v in rs.items() if v == "diverged")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = watch.page(context)
    page.goto(f"{base}/studies/steplaw/runs/{run_id}")
    expect(page.locator("#run-state [data-state=diverged]")).to_have_count(1, timeout=TIMEOUT_MS)
    expect(page.locator("#run-reason")).to_contain_text("above its scale's best")
    expect(page.locator("#run-fields tr[data-field=weight_decay] td").nth(1)).to_have_text(
        "unknown (the source did not record one)"
    )
    page.locator("#run-action button.exclude").click()
    page.locator("#run-action input.reason").fill("looked at its curve")
    page.locator("#run-action .exclude-form button[type=submit]").click()
    expect(page.locator("#run-excluded")).to_contain_text("looked at its curve", timeout=TIMEOUT_MS)
    expect(page.locator("#run-audit tr[data-action=exclude]")).to_have_count(1)
    assert client.get(f"/v1/studies/steplaw/runs/{run_id}").json()["excluded"] is True
    client.post(f"/v1/studies/steplaw/runs/{run_id}/include", json={})
    context.close()
    watch.check()
    # a run that is not there: its page says so (the API's 404 is the browser's only complaint)
    missing = Watch(base)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = missing.page(context)
    page.goto(f"{base}/studies/steplaw/runs/99999999")
    expect(page.locator("#not-found")).to_be_visible(timeout=TIMEOUT_MS)
    assert page.locator("#run-curves-card").is_hidden()
    context.close()
    assert not missing.external and all("status of 404" in e for e in missing.errors), missing.errors


def test_heatmap_scatter_keys_and_labels(browser, server) -> None:
    base, client = server
    watch = Watch(base)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = watch.page(context)
    page.goto(f"{base}/studies/steplaw")
    heat = page.locator("#heatmap")
    expect(heat).to_have_attribute("data-rendered", "1", timeout=TIMEOUT_MS)
    expect(page.locator("#landscape-note")).not_to_contain_text("Loading runs", timeout=TIMEOUT_MS)  # all pages
    expect(heat).to_have_attribute("data-mode", "heatmap", timeout=TIMEOUT_MS)  # Step Law: full LR × batch grids
    bar = heat.locator("g.colour-bar")
    assert bar.count() == 1 and bar.locator("stop").count() == 11
    assert [t for t in bar.locator("text.bar-tick").all_text_contents() if t.startswith("+")] == [
        "+2%",
        "+4%",
        "+6%",
        "+8%",
    ]
    labels = heat.locator("text.contour-label").all_text_contents()
    assert int(heat.get_attribute("data-contour-count")) == 3 and labels == ["0.25%", "1%", "3%"]
    heat.screenshot(path=str(ARTIFACTS / "heatmap-colour-bar-1280.png"))
    # every law chart says what its point colours are
    key = page.locator("#chart-opt-learning_rate ul.color-key li")
    expect(key.first).to_contain_text("point colour = scale", timeout=TIMEOUT_MS)
    fit = client.get("/v1/studies/steplaw/fits/latest").json()
    assert key.count() == 1 + len(fit["optima"])
    expect(page.locator("#diag-laws")).to_contain_text("log units")
    assert "×" in page.locator("#diag-laws tr[data-law=learning_rate] td").nth(5).inner_text()

    page.goto(f"{base}/studies/marin-muon")
    heat = page.locator("#heatmap")
    expect(heat).to_have_attribute("data-rendered", "1", timeout=TIMEOUT_MS)
    assert heat.get_attribute("data-mode") == "scatter" and heat.locator("rect.cell").count() == 0
    expect(heat.locator("p.chart-note")).to_contain_text("one hyperparameter at a time")
    expect(page.locator("#chart-opt-weight_decay .axis-label").nth(1)).to_contain_text("muon coefficient")
    heat.screenshot(path=str(ARTIFACTS / "heatmap-scatter-marin-1280.png"))
    context.close()
    watch.check()


def test_overview_comparison_empty_study_and_phone_cards(browser, server) -> None:
    base, _ = server
    watch = Watch(base)
    for width in (1280, 390):
        context = browser.new_context(viewport={"width": width, "height": 900})
        page = watch.page(context)
        page.goto(f"{base}/")
        row = page.locator("#studies-table tr[data-study=empty]")
        expect(row.locator("td").nth(4)).to_contain_text("no fit", timeout=TIMEOUT_MS)  # and no 404 logged
        for name in ("steplaw", "marin-adamw"):  # seq_len 2048 and 4096
            page.locator(f"#studies-table tr[data-study={name}] input.compare-pick").check()
        compare = page.locator("#compare")
        expect(compare).to_have_attribute("data-batch-unit", "tokens", timeout=TIMEOUT_MS)
        expect(page.locator("#compare-note")).to_contain_text("compared in tokens")
        expect(page.locator("#compare-batch_size .axis-label").nth(1)).to_contain_text("[tokens]")
        assert page.evaluate("document.documentElement.scrollWidth") <= width + 1
        page.locator("#compare").screenshot(path=str(ARTIFACTS / f"compare-tokens-{width}.png"))

        page.goto(f"{base}/studies/empty")
        expect(page.locator("#empty-study")).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.locator("#empty-study")).to_contain_text("hpscale import")
        for hidden in ("#recommend", "#runs", "#diagnostics", ".charts", "#fit-now"):
            assert page.locator(hidden).is_hidden(), hidden
        context.close()

    # 390 px: every run a card with LR, batch, loss and state on screen
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = watch.page(context)
    page.goto(f"{base}/studies/steplaw")
    table = page.locator("#runs-table")
    expect(table).to_have_attribute("data-row-count", "100", timeout=TIMEOUT_MS)
    first = table.locator("tbody tr").first
    first.scroll_into_view_if_needed()
    for index, what in ((3, "LR"), (4, "Batch"), (5, "Loss")):
        cell = first.locator("td").nth(index)
        box = cell.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, what
        assert cell.get_attribute("data-label") == what and cell.inner_text()
        shown = cell.evaluate("td => getComputedStyle(td, '::before').content")
        assert shown.strip('"').strip() == what  # the card labels the value
    chip = first.locator("[data-state]")
    box = chip.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 390 and chip.is_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 391
    page.locator("#runs-table tbody tr").nth(2).screenshot(path=str(ARTIFACTS / "runs-card-390.png"))
    page.locator("#runs").screenshot(path=str(ARTIFACTS / "runs-table-390.png"))
    # the sort control of the form works where the headers are hidden
    page.select_option("#filter-sort", "final_loss")
    expect(page.locator("#runs-page")).to_contain_text("by final_loss asc", timeout=TIMEOUT_MS)
    diag = page.locator("#diag-laws")
    expect(diag).to_be_visible(timeout=TIMEOUT_MS)
    box = diag.bounding_box()
    assert box is not None and box["width"] <= 390  # a block per law, not a table cut at the edge
    context.close()
    watch.check()


def test_api_docs_authorize_and_a_clean_redoc(browser, server) -> None:
    base, _ = server
    watch = Watch(base)
    spec = httpx.get(f"{base}/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        **spec["components"]["securitySchemes"]["bearerAuth"],
        "type": "http",
        "scheme": "bearer",
    }
    assert spec["paths"]["/v1/studies"]["get"]["security"] == [{"bearerAuth": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = watch.page(context)
    page.goto(f"{base}/docs")
    expect(page.locator("button.authorize")).to_be_visible(timeout=TIMEOUT_MS)
    page.locator("button.authorize").click()
    expect(page.locator(".auth-container")).to_contain_text("bearerAuth")
    page.goto(f"{base}/redoc")
    expect(page.locator("img[alt='redocly logo']")).to_have_count(1, timeout=TIMEOUT_MS)
    assert page.locator("img[alt='redocly logo']").get_attribute("src") == "/docs-assets/redoc-logo.svg"
    page.locator("input[placeholder='Search...']").fill("runs")
    expect(page.locator("[data-role='search:results'] li").first).to_be_visible(timeout=TIMEOUT_MS)
    page.wait_for_timeout(500)
    context.close()
    watch.check()

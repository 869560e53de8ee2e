"""The dashboard's contract-1.2 views end to end: a real `hpscale serve` with a synthetic μP study whose
optimal learning rate drifts as width^−0.3, driven by Chromium (the fixtures of tests/test_dashboard_e2e.py).

Checks the "Does the transfer work?" panel (the width / learning-rate row says *drifts*, with the API's
interval and the causes to check), and that a recommendation with a loss tolerance shows the expected loss
penalty beside each baseline, the tolerance batch, and the reuse cost in the transfer panel.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests import test_dashboard_e2e as e2e
from tests.test_api_decisions import runs_of
from tests.test_dashboard_e2e import ARTIFACTS, TIMEOUT_MS, _serve, _stop, expect

browser = e2e.browser
pytestmark = pytest.mark.slow  # starts a server and a browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, httpx.Client]]:
    from dataclasses import replace

    import numpy as np

    from fitting.synthetic import TrueLaw, random_truth, sample_runs

    url = f"sqlite:///{tmp_path_factory.mktemp('dash-decisions') / 'hpscale.db'}"
    upgrade = [sys.executable, "-m", "hpscale.cli", "db", "upgrade", "--database-url", url]
    assert subprocess.run(upgrade, capture_output=True, timeout=120).returncode == 0
    truth = random_truth(0, "mup")
    lr = truth.laws["learning_rate"]
    truth = replace(
        truth, laws={**truth.laws, "learning_rate": TrueLaw(lr.const, {"width": -0.3, "depth": lr.exponents["depth"]})}
    )
    table, _ = sample_runs(truth, np.random.default_rng(0))
    process, base = _serve(url, no_auth=True)
    try:
        client = httpx.Client(base_url=base, timeout=120)
        r = client.post("/v1/studies", json={"name": "mu", "parameterization": "mup", "base_width": 256})
        assert r.status_code == 201, r.text
        assert client.post("/v1/studies/mu/runs", json={"runs": runs_of(table, "mu")}).status_code == 201
        assert client.post("/v1/studies/mu/fits", json={"bootstrap": 40}).status_code == 201
        yield base, client
    finally:
        _stop(process)


def test_transfer_panel_and_recommendation_decisions(browser, server) -> None:
    base, client = server
    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{base}/studies/mu")
    row = page.locator("#transfer-table tr[data-axis=width][data-hp=learning_rate]")
    expect(row).to_have_attribute("data-verdict", "drifts", timeout=TIMEOUT_MS)
    api = client.get("/v1/studies/mu/transfer-check").json()
    check = next(c for c in api["checks"] if c["axis"] == "width" and c["hyperparameter"] == "learning_rate")
    expect(row.locator("td").nth(3)).to_contain_text(f"{check['exponent']['value']:+.2f}")
    assert page.locator("#transfer details").count() >= 1  # the causes to check (RULES.md §1)
    expect(page.locator("#transfer")).to_contain_text("1/d_head")
    widths = sorted({c["range"][1] for c in api["checks"] if c["axis"] == "width"})
    page.fill("#rec-width", str(int(widths[-1] * 4)))
    page.fill("#rec-depth", "8")
    page.fill("#rec-n_params", "2e9")
    page.fill("#rec-tokens", "4e10")
    page.fill("#rec-max_loss_increase", "0.005")
    page.click("#rec-submit")
    expect(page.locator("#rec-penalty")).to_contain_text("%", timeout=TIMEOUT_MS)
    expect(page.locator("#rec-baselines tr[data-baseline=largest_proxy]")).to_contain_text("%")
    expect(page.locator("#transfer-reuse")).to_contain_text("reusing the base model's optimum", timeout=TIMEOUT_MS)
    page.screenshot(path=str(ARTIFACTS / "decisions.png"), full_page=True)
    assert errors == []

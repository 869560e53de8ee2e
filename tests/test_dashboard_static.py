"""The dashboard's sources: style (≤ 120 columns, prettier + eslint when installed), CSP-safe pages
(no inline script or style), ES module imports that resolve and are versioned by content."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from app.dashboard import ASSETS, PAGES, STATIC_DIR

REPO = Path(__file__).resolve().parents[1]
JS_TOOLS = REPO / ".ci" / "js"
SOURCES = sorted(p for p in STATIC_DIR.iterdir() if p.suffix in {".js", ".html", ".css"})
CLASSIC = ("common.js", "charts.js")  # the globals HP and Charts; every other script is an ES module
MODULES = sorted(p.name for p in STATIC_DIR.glob("*.js") if p.name not in CLASSIC)


@pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
def test_no_line_over_120_characters(path: Path) -> None:
    long = [i for i, line in enumerate(path.read_text("utf-8").splitlines(), 1) if len(line) > 120]
    assert not long, f"{path.name}: lines over 120 characters: {long}"


def test_pages_have_no_inline_script_or_style() -> None:
    for name in ("index.html", "study.html"):
        html = (STATIC_DIR / name).read_text("utf-8")
        scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
        assert scripts and all('src="/static/' in attrs and not body.strip() for attrs, body in scripts), name
        assert not re.search(r"\sstyle\s*=|<style\b|\son[a-z]+\s*=", html), name
    for path in STATIC_DIR.glob("*.js"):  # no inline style attributes built by script either
        assert not re.search(r"""["']?style["']?\s*:\s*["']|setAttribute\(\s*["']style""", path.read_text("utf-8"))


def test_views_are_es_modules_with_versioned_imports() -> None:
    study, index = (PAGES[p].body.decode() for p in ("study", "index"))
    assert re.search(r'<script src="/static/study\.js\?v=\w+" type="module">', study)
    assert re.search(r'<script src="/static/index\.js\?v=\w+" type="module">', index)
    for name in MODULES:
        source = (STATIC_DIR / name).read_text("utf-8")
        assert '"use strict"' not in source  # modules are strict already; no classic-script wrapper
        served = ASSETS[name].body.decode()
        for dep in re.findall(r'from "\./([\w.-]+\.js)"', source):
            assert f'from "./{dep}?v={ASSETS[dep].version}"' in served, (name, dep)


@pytest.mark.slow  # ~5 s of node
def test_js_lint_and_format() -> None:
    """eslint (errors) and prettier (layout) from `.ci/js` (`npm ci --prefix .ci/js`); skipped
    unless installed there, required when HPSCALE_REQUIRE_JS_LINT is set."""
    bin_dir = JS_TOOLS / "node_modules" / ".bin"
    if not (bin_dir / "eslint").exists() or not shutil.which("node"):
        if os.environ.get("HPSCALE_REQUIRE_JS_LINT"):
            pytest.fail("JS tools missing: npm ci --prefix .ci/js")
        pytest.skip("JS tools not installed (npm ci --prefix .ci/js)")
    eslint = [str(bin_dir / "eslint"), "-c", str(JS_TOOLS / "eslint.config.mjs"), "app/static"]
    result = subprocess.run(eslint, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    files = [str(p.relative_to(REPO)) for p in SOURCES]
    prettier = [str(bin_dir / "prettier"), "--config", str(JS_TOOLS / ".prettierrc.json"), "--check", *files]
    result = subprocess.run(prettier, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

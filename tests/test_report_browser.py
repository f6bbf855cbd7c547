"""The report in a real browser: headless Chromium (Debian's, driven by Playwright) opens RUN/report/index.html from
file:// with no server. No console errors, every <img> loaded, and clicking a confusion-matrix cell shows exactly
that cell's images. A full-page screenshot is kept as a test artifact ($CNNLAB_TEST_ARTIFACTS, default
.pytest_cache/d/cnnlab-artifacts/report-full-page.png). Skipped only where Chromium is not installed (.ci/run
installs it with apt-get)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from report_runs import quadrant_run

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    for candidate in (os.environ.get("CNNLAB_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip("Chromium is not installed here (Debian: apt-get install -y chromium, as root; .ci/run does it)")


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory, one_thread):
    """(page, run): the report of a small run, loaded in headless Chromium with a fresh profile."""
    exe = chromium()
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("browser")
    run = quadrant_run(root)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(root / "profile"), executable_path=exe, headless=True,
                                                       args=FLAGS, viewport={"width": 1360, "height": 900})
        page = context.new_page()
        page.problems = []  # console errors, page errors and failed requests
        page.on("console", lambda m: page.problems.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: page.problems.append(f"failed: {r.url}"))
        page.goto((Path(run.dir) / "report" / "index.html").resolve().as_uri(), wait_until="load")
        yield page, run
        context.close()


def artifact_dir(request, tmp_path_factory) -> Path:
    env = os.environ.get("CNNLAB_TEST_ARTIFACTS")
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
    path = Path(env) if env else (Path(cache.mkdir("cnnlab-artifacts")) if cache is not None
                                  else tmp_path_factory.getbasetemp() / "cnnlab-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def visible_cell_images(page) -> list[dict]:
    return page.evaluate("""() => Array.from(document.querySelectorAll('.cell-panel figure.thumb'))
        .filter(f => f.offsetParent !== null)
        .map(f => ({t: f.dataset.true, p: f.dataset.pred, loaded: f.querySelector('img').naturalWidth > 0}))""")


def test_the_page_loads_with_no_console_error_and_every_image(browser_page):
    page, _ = browser_page
    assert page.problems == []
    images = page.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
    assert len(images) > 10
    assert [src for src, complete, width in images if not (complete and width > 0)] == []
    assert page.locator("section").count() == 8  # run .. augmentation
    assert visible_cell_images(page) == []  # no cell chosen yet
    assert page.locator("#cell-hint").is_visible()


def test_clicking_a_cell_shows_exactly_that_cells_images(browser_page):
    page, run = browser_page
    cm = run.metrics["val"]["confusion_matrix"]
    cells = [(t, p) for t, row in enumerate(cm) for p, n in enumerate(row) if n]
    off = [c for c in cells if c[0] != c[1]]
    chosen = ([off[0]] if off else []) + [max(cells, key=lambda c: cm[c[0]][c[1]])]
    for t, p in chosen:
        page.click(f'a.cell[data-true="{t}"][data-pred="{p}"]')
        shown = visible_cell_images(page)
        assert len(shown) == min(24, cm[t][p])
        assert {(s["t"], s["p"]) for s in shown} == {(str(t), str(p))}
        assert all(s["loaded"] for s in shown)
        assert page.url.endswith(f"#cell-{t}-{p}")
        assert not page.locator("#cell-hint").is_visible()
    assert page.problems == []


def test_a_full_page_screenshot_is_kept(browser_page, request, tmp_path_factory):
    page, run = browser_page
    cm = run.metrics["val"]["confusion_matrix"]
    t, p = max(((t, p) for t in range(len(cm)) for p in range(len(cm))), key=lambda c: cm[c[0]][c[1]])
    page.click(f'a.cell[data-true="{t}"][data-pred="{p}"]')  # the screenshot shows a cell's images open
    page.evaluate("window.scrollTo(0, 0)")
    path = artifact_dir(request, tmp_path_factory) / "report-full-page.png"
    page.screenshot(path=str(path), full_page=True)
    from PIL import Image

    with Image.open(path) as im:
        assert im.width >= 1360 and im.height > 3000
    print(f"screenshot: {path}")

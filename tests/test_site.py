"""The documentation site in a real browser: headless Chromium over a local HTTP server.

The site is built with ``mkdocs build --strict`` into a temporary folder and served on 127.0.0.1.
Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright; no browser download) loads the home
page, a tutorial, a how-to with figures, the benchmarks page and an API page at 1280 px, and checks
what a reader would see: the navigation and the search render (and search finds something), every
image loaded, no code block needs a horizontal scrollbar, and the console shows no error. A
screenshot of each page goes to ``$FUSIONKIT_SCREENSHOTS`` (default: the test's temporary folder).

Without Chromium or Playwright the test skips and says why; ``.ci/run`` installs both and sets
``FUSIONKIT_REQUIRE_BROWSER=1``, under which a missing browser fails instead.
"""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("FUSIONKIT_CHROMIUM", "/usr/bin/chromium")
VIEWPORT = {"width": 1280, "height": 900}
# page path -> the least number of images it must show (so "every image loaded" is never vacuous)
PAGES = {
    "": 1,  # home: the architecture figure
    "tutorials/compose-in-python/": 0,  # a tutorial: long code blocks
    "how-to/evaluate/": 4,  # the quick-start figures, in tabs
    "how-to/reading-a-report/": 3,  # gate, Grad-CAM, history
    "how-to/demo/": 1,  # the screenshot of the demo page
    "benchmarks/": 2,  # throughput figures
    "reference/model/": 0,  # an API page (mkdocstrings)
}

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.subprocess]  # mkdocs build, then Chromium

REQUIRED = os.environ.get("FUSIONKIT_REQUIRE_BROWSER") == "1"  # .ci/run sets it: there a skip is a failure

if not Path(CHROMIUM).is_file():
    reason = f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)"
    if REQUIRED:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)
if REQUIRED:
    from playwright import sync_api
else:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra has it)")


@pytest.fixture(scope="module")
def site_url(tmp_path_factory) -> Iterator[str]:
    """Build the site strictly into a temporary folder and serve it on 127.0.0.1 (a free port)."""
    site = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def _screenshot_dir(tmp_path: Path) -> Path:
    out = Path(os.environ.get("FUSIONKIT_SCREENSHOTS", tmp_path / "screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_site_pages_render_in_chromium(site_url, browser, tmp_path):
    shots = _screenshot_dir(tmp_path)
    page = browser.new_page(viewport=VIEWPORT)
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))
    page.on("response", lambda res: problems.append(f"HTTP {res.status}: {res.url}") if res.status >= 400 else None)

    for path, min_images in PAGES.items():
        page.goto(site_url + path, wait_until="networkidle")
        where = f"/{path}"
        # navigation: the tabs and the sidebar are drawn, with links
        assert page.locator(".md-tabs__link").count() >= 5, where
        assert page.locator(".md-sidebar--primary .md-nav__link").count() >= 5, where
        assert page.locator(".md-search__input").is_visible(), where
        # every image decoded (naturalWidth > 0), and there are as many as the page should show
        images = page.evaluate("() => [...document.images].map(i => [i.currentSrc, i.complete, i.naturalWidth])")
        broken = [src for src, complete, width in images if not (complete and width > 0)]
        assert not broken, f"{where}: images that did not load: {broken}"
        content_images = page.locator("article img").count()
        assert content_images >= min_images, f"{where}: {content_images} images, expected >= {min_images}"
        # code blocks wrap: none needs a horizontal scrollbar at 1280 px
        wide = page.evaluate(
            "() => [...document.querySelectorAll('pre > code')]"
            ".filter(c => c.scrollWidth > c.clientWidth + 1).map(c => c.textContent.slice(0, 60))"
        )
        assert not wide, f"{where}: code blocks wider than the column: {wide}"
        name = path.strip("/").replace("/", "-") or "home"
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        assert (shots / f"{name}.png").stat().st_size > 10_000

    # search renders and answers from its index (a web worker over the served search_index.json)
    page.goto(site_url, wait_until="networkidle")
    page.locator(".md-search__input").click()
    page.keyboard.type("adaptive decision")  # typed key by key: Material searches on key events
    results = page.locator(".md-search-result__item")
    results.first.wait_for(state="visible", timeout=15_000)
    assert "matching document" in page.locator(".md-search-result__meta").inner_text()
    assert page.locator(".md-search-result__item mark").count() >= 1  # the query is highlighted
    page.screenshot(path=str(shots / "search.png"))

    assert not problems, "\n".join(problems)
    page.close()
    print(f"screenshots: {shots}")

"""Regenerate the screenshot of the "Try a model in the browser" how-to (``make_figures.py --only demo`` calls it).

    python docs/scripts/make_demo_screenshot.py                         # trains the quick start first (~30 s)
    python docs/scripts/make_demo_screenshot.py --model runs/quickstart  # a finished run or a saved pipeline

Writes ``docs/assets/demo/page.png``: ``fusionkit demo MODEL`` is started on a free local port,
headless Chromium (Debian's ``/usr/bin/chromium`` through Playwright, as ``tests/test_demo.py``
drives it) clicks the first example case and **Predict**, and the whole page is captured once the
probabilities and the Grad-CAM overlays are shown. Needs the ``demo`` extra and Playwright.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "docs" / "assets" / "demo" / "page.png"
CHROMIUM = os.environ.get("FUSIONKIT_CHROMIUM", "/usr/bin/chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_quickstart(folder: Path) -> Path:
    from fusionkit.inference.pipeline import store_run_decision
    from fusionkit.runtime.config import load_run_config
    from fusionkit.train.trainer import train_run

    run_dir = folder / "quickstart"
    train_run(
        load_run_config(REPO / "examples" / "quickstart.yaml"),
        run_dir=run_dir,
        synthetic=True,
        progress=False,
        after_fit=store_run_decision,
    )
    return run_dir


def demo_screenshot(model: Path | None, out: Path = OUT) -> Path:
    """Serve ``model`` (default: a quick-start run trained in a temporary folder) with ``fusionkit demo``,
    predict the first example case in Chromium and write a full-page screenshot to ``out``."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        model = model if model is not None else _train_quickstart(Path(tmp))
        port = _free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, "-m", "fusionkit.cli", "demo", str(model), "--port", str(port)]
        server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.monotonic() + 180
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"fusionkit demo exited with {server.returncode}: {server.stderr.read()}")
                try:
                    with urllib.request.urlopen(url, timeout=5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"fusionkit demo did not answer on {url}") from None
                    time.sleep(0.5)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.goto(url, wait_until="networkidle")
                page.locator("#examples").get_by_text("Generated lesion 1").click()
                page.locator("#derm").get_by_text("ISIC_").first.wait_for(timeout=30_000)
                page.locator("#predict").click()
                page.locator("#probs table").wait_for(timeout=60_000)
                page.locator("#gradcam-derm img").wait_for(timeout=60_000)
                page.wait_for_timeout(500)  # let the overlays finish drawing
                out.parent.mkdir(parents=True, exist_ok=True)
                partial = out.with_suffix(".partial.png")
                page.screenshot(path=str(partial), full_page=True)
                partial.replace(out)
                browser.close()
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    return out


def main(argv: list[str] | None = None) -> None:
    """Write the screenshot (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a run directory or saved pipeline folder")
    parser.add_argument("--out", type=Path, default=OUT, help="where to write (default docs/assets/demo/page.png)")
    args = parser.parse_args(argv)
    print(demo_screenshot(args.model, args.out))


if __name__ == "__main__":
    main()

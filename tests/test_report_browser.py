"""The demo's ``index.html`` in a real browser: headless Chromium (Debian's package) loads every image the
page references, and a full-page screenshot is saved beside it (``screenshot.png``) to look at.

Marked ``browser``; ``make test-browser`` installs selenium and runs it. The report is the one ``make demo``
wrote (``playground/data/eval/shapes/summary``) when it exists, else a small demo on a random shapes VLM.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llava import demo

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[1]
DEMO_REPORT = ROOT / "playground" / "data" / "eval" / "shapes" / "summary" / "index.html"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def report(random_shapes_vlm, tmp_path: Path) -> Path:
    if DEMO_REPORT.is_file():
        return DEMO_REPORT
    argv = ["--model-path", str(random_shapes_vlm), "--eval-dir", str(tmp_path), "--per-benchmark", "6",
            "--tokens", "192", "--methods", "fastv", "pdrop", "--overlays", "2", "--batch-size", "6"]
    assert demo.main(argv) == 0
    return tmp_path / "summary" / "index.html"


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
def test_every_image_of_the_report_loads_in_chromium(report: Path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (make test-browser installs it)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(report.resolve().as_uri())
        driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "Promise.all(Array.from(document.images).map(i => i.complete ? 0 : new Promise(r => { i.onload = i.onerror = r; })))"
            ".then(() => done(0));"
        )
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]);"
        )
        height = driver.execute_script("return document.documentElement.scrollHeight;")
        driver.set_window_size(1400, min(int(height) + 100, 16000))
        driver.save_screenshot(str(report.parent / "screenshot.png"))
    finally:
        driver.quit()
    assert len(images) >= 3, f"the report shows only {len(images)} images"
    broken = [src for src, loaded in images if not loaded]
    assert not broken, f"images that did not load in Chromium: {broken}"
    assert (report.parent / "screenshot.png").stat().st_size > 10_000

"""The HTML report in headless Chromium: the top pairs render, hostile dataset text runs nothing,
and the page fits a phone. Needs Debian's ``chromium`` + ``chromium-driver`` and ``selenium``.

``CHES_UPDATE_SCREENSHOT=1`` also saves the desktop screenshot to docs/img/report.png.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from score_fixtures import make_score_output, nasty_rows, patch_load_model

from ches_filter.data.score_folder import ScoreFolder, select_from_table
from ches_filter.report import build_report, render_html
from ches_filter.selection import Rule

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "report.png"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() or not CHROMEDRIVER.exists(),
    reason="needs /usr/bin/chromium and /usr/bin/chromedriver "
    "(apt-get install -y chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage", "--window-size=1280,2400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def report_file(tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    try:
        rows = nasty_rows()
        folder = ScoreFolder.open(make_score_output(tmp_path_factory.mktemp("s") / "scores", rows))
        patch_load_model(monkeypatch, rows)
        rule = Rule("top_k", 3)
        table = folder.read_score_table()
        selection = select_from_table(table, rule, keep_unscored=True)
        filter_info = {"rule": rule.to_dict(), "by": rule.by, "cutoff": selection.cutoff,
                       "counts": selection.counts(), "keep_unscored": True}
        data = build_report(folder, top=6, table=table, highlight="on", selection=selection,
                            filter_info=filter_info)
    finally:
        monkeypatch.undo()
    path = tmp_path_factory.mktemp("html") / "report.html"
    path.write_text(render_html(data), encoding="utf-8")
    return path


def test_top_pairs_render_and_hostile_text_executes_nothing(browser, report_file, tmp_path):
    browser.set_window_size(1280, 2400)
    browser.get(report_file.as_uri())
    pairs = browser.find_elements("css selector", "article.pair")
    assert len(pairs) == 6
    assert [p.get_attribute("data-row-id") for p in pairs[:2]] == ["28", "29"]
    # the payloads set window.__pwned and the title; neither happened
    assert browser.execute_script("return typeof window.__pwned") == "undefined"
    assert browser.title.startswith("CHES report")
    assert browser.execute_script("return document.scripts.length") == 0
    assert browser.execute_script("return document.images.length") == 0
    # ... and the text is shown as text
    first = pairs[0].get_attribute("textContent")
    assert "<script>window.__pwned" in first and "<img src=x onerror=" in first
    tokens = pairs[0].find_elements("css selector", ".rejected .tok")
    assert len(tokens) > 10  # rejected tokens are highlighted
    assert "removed" in pairs[0].find_element("css selector", ".badge").text
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    if os.environ.get("CHES_UPDATE_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)


def test_report_fits_a_phone(browser, report_file):
    browser.set_window_size(390, 844)
    browser.get(report_file.as_uri())
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 1
    columns = browser.execute_script(
        "return getComputedStyle(document.querySelector('.responses')).gridTemplateColumns"
    )
    assert len(columns.split()) == 1  # chosen and rejected stack on a narrow screen

"""Save a PNG of an HTML report as a browser shows it (headless Debian chromium + selenium).

    python scripts/screenshot_report.py hh.kept/report.html docs/img/report.png --height 2200
    python scripts/screenshot_report.py hh.kept/report.html docs/img/report-scores.png --from-heading Scores

Used for the screenshot in docs/filtering.md. Needs /usr/bin/chromium and /usr/bin/chromedriver
(apt-get install chromium chromium-driver) and selenium (in the test extra).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2200)
    parser.add_argument("--from-heading", metavar="TEXT",
                        help="start the picture at the first h2 whose text starts with TEXT (e.g. Scores)")  # fmt: skip
    args = parser.parse_args()
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (*FLAGS, f"--window-size={args.width},{args.height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(args.html.resolve().as_uri())
        if args.from_heading:
            found = driver.execute_script(
                "const h = [...document.querySelectorAll('h2')].find(e => e.textContent.startsWith(arguments[0]));"
                "if (h) { h.scrollIntoView(); } return Boolean(h);",
                args.from_heading,
            )
            if not found:
                raise SystemExit(f"no h2 starting with {args.from_heading!r} in {args.html}")
        args.png.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.png))
    finally:
        driver.quit()
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()

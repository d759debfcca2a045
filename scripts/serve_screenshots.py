"""Screenshots of the page of `nst serve` for the README: empty, running, finished.

    nst serve --data-dir /tmp/nst-shots &
    python scripts/serve_screenshots.py http://127.0.0.1:8080/ docs/

Drives Debian's chromium (or --chromium PATH) with Playwright; writes serve-{empty,running,finished}.jpg.
"""
from __future__ import annotations

import argparse
import io
import shutil
from pathlib import Path

from PIL import Image
from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent


def save(page, path: Path) -> None:
    shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    shot.thumbnail((900, 1400))
    shot.save(path, quality=82, optimize=True)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("--chromium", default=shutil.which("chromium"))
    parser.add_argument("--size", default="192")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        page.goto(args.url)
        expect(page.locator("#preset option")).to_have_count(5)
        save(page, args.out / "serve-empty.jpg")
        page.set_input_files("#content-input", str(ROOT / "examples" / "content.jpg"))
        page.set_input_files("#style-input", str(ROOT / "examples" / "style.jpg"))
        page.select_option("#preset", "starry_tubingen")
        page.fill("#size", args.size)
        page.fill("#iterations", "6")
        page.fill("#maxfun", "10")
        page.select_option("#init", "content")
        page.click("#start")
        expect(page.locator("#status")).to_contain_text("iteration 3 of 6", timeout=600_000)
        save(page, args.out / "serve-running.jpg")
        expect(page.locator("#status")).to_contain_text("finished", timeout=600_000)
        page.wait_for_timeout(1000)
        save(page, args.out / "serve-finished.jpg")
        browser.close()


if __name__ == "__main__":
    main()

"""The page of `nst serve` in a real headless Chromium (Debian's, driven by Playwright)."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from serve_support import CONTENT, STYLE, LiveServer, serve_settings

from engine.serve.app import STATIC

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
# Where the README's screenshots are written when asked: NST_SCREENSHOTS=docs pytest tests/test_serve_page.py
SCREENSHOTS = os.environ.get("NST_SCREENSHOTS")


def test_the_page_uses_relative_urls_only_and_nothing_from_elsewhere():
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text()
        assert not re.search(r"""(src|href|action)=["']/|fetch\(["'`]/|["'`]/api/|url\(/""", text), name
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name
        assert "innerHTML" not in text, name  # the server's text is always set as text


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium found: apt-get install chromium (.ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (the dev extra)")
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir):
    live = LiveServer(serve_settings(tmp_path_factory.mktemp("serve-page"), models_dir))
    yield live
    live.stop()


def shot(page, name: str, tmp_path: Path) -> None:
    folder = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"serve-{name}.png"), full_page=True)


def test_a_tiny_job_runs_in_the_page_and_a_second_is_cancelled(browser, server, tmp_path):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1100, "height": 900})
    problems = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("response", lambda reply: problems.append(f"{reply.status} {reply.url}") if reply.status >= 400 else None)
    page.goto(server.url)
    expect(page.locator("#preset option")).to_have_count(5)
    shot(page, "empty", tmp_path)

    page.set_input_files("#content-input", str(CONTENT))
    page.set_input_files("#style-input", str(STYLE))
    expect(page.locator("#styles li")).to_have_count(1)
    page.select_option("#preset", "starry_tubingen")
    expect(page.locator("#content_weight")).to_have_value("100")
    page.fill("#size", "64")
    page.fill("#iterations", "2")
    page.fill("#maxfun", "2")
    page.select_option("#init", "content")
    # Every text the status line shows, in order: a tiny job may pass iteration 1 faster than a poll.
    page.evaluate("""() => {
        window.statusTexts = [];
        new MutationObserver((changes) => changes.forEach((change) => change.addedNodes.forEach(
            (node) => window.statusTexts.push(node.textContent)))).observe(
            document.getElementById("status"), { childList: true });
    }""")
    page.click("#start")

    status = page.locator("#status")
    expect(status).to_contain_text("finished", timeout=60_000)
    shown = page.evaluate("window.statusTexts")
    running = [text for text in shown if text.startswith("running") and "iteration 1 of 2" in text]
    assert running and shown.index(running[0]) < len(shown) - 1, shown  # progress, live, before the end
    expect(page.locator("#progress")).to_have_js_property("value", 1)
    image = page.locator("#live-image")
    expect(image).to_have_attribute("src", re.compile(r"^api/jobs/[0-9a-z-]+/result\?v="))
    assert image.evaluate("img => img.complete && img.naturalWidth") == 64
    expect(page.locator("#download")).to_have_attribute("href", re.compile(r"/result\?download=1$"))
    page.locator("#scrubber").fill("0")
    expect(page.locator("#image-caption")).to_have_text("after iteration 1")
    first = server.http.get("api/jobs").json()["jobs"][0]
    assert first["status"] == "finished" and first["params"]["preset"] == "starry_tubingen"
    assert first["config"]["content_weight"] == 100 and first["config"]["size"] == 64
    shot(page, "finished", tmp_path)

    page.fill("#iterations", "500")
    page.fill("#maxfun", "4")
    page.click("#start")
    expect(status).to_contain_text("of 500", timeout=60_000)
    expect(page.locator("#live-image")).to_have_attribute("src", re.compile(r"/snapshots/\d+"))
    shot(page, "running", tmp_path)
    page.click("#cancel")
    expect(status).to_contain_text("cancelled", timeout=30_000)
    expect(page.locator("#resume")).to_be_visible()
    second = server.http.get("api/jobs").json()["jobs"][0]
    assert second["status"] == "cancelled" and second["id"] != first["id"]

    cards = page.locator("#history .card")
    expect(cards).to_have_count(2)
    page.locator(f'#history .card[data-id="{first["id"]}"] button', has_text="Run again").click()
    expect(page.locator("#iterations")).to_have_value("2")
    expect(page.locator("#content-preview")).to_be_visible()
    expect(page.locator("#styles li")).to_have_count(1)
    assert problems == []
    page.close()


def test_the_page_asks_for_the_token_then_works_with_its_cookie(browser, tmp_path, models_dir):
    from playwright.sync_api import expect

    token = "a-token-long-enough-to-guess-never"
    live = LiveServer(serve_settings(tmp_path, models_dir, token=token))
    try:
        page = browser.new_page()
        page.goto(live.url)
        expect(page.locator("#login")).to_be_visible()
        page.fill("#token", "wrong-wrong-wrong-wrong")
        page.click("#login-form button")
        expect(page.locator("#login-error")).to_have_text("wrong token")
        page.fill("#token", token)
        page.click("#login-form button")
        expect(page.locator("#app")).to_be_visible()
        expect(page.locator("#preset option")).to_have_count(5)
        page.close()
    finally:
        live.stop()

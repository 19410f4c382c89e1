"""The run report, opened for real in headless Chromium (Debian's ``chromium``, which
``scripts/setup.sh`` installs) through Playwright: no console errors, every expected figure and
gallery present, every image decoded, and a screenshot kept under ``test-artifacts/``."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As this machine's probe starts it: no sandbox as root, and nothing that would reach the network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def open_report(path: Path, screenshot: str) -> dict:
    """Load the report; return what the page shows (ids of figures, galleries and sections, images that
    failed to decode, console errors, requests to anything but the file itself, load time)."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "chromium is not installed: scripts/setup.sh installs Debian's chromium"
    ARTIFACTS.mkdir(exist_ok=True)
    url = path.resolve().as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            errors: list[str] = []
            requests: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("data:", url)) else None)
            page.goto(url, wait_until="load")
            page.wait_for_selector("body[data-ready='1']")
            shown = page.evaluate(
                """() => ({
                  sections: [...document.querySelectorAll('main > section')].map(s => s.id),
                  toc: [...document.querySelectorAll('#toc a')].map(a => a.getAttribute('href')),
                  figures: [...document.querySelectorAll('figure.plot')]
                      .filter(f => f.querySelector('svg')).map(f => f.id),
                  galleries: Object.fromEntries([...document.querySelectorAll('.gallery')].map(
                      g => [g.id, g.querySelectorAll('.tile').length])),
                  images: document.images.length,
                  broken: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt),
                  load_ms: performance.getEntriesByType('navigation')[0].loadEventEnd,
                })"""
            )
            page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)
        finally:
            browser.close()
    shown["errors"] = errors
    shown["requests"] = requests
    return shown


def check_report(run: Path, screenshot: str, *, figures: set[str], galleries: set[str], sections: set[str]) -> dict:
    """Write the run's report and check it in the browser; returns what the page showed."""
    from curate.reporting import write_report

    result = write_report(run)
    shown = open_report(result.path, screenshot)
    assert shown["errors"] == [], shown["errors"]
    assert shown["requests"] == [], shown["requests"]  # self-contained: nothing is fetched
    assert shown["broken"] == [], shown["broken"]
    assert sections <= set(shown["sections"]), (sections, shown["sections"])
    assert shown["toc"] == [f"#{s}" for s in shown["sections"]]  # the page's script ran
    assert figures <= set(shown["figures"]), (figures - set(shown["figures"]), shown["figures"])
    missing = {g for g in galleries if shown["galleries"].get(g, 0) == 0}
    assert not missing, (missing, shown["galleries"])
    return shown

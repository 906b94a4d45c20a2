"""Headless Chromium for the UI tests: Debian's /usr/bin/chromium driven by Playwright.

`.ci/run` installs the browser with apt (`chromium`, `chromium-driver`); Playwright's own
browser download (`playwright install`) is never used, since it needs the internet.
Screenshots go to `test-output/` at the project root, where CI keeps test output.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = ROOT / "test-output"
# Headless, no sandbox (CI runs as root), and nothing that phones home: the machine is
# offline, and background requests would only slow the page loads down.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1800, "height": 1000}  # wide enough for the added MLflow columns


def _missing(message: str) -> None:
    """CI installs everything these tests need, so there a missing piece is a failure."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_chromium() -> Path:
    """The browser binary (skips the test outside CI when it is not installed)."""
    if not CHROMIUM.exists():
        _missing(
            f"no Chromium at {CHROMIUM}: apt-get install -y chromium chromium-driver "
            "(or set CHROMIUM=/path/to/chromium)"
        )
    return CHROMIUM


@contextmanager
def browser_context(profile_dir: Path) -> Iterator:
    """A Playwright BrowserContext on a new, empty Chromium profile in `profile_dir`."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("no Playwright: pip install -e '.[dev]'")
    executable = require_chromium()
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile_dir),
            executable_path=str(executable),
            headless=True,
            args=FLAGS,
            viewport=VIEWPORT,
        )
        # The apps are React pages that fetch their data after load: allow for a busy CPU.
        context.set_default_timeout(90_000)
        try:
            yield context
        finally:
            context.close()


def screenshot(page, name: str, full_page: bool = False) -> Path:
    """Save a PNG of what the page shows now under test-output/; returns its path."""
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / name
    page.mouse.move(0, VIEWPORT["height"] - 1)  # no hover tooltip over the content
    page.screenshot(path=str(path), full_page=full_page)
    return path

"""A headless browser for the page tests: Debian's Chromium (requirements/debian.txt) driven by
Playwright (requirements.txt). Playwright's own browser download cannot work offline, so Playwright
launches the system Chromium by its path. Skips, saying what is missing, when either is absent.
The server the page talks to is ``tests._http_server.BackgroundServer``."""

from __future__ import annotations

import contextlib
import shutil
from typing import Any, Iterator

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser")
"""Executable names of Debian's (and Ubuntu's) Chromium, looked up on PATH."""
HEADLESS_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
"""Headless on a machine without a display or GPU, as root (no sandbox)."""


def chromium_path() -> str:
    """The path of the system Chromium; skips the test when there is none."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}): "
                "`apt-get install chromium` (requirements/debian.txt)")


@contextlib.contextmanager
def browser_page(width: int = 900, height: int = 700) -> Iterator[Any]:
    """A fresh Playwright ``Page`` in a headless Chromium, closed afterwards."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements.txt)")
    executable = chromium_path()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=HEADLESS_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()

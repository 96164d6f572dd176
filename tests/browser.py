"""A real browser for the web page's tests: Debian's headless Chromium driven by selenium.

Chromium starts with a fresh profile and everything that would reach the network turned off (the
machine has none; a test must never depend on it). Selenium calls block, so async tests run them
with `asyncio.to_thread` while the relay serves on the test's loop.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--disable-dev-shm-usage", "--window-size=1400,900",
)  # fmt: skip


def have_browser() -> bool:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return False
    return os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)


def require_browser() -> None:
    if have_browser():
        return
    why = (
        f"needs selenium, {CHROMIUM} and {CHROMEDRIVER} (make system-deps installs chromium, chromium-driver)"
    )
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(why)  # CI installs them: a missing browser there is a broken setup, not a skip
    pytest.skip(why)


def start_chromium(profile: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS:
        opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    require_browser()
    profile = Path(tempfile.mkdtemp(prefix="relay-chromium-"))
    driver = start_chromium(profile)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: Any, cond: Callable[[Any], Any], timeout: float = 10.0, what: str = "") -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(cond, what)


def screenshot(driver: Any, name: str, tmp: Path) -> Path:
    """A PNG of the page; also into $RELAY_UI_SCREENSHOTS (docs/) when set, to refresh the docs."""
    path = tmp / name
    driver.save_screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = os.environ.get("RELAY_UI_SCREENSHOTS")
    if out:
        shutil.copy(path, Path(out) / name)
    return path

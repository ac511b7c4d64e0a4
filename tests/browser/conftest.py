"""A real browser on the dashboard: Debian's headless Chromium driven by Selenium.

Chromium runs once per test session; every test starts its own runtara-core
(HTTP on 127.0.0.1, port 0) in the test reactor. Selenium's calls block, so
they run in a thread (``Browser.run``) while the reactor serves the page.
Without ``chromium`` and ``chromedriver`` the tests are skipped, except with
``CI=true``, where they fail (``.ci/run`` installs both).

``RUNTARA_SCREENSHOTS=DIR`` keeps each test's screenshots in DIR (the README's
pictures come from ``RUNTARA_SCREENSHOTS=docs/screenshots``); else they go to
the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

from tests.browser.support import Browser
from tests.e2e.support import Servers
from tests.pg import in_ci

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,860",
)


@pytest.fixture(scope="session")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    chromium = shutil.which("chromium")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        reason = "browser tests need Debian's chromium and chromium-driver packages"
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    options = Options()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    browser = webdriver.Chrome(service=Service(chromedriver), options=options)
    browser.set_page_load_timeout(30)
    yield browser
    browser.quit()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    kept = os.environ.get("RUNTARA_SCREENSHOTS", "").strip()
    directory = Path(kept).resolve() if kept else tmp_path / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest_twisted.async_yield_fixture
async def servers(tmp_path):
    from twisted.internet import reactor

    servers = Servers(reactor, tmp_path / "state", None)
    yield servers
    await servers.close_all()


@pytest_twisted.async_yield_fixture
async def core(servers):
    yield await servers.start()


@pytest_twisted.async_yield_fixture
async def browser(driver, core, screenshots):
    page = Browser(driver, core.http_url, screenshots)
    await page.run(driver.delete_all_cookies)
    yield page

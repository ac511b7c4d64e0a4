"""``Browser``: Selenium calls in a thread, so the test reactor keeps serving the page."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait
from twisted.internet.threads import deferToThread

_T = TypeVar("_T")

WAIT_SECONDS = 10.0
"""How long a test waits for the page to show something (it refreshes every 2 s)."""


class Browser:
    def __init__(self, driver: WebDriver, url: str, screenshots: Path) -> None:
        self.driver = driver
        self.url = url
        self.screenshots = screenshots

    async def run(self, call: Callable[..., _T], *args: Any) -> _T:
        """``call(*args)`` in a thread; its result."""
        return await deferToThread(call, *args)

    async def open(self, fragment: str = "#/") -> None:
        """Load the dashboard at ``fragment`` (a fresh page load)."""
        await self.run(self.driver.get, f"{self.url}/{fragment}")

    async def wait_for(
        self, condition: Callable[[WebDriver], _T], what: str, timeout: float = WAIT_SECONDS
    ) -> _T:
        """The first true value of ``condition(driver)``, polled until ``timeout``."""

        def until() -> _T:
            wait = WebDriverWait(
                self.driver, timeout, ignored_exceptions=(StaleElementReferenceException,)
            )
            return wait.until(condition, f"the page never showed {what}")

        return await self.run(until)

    async def text_of(self, selector: str, contains: str | None = None) -> str:
        """The text of the first element matching the CSS ``selector`` (once it shows
        ``contains``, when given)."""

        def found(driver: WebDriver) -> str | None:
            elements = driver.find_elements(By.CSS_SELECTOR, selector)
            if not elements:
                return None
            text = elements[0].text
            return text if contains is None or contains in text else None

        shown = f"{selector} containing {contains!r}" if contains else selector
        return await self.wait_for(found, shown)

    async def element(self, selector: str) -> WebElement:
        def found(driver: WebDriver) -> WebElement | None:
            elements = driver.find_elements(By.CSS_SELECTOR, selector)
            return elements[0] if elements and elements[0].is_displayed() else None

        return await self.wait_for(found, selector)

    async def click(self, selector: str) -> None:
        def enabled(driver: WebDriver) -> WebElement | None:
            elements = driver.find_elements(By.CSS_SELECTOR, selector)
            return elements[0] if elements and elements[0].is_enabled() else None

        button = await self.wait_for(enabled, f"{selector} enabled")
        await self.run(button.click)

    async def type_into(self, selector: str, text: str) -> None:
        field = await self.element(selector)
        await self.run(field.clear)
        await self.run(field.send_keys, text)

    async def script(self, source: str, *args: Any) -> Any:
        return await self.run(self.driver.execute_script, source, *args)

    async def screenshot(self, name: str) -> Path:
        path = self.screenshots / f"{name}.png"
        await self.run(self.driver.save_screenshot, str(path))
        return path

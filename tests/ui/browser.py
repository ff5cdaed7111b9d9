"""A real headless Chromium for the dashboard tests: Debian's ``chromium`` driven through its
``chromium-driver`` with Selenium (a dev dependency), offline (no driver download), each
session with its own profile under the test's temp directory.

``Browser`` adds what every test needs: open a dashboard page, wait for a condition (polling
with a deadline, never a sleep), read the console for Content-Security-Policy violations, and
save a screenshot that is checked not to be blank.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from PIL import Image, ImageStat
from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from support import wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Set to a folder to keep a copy of every screenshot (docs/screenshots/ was made this way).
SCREENSHOT_COPY_ENV = "CNN_SWARM_UI_SCREENSHOTS"
HOSTILE = "<img src=x onerror=alert(1)>"

T = TypeVar("T")


MISSING = [
    what
    for what, missing in (
        ("Debian's chromium (/usr/bin/chromium)", not CHROMIUM.exists()),
        ("Debian's chromium-driver (/usr/bin/chromedriver)", not CHROMEDRIVER.exists()),
    )
    if missing
]

# The rule of tests/controller/test_api_docs.py: under CI=true the browser tier must run.
needs_browser = pytest.mark.skipif(
    bool(MISSING) and not os.environ.get("CI"),
    reason=f"needs {', '.join(MISSING)}; `make browser` installs them as root",
)


def blank_screenshot(path: Path) -> bool:
    """Whether the image at ``path`` is (nearly) one flat colour."""
    with Image.open(path) as image:
        stddev = ImageStat.Stat(image.convert("L")).stddev[0]
    return stddev < 8.0


class Browser:
    """One Chromium session against the controller at ``base_url``."""

    def __init__(self, driver: WebDriver, base_url: str, out_dir: Path) -> None:
        self.driver = driver
        self.base_url = base_url.rstrip("/")
        self.out_dir = out_dir

    # -- pages and elements -------------------------------------------------------------------

    def open(self, path: str) -> None:
        """Load ``path`` of the controller and wait for the page's scripts to have run."""
        self.driver.get(self.base_url + path)
        self.wait(lambda: self.driver.execute_script("return document.readyState") == "complete")

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def text(self, css: str) -> str:
        """The visible text of the first element matching ``css`` ("" when there is none)."""
        found = self.find_all(css)
        return str(found[0].text) if found else ""

    def wait(
        self,
        condition: Callable[[], T | None],
        timeout: float = 30.0,
        what: str | Callable[[], str] = "the page",
    ) -> T:
        """Poll ``condition`` until it is truthy (elements re-rendered meanwhile are retried)."""
        return wait_until(
            condition,
            timeout,
            interval=0.1,
            what=what,
            ignoring=(NoSuchElementException, StaleElementReferenceException),
        )

    def wait_text(self, css: str, predicate: Callable[[str], bool], timeout: float = 30.0) -> str:
        """Wait until the text of ``css`` satisfies ``predicate``; return it."""
        return self.wait(
            lambda: (lambda text: text if predicate(text) else None)(self.text(css)),
            timeout,
            what=lambda: f"the text of {css!r} (now {self.text(css)!r})",
        )

    # -- what the browser saw -------------------------------------------------------------------

    def console(self) -> list[str]:
        """Console messages since the last call (errors, CSP violations)."""
        return [str(entry.get("message", "")) for entry in self.driver.get_log("browser")]

    def policy_violations(self) -> list[str]:
        return [
            line
            for line in self.console()
            if "Content Security Policy" in line or "Refused to" in line
        ]

    def alert_text(self) -> str | None:
        """The text of an open alert() dialog, or None (a script injected through a name would
        open one)."""
        try:
            return str(self.driver.switch_to.alert.text)
        except NoAlertPresentException:
            return None

    def screenshot(self, name: str) -> Path:
        """Save the viewport as ``<out_dir>/<name>.png``, check it is not blank, and copy it to
        $CNN_SWARM_UI_SCREENSHOTS when that is set."""
        path = self.out_dir / f"{name}.png"
        assert self.driver.save_screenshot(str(path)), path
        assert not blank_screenshot(path), f"{path} is blank"
        copy_to = os.environ.get(SCREENSHOT_COPY_ENV)
        if copy_to:
            shutil.copyfile(path, Path(copy_to) / path.name)
        return path


@contextmanager
def chromium(
    base_url: str, out_dir: Path, width: int = 1440, height: int = 1000
) -> Iterator[Browser]:
    """A headless Chromium session (own profile under ``out_dir``), always quit at the end."""
    if MISSING:
        pytest.fail(f"the browser tier needs {', '.join(MISSING)} (CI=true: it must run)")
    out_dir.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        f"--window-size={width},{height}",
        f"--user-data-dir={out_dir / 'profile'}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The driver is Debian's: Selenium Manager must not look for (or download) another one.
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(out_dir / "driver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(60)
        yield Browser(driver, base_url, out_dir)
    finally:
        driver.quit()

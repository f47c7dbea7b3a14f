"""Open the site (:mod:`tdabench.report.site`) in a headless Chromium through selenium: for the browser test and
``tdabench report --screenshot``.  Uses the system's Chromium and chromedriver (Debian: ``apt-get install
chromium chromium-driver``); selenium is never allowed to download a browser or driver of its own."""
from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)


def _which(names: tuple[str, ...]) -> Optional[str]:
    return next((path for path in map(shutil.which, names) if path), None)


def unavailable() -> Optional[str]:
    """Why a headless browser cannot be started here (None when it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install 'tdabench[site]')"
    if _which(BROWSERS) is None:
        return "no Chromium on PATH (Debian: apt-get install chromium chromium-driver)"
    if _which(DRIVERS) is None:
        return "no chromedriver on PATH (Debian: apt-get install chromium-driver)"
    return None


@contextmanager
def browser(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium driven by the system's chromedriver, with the browser console recorded."""
    reason = unavailable()
    if reason:
        raise RuntimeError(f"cannot start a headless browser: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _which(BROWSERS) or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=_which(DRIVERS)))
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver: Any, index: Path, timeout: float = 30.0) -> int:
    """Load ``index`` (a file) and wait until every plot has drawn its SVG; the number of plots."""
    from selenium.webdriver.common.by import By

    driver.get(Path(index).resolve().as_uri())
    deadline = time.monotonic() + timeout
    while True:
        plots = driver.find_elements(By.CSS_SELECTOR, ".plotly-graph-div")
        drawn = driver.find_elements(By.CSS_SELECTOR, ".js-plotly-plot svg.main-svg")
        if plots and len({d.find_element(By.XPATH, "ancestor::div[contains(@class,'js-plotly-plot')]").id
                          for d in drawn}) >= len(plots):
            return len(plots)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(plots)} plots on {index}, not all drawn after {timeout:.0f} s")
        time.sleep(0.2)


def screenshot(index: Path, png: Path, width: int = 1400, height: int = 1500) -> list[dict[str, Any]]:
    """A ``width`` × ``height`` PNG of the top of the site at ``png``; the browser console's entries."""
    with browser(width, height) as driver:
        open_page(driver, index)
        Path(png).parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(png))
        return driver.get_log("browser")

"""A headless Chromium for the Explorer's browser tests (``from browser import Browser``).

Debian's ``/usr/bin/chromium`` driven by ``/usr/bin/chromedriver`` through Selenium, given the
driver's path so Selenium Manager never downloads one. The browser can reach loopback only:

- ``--host-resolver-rules``: every host name resolves to nothing, except 127.0.0.1;
- ``--proxy-server`` points at the discard port 127.0.0.1:9 (nothing listens: a request sent
  there fails) and loopback bypasses it, so only the Explorer itself can answer.

Every request a page makes is recorded from Chrome's performance log (``Network.requestWillBeSent``,
which is logged before name resolution, so blocked attempts are recorded too), and
:meth:`Browser.assert_only_local` fails on any whose origin is not the Explorer's (``data:`` and
``blob:`` URLs are allowed). Screenshots go to ``$QWEN_INTERP_TEST_ARTIFACTS/explorer/`` (default
``test-artifacts/explorer/`` in the repository) and are checked to show something
(:func:`check_not_blank`).

A missing Chromium or chromedriver fails the tests with one message naming the Debian packages
(``apt-get install chromium chromium-driver``); the tests are never skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from qwen_interp import settings

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL = "apt-get install chromium chromium-driver"
REPO = Path(__file__).resolve().parent.parent
WINDOW = (1400, 1000)
# Loopback only: names resolve to nothing but 127.0.0.1; what would still go out meets a proxy on
# the discard port (closed), which loopback bypasses.
NETWORK_FLAGS = [
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.1;localhost",
]
QUIET_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--disable-extensions", "--disable-default-apps",
    "--no-default-browser-check", "--hide-scrollbars", "--force-device-scale-factor=1",
]
LOCAL_SCHEMES = ("data", "blob")


def require_browser() -> None:
    """Fail (never skip) when Debian's Chromium or its driver or Selenium is missing."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(f"the Explorer's browser tests need {' and '.join(missing)}: "
                    f"{INSTALL}", pytrace=False)
    try:
        import PIL  # noqa: F401
        import selenium  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"the Explorer's browser tests need {exc.name}: pip install selenium pillow "
                    "(the test extras)", pytrace=False)


def artifacts_dir() -> Path:
    """Where screenshots go: ``$QWEN_INTERP_TEST_ARTIFACTS/explorer`` (CI keeps that folder)."""
    folder = (settings.TEST_ARTIFACTS.get() or REPO / "test-artifacts") / "explorer"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def check_not_blank(path: Path, min_changed: float = 0.01, min_colors: int = 16) -> None:
    """The PNG at ``path`` shows something: at least ``min_changed`` of its pixels differ from
    its most common colour (the background) and it has more than ``min_colors`` colours."""
    from PIL import Image
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        assert rgb.size[0] >= 200 and rgb.size[1] >= 200, f"{path}: only {rgb.size} pixels"
        counts = Counter(rgb.getdata())
    total = sum(counts.values())
    background, same = counts.most_common(1)[0]
    changed = 1 - same / total
    assert changed >= min_changed, (f"{path} is nearly blank: {changed:.2%} of pixels differ "
                                    f"from the background {background}")
    assert len(counts) > min_colors, f"{path} has only {len(counts)} colours"


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class Browser:
    """One Chromium for a test module; ``base`` is the Explorer's ``http://127.0.0.1:PORT``."""

    def __init__(self, base: str) -> None:
        require_browser()
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        self.base = base.rstrip("/")
        self.profile = tempfile.mkdtemp(prefix="qwen-interp-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*QUIET_FLAGS, *NETWORK_FLAGS, f"--user-data-dir={self.profile}",
                     f"--window-size={WINDOW[0]},{WINDOW[1]}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        service = Service(executable_path=CHROMEDRIVER)
        try:
            self.driver = webdriver.Chrome(service=service, options=options)
        except Exception:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise
        self.driver.set_window_size(*WINDOW)
        self.origins = {origin(self.base)}  # where requests may go (a test may add one)
        self.requests: list[dict] = []  # {"url", "method", "status"} since the last reset
        self.console: list[dict] = []

    # --- navigation ------------------------------------------------------------------------------
    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def wait(self, condition, timeout: float = 20, message: str = ""):
        """``condition(driver)`` until it is truthy; its value. On timeout the message says what
        was awaited, with the page's console errors."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(condition)
        except TimeoutException:
            errors = [e["message"] for e in self.console_entries() if e["level"] == "SEVERE"]
            raise AssertionError(f"timed out after {timeout}s waiting for {message or condition}"
                                 f" on {self.driver.current_url}; console errors: {errors}"
                                 ) from None

    def find(self, css: str, timeout: float = 20):
        """The first element matching ``css``, once there is one."""
        from selenium.webdriver.common.by import By
        return self.wait(lambda d: (d.find_elements(By.CSS_SELECTOR, css) or [None])[0],
                         timeout, f"an element {css!r}")

    def find_all(self, css: str) -> list:
        from selenium.webdriver.common.by import By
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    # --- network record --------------------------------------------------------------------------
    def _drain(self) -> None:
        """Move Chrome's performance log into ``self.requests`` (reading the log empties it)."""
        by_id: dict[str, dict] = {}
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            params = message.get("params", {})
            if message["method"] == "Network.requestWillBeSent":
                record = {"url": params["request"]["url"], "method": params["request"]["method"],
                          "status": None}
                by_id[params["requestId"]] = record
                self.requests.append(record)
            elif message["method"] == "Network.responseReceived":
                record = by_id.get(params["requestId"])
                if record is not None:
                    record["status"] = params["response"]["status"]
        self.console.extend(self.driver.get_log("browser"))

    def recorded(self) -> list[dict]:
        self._drain()
        return list(self.requests)

    def console_entries(self) -> list[dict]:
        self._drain()
        return list(self.console)

    def reset_record(self) -> None:
        self._drain()
        self.requests.clear()
        self.console.clear()

    def foreign_requests(self) -> list[str]:
        """URLs requested since the last reset whose origin is not the Explorer's."""
        return [r["url"] for r in self.recorded()
                if urlsplit(r["url"]).scheme not in LOCAL_SCHEMES
                and origin(r["url"]) not in self.origins]

    def assert_only_local(self) -> None:
        """Every request went to the Explorer (or was data:/blob:), and none of its answers was a
        server error."""
        requests = self.recorded()
        assert requests, "no request was recorded: the performance log is not working"
        foreign = self.foreign_requests()
        assert not foreign, f"requests left the machine: {foreign}"
        failed = [(r["method"], r["url"], r["status"]) for r in requests
                  if r["status"] is not None and r["status"] >= 500]
        assert not failed, f"the Explorer answered with server errors: {failed}"

    # --- screenshots -----------------------------------------------------------------------------
    def screenshot(self, name: str, readme_name: str | None = None) -> Path:
        """Save the window as ``<artifacts>/<name>.png`` and check it is not blank. With
        ``readme_name`` and ``$QWEN_INTERP_TEST_README_IMAGES`` set, copy it there under that
        name."""
        time.sleep(0.3)  # let the last layout and transitions settle
        path = artifacts_dir() / f"{name}.png"
        assert self.driver.save_screenshot(str(path)), f"could not save {path}"
        check_not_blank(path)
        readme = readme_images_dir()
        if readme_name and readme is not None:
            readme.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, readme / readme_name)
        return path

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


def readme_images_dir() -> Path | None:
    """``$QWEN_INTERP_TEST_README_IMAGES`` as a folder (relative to the repository), if set: the
    browser tests then also write the README's screenshots there (docs/images)."""
    folder = settings.TEST_README_IMAGES.get()
    if folder is None:
        return None
    return folder if folder.is_absolute() else REPO / folder

"""A real headless Chromium for the browser tests: Debian's ``chromium`` and ``chromium-driver``
(``make test`` installs them, tools/local-services), driven by Selenium; nothing is downloaded.

Missing browser: a skip on a laptop, a failure under ``CI=true``. Screenshots go to
``var/screenshots/`` (ignored by git, kept as the run's artefacts).

``offline_browser`` closes the network to anything but this machine's loopback: host names
resolve to nothing, and every request that is not to 127.0.0.1 goes to a proxy that records
it and answers nothing (Chromium never proxies loopback). A page that needs the Internet
fails to render, and the test can also see what it tried to reach.
"""
from __future__ import annotations

import json
import shutil
import socket
import threading
from pathlib import Path

import pytest

from tests.skip_policy import skips_fail

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "var" / "screenshots"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run")


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (name if Path(name).is_file() else None)
        if found:
            return found
    return None


class RecordingProxy:
    """A proxy that answers nothing: it records the first line of each request
    (``CONNECT cdn.example:443 HTTP/1.1``) and closes the connection."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)
        self._socket.settimeout(0.2)
        self.port = self._socket.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._socket.accept()
            except OSError:
                continue
            with client:
                client.settimeout(2)
                try:
                    first = client.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace")
                except OSError:
                    first = "(nothing read)"
                self.requests.append(first)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._socket.close()


def _driver(tmp_path: Path, extra_flags: tuple[str, ...] = ()):
    chromium = _find("/usr/bin/chromium", "chromium")
    driver_path = _find("/usr/bin/chromedriver", "chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:  # pragma: no cover - requirements-dev.txt pins it
        chromium, missing = None, str(exc)
    else:
        missing = "apt-get install -y chromium chromium-driver"
    if not (chromium and driver_path):
        if skips_fail():
            pytest.fail(f"browser tests need Chromium and ChromeDriver under CI=true ({missing})")
        pytest.skip(f"no Chromium/ChromeDriver here ({missing})")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 "--window-size=1500,1100", *extra_flags):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return driver


@pytest.fixture
def browser(tmp_path):
    driver = _driver(tmp_path)
    yield driver
    driver.quit()


@pytest.fixture
def offline_browser(tmp_path):
    """A browser that can reach 127.0.0.1 only; ``driver.proxy.requests`` lists what it
    tried to reach elsewhere."""
    proxy = RecordingProxy()
    driver = _driver(tmp_path, (
        f"--proxy-server=http://127.0.0.1:{proxy.port}",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ))
    driver.proxy = proxy
    yield driver
    driver.quit()
    proxy.close()


def requested_urls(driver) -> tuple[list[str], list[str]]:
    """The URLs the pages asked for since the last call (Chromium's performance log): those
    sent, and those the browser blocked before sending (``blockedReason``: a
    Content-Security-Policy, for one)."""
    urls: dict[str, str] = {}
    blocked: list[str] = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message.get("method") == "Network.requestWillBeSent":
            urls[params["requestId"]] = params["request"]["url"]
        elif message.get("method") == "Network.loadingFailed" and params.get("blockedReason"):
            blocked.append(urls.pop(params["requestId"], ""))
    return list(urls.values()), blocked

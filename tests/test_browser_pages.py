"""The platform's own pages in a real headless Chromium that can reach nothing but this
machine: the API docs (Swagger UI and Redoc, from vendored static files) render every
operation of the schema, and the landing page renders its health (screenshot:
``var/screenshots/landing.png``).

The web is the real role (gunicorn, whitenoise serving ``collectstatic``'s output), as
``make run`` and the image serve it. The browser: tests/browser_support.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.browser_support import SCREENSHOTS, requested_urls
from tests.processes import wait_until
from tests.test_api_e2e import _http
from tests.test_platform import free_port

pytestmark = [pytest.mark.rabbitmq]

REPO = Path(__file__).resolve().parents[1]
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


@pytest.fixture(scope="module")
def collected_static(tmp_path_factory) -> Path:
    """The web's var/ with collectstatic's output, as `make run` and the image have it."""
    var_dir = tmp_path_factory.mktemp("var")
    subprocess.run([sys.executable, str(REPO / "platform" / "manage.py"), "collectstatic",
                    "--noinput", "--verbosity", "0"], check=True, timeout=300,
                   env={**os.environ, "SWITCHYARD_VAR_DIR": str(var_dir),
                        "DJANGO_SETTINGS_MODULE": "switchyard.settings.base"})
    return var_dir


@pytest.fixture
def web(start_role, collected_static) -> str:
    port = free_port()
    role = start_role("web", WEB_BIND=f"127.0.0.1:{port}", WEB_WORKERS="1",
                      SWITCHYARD_VAR_DIR=str(collected_static))
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _http(f"{url}/healthz") == 200, 60, "web", roles=[role])
    return url


def schema_operations(web: str) -> dict[str, tuple[str, str]]:
    """operationId -> (METHOD, path) of every operation in the served schema."""
    with urllib.request.urlopen(f"{web}/api/schema/?format=json", timeout=10) as resp:
        schema = json.load(resp)
    return {op["operationId"]: (method.upper(), path)
            for path, item in schema["paths"].items()
            for method, op in item.items() if method in HTTP_METHODS}


def assert_only_local(driver, web: str) -> list[str]:
    """Every request the pages sent went to the web; returns those the browser blocked."""
    sent, blocked = requested_urls(driver)
    # Chromium's own chrome:// pages (its new tab) are no network request.
    sent = [u for u in sent if u.split(":", 1)[0] in {"http", "https", "ws", "wss"}]
    assert sent, "the performance log should list the page's requests"
    assert [u for u in sent if not u.startswith(web)] == []
    # The proxy also sees Chromium's own background calls (its updater, clock, sign-in);
    # none of them is to where the docs' assets used to come from.
    cdns = ("cdn.jsdelivr.net", "unpkg.com", "fonts.googleapis.com", "fonts.gstatic.com",
            "cdn.redoc.ly")
    assert [r for r in driver.proxy.requests if any(cdn in r for cdn in cdns)] == []
    return blocked


def test_the_browser_cannot_reach_the_internet(offline_browser, web):
    # The closed network is what makes the docs test mean "vendored": a CDN would fail.
    offline_browser.get(f"{web}/healthz")
    outcome = offline_browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch("https://cdn.jsdelivr.net/npm/swagger-ui-dist@latest/swagger-ui.css")
          .then(() => done("reached"), () => done("blocked"));""")
    assert outcome == "blocked"
    assert any("cdn.jsdelivr.net" in request for request in offline_browser.proxy.requests)


def test_swagger_ui_and_redoc_render_every_operation_offline(offline_browser, web):
    from selenium.webdriver.common.by import By

    driver = offline_browser
    operations = schema_operations(web)
    assert len(operations) >= 10, operations

    # Swagger UI: one block per operation, with its method and path
    driver.get(f"{web}/api/docs/")
    wait_until(lambda: len(driver.find_elements(By.CSS_SELECTOR, ".opblock")) >= len(operations),
               30, "Swagger UI to render the operations", interval=0.5)
    rendered = {
        (block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text,
         block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path"))
        for block in driver.find_elements(By.CSS_SELECTOR, ".opblock")}
    assert rendered == set(operations.values())
    assert "Switchyard API" in driver.find_element(By.CSS_SELECTOR, ".info .title").text
    driver.save_screenshot(str(SCREENSHOTS / "api-docs-swagger.png"))
    assert_only_local(driver, web)

    # Redoc: a section per operation, named by its operationId
    driver.get(f"{web}/api/redoc/")
    def sections() -> set[str]:
        return {element.get_attribute("data-section-id").rsplit("/", 1)[-1]
                for element in driver.find_elements(By.CSS_SELECTOR,
                                                    '[data-section-id*="operation/"]')}

    wait_until(lambda: sections() >= set(operations), 30, "Redoc to render the operations",
               interval=0.5)
    driver.save_screenshot(str(SCREENSHOTS / "api-docs-redoc.png"))
    # Redoc's sidebar names a logo on Redocly's CDN: the page's policy keeps it unfetched.
    assert assert_only_local(driver, web) == ["https://cdn.redoc.ly/redoc/logo-mini.svg"]


def test_the_landing_page_renders_health_and_links(web, lanes_empty, offline_browser):
    # The browser is set up after the web, so it is closed first: its idle connections
    # would otherwise hold a gunicorn worker in its graceful shutdown.
    from selenium.webdriver.common.by import By

    driver = offline_browser
    driver.get(f"{web}/")
    assert driver.find_element(By.TAG_NAME, "h1").text == "Switchyard"
    checks = {row.get_attribute("id"): row.text
              for row in driver.find_elements(By.CSS_SELECTOR, "#checks tr")}
    assert checks == {"check-broker": "broker reachable",
                      "check-management-api": "management API reachable",
                      "check-database": "database reachable"}
    lanes = [row.get_attribute("id") for row in driver.find_elements(By.CSS_SELECTOR,
                                                                      "#lanes tbody tr")]
    assert lanes == ["lane-slow", "lane-quick"]
    links = {a.get_attribute("id"): a.get_attribute("href")
             for a in driver.find_elements(By.CSS_SELECTOR, "#links a[id]")}
    assert links["link-api-docs"] == f"{web}/api/docs/"
    assert links["link-flower"].endswith(":5555/")
    driver.find_element(By.ID, "link-runbooks").click()
    wait_until(lambda: driver.current_url == f"{web}/runbooks/", 10, "the runbooks page")
    driver.back()
    wait_until(lambda: driver.find_elements(By.ID, "health"), 10, "the landing page again")
    driver.save_screenshot(str(SCREENSHOTS / "landing.png"))
    assert (SCREENSHOTS / "landing.png").stat().st_size > 10_000
    assert_only_local(driver, web)

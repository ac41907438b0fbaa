"""Flower's Queues page and the dashboard, in a real headless Chromium, while a load runs.

The browser: tests/browser_support.py (Debian's chromium and chromium-driver, installed by
``make test``). Screenshots go to ``var/screenshots/``.
"""
from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.contrib.auth.models import User
from django.db import connection

from jobs.bulk import BulkJob, job_submit_bulk
from tenants.models import Tenant
from tests.browser_support import SCREENSHOTS
from tests.processes import wait_until
from tests.test_api_e2e import _http
from tests.test_lanes import start_lane
from tests.test_platform import free_port, http_status

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers]

REPO = Path(__file__).resolve().parents[1]


class Load:
    """Premium quick jobs and standard slow jobs submitted steadily until stopped."""

    def __init__(self) -> None:
        self.premium = Tenant.objects.create(name="load-premium", tier="premium",
                                             submissions_per_minute=1_000_000)
        self.standard = Tenant.objects.create(name="load-standard", tier="standard",
                                              submissions_per_minute=1_000_000)
        self.stop = threading.Event()
        self.submitted = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                quick = [BulkJob(task="demo.quick_task", params={"x": i}) for i in range(20)]
                slow = [BulkJob(task="demo.slow_task", params={"seconds": 0.05})] * 2
                self.submitted += job_submit_bulk(tenant=self.premium, jobs=quick).accepted
                self.submitted += job_submit_bulk(tenant=self.standard, jobs=slow).accepted
                self.stop.wait(0.5)
        finally:
            connection.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)


def _number(driver, selector: str) -> float:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, selector)
    try:
        return float(found[0].text) if found else 0.0
    except ValueError:
        return 0.0


def test_flower_and_dashboard_show_per_queue_throughput_under_load(
        browser, start_role, management, tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By

    monkeypatch.setenv("SWITCHYARD_METRICS_DIR", str(tmp_path / "metrics"))
    # The web serves collected static files (whitenoise), as after `make run`'s collectstatic.
    var_dir = tmp_path / "var"
    subprocess.run([sys.executable, str(REPO / "platform" / "manage.py"), "collectstatic",
                    "--noinput", "--verbosity", "0"], check=True, timeout=120,
                   env={**os.environ, "SWITCHYARD_VAR_DIR": str(var_dir),
                        "DJANGO_SETTINGS_MODULE": "switchyard.settings.base",
                        "SWITCHYARD_DEMO_TASKS": "1"})
    web_port, flower_port = free_port(), free_port()
    flower_auth = "ops:flower-pw-for-this-test"
    roles = [
        start_role("web", WEB_BIND=f"127.0.0.1:{web_port}", WEB_WORKERS="2",
                   SWITCHYARD_VAR_DIR=str(var_dir)),
        start_role("flower", FLOWER_PORT=str(flower_port), FLOWER_BASIC_AUTH=flower_auth),
        start_lane(start_role, management, "quick", 2),
        start_lane(start_role, management, "slow", 1),
    ]
    web = f"http://127.0.0.1:{web_port}"
    flower = f"http://127.0.0.1:{flower_port}"
    wait_until(lambda: _http(f"{web}/healthz") == 200, 60, "web", roles=roles)
    wait_until(lambda: http_status(f"{flower}/queues") == 401, 60, "Flower", roles=roles)
    assert http_status(f"{flower}/api/switchyard/queues", "ops:wrong") == 401
    assert http_status(f"{flower}/api/switchyard/queues", flower_auth) == 200
    # Hashed as the web's own settings do (the test settings use a faster hasher).
    User.objects.create(username="ops", is_staff=True,
                        password=PBKDF2PasswordHasher().encode("dashboard-pw", "saltsalt1234"))

    with Load() as load:
        # Flower: log in (basic auth, sent on every request as a browser does once the
        # login prompt was answered), find the Queues tab on Flower's own Workers page.
        browser.execute_cdp_cmd("Network.enable", {})
        token = base64.b64encode(flower_auth.encode()).decode()
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders",
                                {"headers": {"Authorization": f"Basic {token}"}})
        browser.get(f"{flower}/workers")
        browser.find_element(By.ID, "switchyard-queues-tab").click()
        wait_until(lambda: "/queues" in browser.current_url, 10, "the Queues page")
        # The page refreshes itself every 5 s: wait until the loaded lane shows throughput.
        wait_until(lambda: _number(browser, "#sy-tp-quick-premium") > 0, 60,
                   "Flower to show quick/premium throughput above 0", roles=roles,
                   interval=0.5)
        wait_until(lambda: browser.find_element(By.ID, "sy-status").text.startswith("Updated"),
                   15, "a refresh of Flower's Queues page")
        quick_rate = _number(browser, "#sy-tp-quick-premium")
        assert quick_rate > 0
        # Consumers come from the management API's queue stats (refreshed every 5 s by
        # RabbitMQ): the next refreshes of the page show the one quick consumer.
        wait_until(lambda: browser.find_element(
            By.CSS_SELECTOR, '#sy-row-quick-premium [data-lane-field="consumers"]').text == "1",
            20, "Flower to show the quick lane's consumer", roles=roles, interval=0.5)
        # Fair sharing: the quick lane's top tenant is the one submitting quick jobs.
        wait_until(lambda: browser.find_elements(By.ID, "sy-tenant-quick-load-premium"), 20,
                   "Flower to list the quick lane's top tenant", roles=roles, interval=0.5)
        browser.save_screenshot(str(SCREENSHOTS / "flower-queues.png"))

        # The dashboard: log in through the admin's form, as staff.
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
        browser.get(f"{web}/admin/login/?next=/dashboard/")
        browser.find_element(By.ID, "id_username").send_keys("ops")
        browser.find_element(By.ID, "id_password").send_keys("dashboard-pw")
        browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        wait_until(lambda: browser.current_url.endswith("/dashboard/"), 15, "the dashboard")
        wait_until(lambda: _number(browser, "#tp-quick-premium") > 0, 60,
                   "the dashboard to show quick/premium throughput above 0", roles=roles,
                   interval=0.5)
        # Charts are drawn, and refreshed (the wait chart builds from successive polls).
        wait_until(lambda: browser.find_elements(
            By.CSS_SELECTOR, '#chart-throughput path[data-series="quick/premium"]'), 15,
            "the throughput chart")
        wait_until(lambda: len(browser.execute_script(
            "return document.querySelector('#chart-wait path')"
            " ? document.querySelector('#chart-wait path').getAttribute('d') : ''"
        ).split("L")) >= 2, 30, "two refreshes on the wait chart", interval=0.5)
        assert _number(browser, "#tp-quick-premium") > 0
        share = browser.find_elements(
            By.CSS_SELECTOR, '#tenants tr[data-lane="quick"][data-tenant="load-premium"]')
        assert share and share[0].text.split()[1] == "load-premium"
        browser.save_screenshot(str(SCREENSHOTS / "dashboard.png"))
    assert load.submitted > 0
    for role in roles:
        role.assert_running()

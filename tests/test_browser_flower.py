"""Flower's Queues charts and its Tasks page's lane, tier and tenant, in a real headless
Chromium that can reach nothing but this machine, against the real Flower role and real
workers running real jobs.

The browser: tests/browser_support.py. Screenshots: ``var/screenshots/flower-history.png``,
``flower-tasks.png``, ``flower-tasks-filtered.png``.
"""
from __future__ import annotations

import base64
import json
import urllib.request

import pytest

from jobs.bulk import BulkJob, job_submit_bulk
from jobs.models import Job
from tenants.models import Tenant
from tests.browser_support import SCREENSHOTS, requested_urls
from tests.processes import wait_until
from tests.test_lanes import start_lane
from tests.test_platform import free_port, http_status

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers]

AUTH = "ops:flower-pw-for-this-test"
QUICK_JOBS, SLOW_JOBS = 5, 3


def _flower_json(url: str):
    request = urllib.request.Request(url)
    request.add_header("Authorization", "Basic " + base64.b64encode(AUTH.encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def _succeeded(ids, status=Job.Status.SUCCEEDED) -> bool:
    return Job.objects.filter(id__in=ids, status=status).count() == len(ids)


def _points(browser, chart: str, series: str) -> list[float]:
    return browser.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0] + ' circle.sy-point'))"
        ".filter(c => c.dataset.series === arguments[1]).map(c => Number(c.dataset.value));",
        f"#{chart}", series)


def _rows(browser) -> dict[str, dict[str, str]]:
    """The Tasks table as shown: task id -> column slug -> the cell's text."""
    return browser.execute_script("""
        const heads = document.querySelectorAll('.dataTables_scrollHead th').length
          ? document.querySelectorAll('.dataTables_scrollHead th')
          : document.querySelectorAll('#tasks-table thead th');
        const columns = Array.from(heads).map(th => th.dataset.column);
        const out = {};
        document.querySelectorAll('#tasks-table tbody tr[id]').forEach(tr => {
          const cells = {};
          Array.from(tr.children).forEach((td, i) => {
            cells[columns[i]] = td.textContent.trim();
          });
          out[tr.id] = cells;
        });
        return out;""")


def _table_settled(browser) -> bool:
    return browser.execute_script(
        "const p = document.getElementById('tasks-table_processing');"
        "return !p || getComputedStyle(p).display === 'none';")


def test_flower_charts_the_hour_and_shows_and_filters_tasks_by_lane_tier_and_tenant(
        offline_browser, start_role, management):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser = offline_browser
    port = free_port()
    flower = f"http://127.0.0.1:{port}"
    roles = [start_role("flower", FLOWER_PORT=str(port), FLOWER_BASIC_AUTH=AUTH),
             start_lane(start_role, management, "quick", 2),
             start_lane(start_role, management, "slow", 1)]
    wait_until(lambda: http_status(f"{flower}/queues") == 401, 60, "Flower", roles=roles)
    acme = Tenant.objects.create(name="acme", tier="premium", submissions_per_minute=10_000)
    smallco = Tenant.objects.create(name="smallco", tier="standard",
                                    submissions_per_minute=10_000)

    # Given Flower capturing events: a probe job it has seen run (its receiver binds its
    # queue a moment after the page answers; events sent before are not for it)
    probes: list[str] = []

    def flower_saw_a_probe() -> bool:
        outcome = job_submit_bulk(tenant=acme, jobs=[BulkJob(task="demo.quick_task")])
        probes.extend(str(job_id) for job_id in outcome.job_ids)
        wait_until(lambda: _succeeded(probes), 30, "the probe job", roles=roles)
        seen = _flower_json(f"{flower}/api/tasks?limit=1000")
        return any(probe in seen for probe in probes)

    wait_until(flower_saw_a_probe, 60, "Flower to see a task run", interval=1, roles=roles)
    # When premium quick jobs (one of them failing) and standard slow jobs run on their
    # lanes' workers
    quick = [str(job_id) for job_id in job_submit_bulk(tenant=acme, jobs=[
        BulkJob(task="demo.quick_task", params={"x": i}) for i in range(QUICK_JOBS)]).job_ids]
    slow = [str(job_id) for job_id in job_submit_bulk(tenant=smallco, jobs=[
        BulkJob(task="demo.slow_task", params={"seconds": 0.05})] * SLOW_JOBS).job_ids]
    failed = [str(job_id) for job_id in job_submit_bulk(
        tenant=acme, jobs=[BulkJob(task="demo.fail")]).job_ids]
    wait_until(lambda: _succeeded(quick + slow) and _succeeded(failed, Job.Status.FAILED), 60,
               "the jobs to run", roles=roles)
    ran = quick + slow + failed
    seen = wait_until(lambda: (lambda tasks: tasks if set(ran) <= set(tasks) else None)(
        _flower_json(f"{flower}/api/tasks?limit=1000")), 30, "Flower to see every job run",
        interval=0.5, roles=roles)
    acmes = set(quick) | set(failed) | (set(probes) & set(seen))

    # Then the Queues page charts them, per lane and tier, minute by minute
    token = base64.b64encode(AUTH.encode()).decode()
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders",
                            {"headers": {"Authorization": f"Basic {token}"}})
    browser.get(f"{flower}/queues")
    finished = len(quick) + len(failed) + len(probes)
    wait_until(lambda: sum(_points(browser, "sy-chart-done-quick-premium", "finished"))
               == finished and sum(_points(browser, "sy-chart-done-slow-standard", "finished"))
               == SLOW_JOBS, 30, "the charts to count every run of quick/premium and "
               "slow/standard", interval=0.5, roles=roles)
    assert sum(_points(browser, "sy-chart-done-quick-premium", "failed")) == len(failed)
    assert _points(browser, "sy-chart-done-slow-standard", "failed") == []
    for key in ("quick-premium", "slow-standard"):
        assert _points(browser, f"sy-chart-wait-{key}", "p95"), f"no wait point for {key}"
        assert all(v >= 0 for v in _points(browser, f"sy-chart-wait-{key}", "p50"))
        done = browser.find_element(By.ID, f"sy-chart-done-{key}")
        assert done.find_elements(By.CSS_SELECTOR, 'path[data-series="finished"]')
    # ... and nothing for the lanes and tiers that ran nothing
    for key in ("quick-standard", "slow-premium"):
        for chart in (f"sy-chart-done-{key}", f"sy-chart-wait-{key}"):
            assert browser.find_element(By.ID, chart).get_attribute("data-points") == "0"
    # ... the last point being the current minute (or the one before, across a boundary)
    minutes = browser.execute_script(
        "return Array.from(document.querySelectorAll('#sy-chart-done-slow-standard"
        " circle.sy-point')).map(c => c.dataset.minute);")
    history = _flower_json(f"{flower}/api/switchyard/queues")["history"]
    assert len(history["minutes"]) == 60 and set(minutes) <= set(history["minutes"][-3:])
    browser.save_screenshot(str(SCREENSHOTS / "flower-history.png"))

    # Then the Tasks page shows each task's lane, tier and tenant (looked up a moment
    # after Flower saw the task: reload until they are there)
    def labelled_rows():
        browser.get(f"{flower}/tasks")
        wait_until(lambda: _rows(browser) and _table_settled(browser), 15, "the tasks table")
        rows = _rows(browser)
        return rows if all(rows.get(i, {}).get("tenant") for i in ran) else None

    rows = wait_until(labelled_rows, 30, "the tasks to show their labels", interval=0.5,
                      roles=roles)
    headers = browser.execute_script(
        "return Array.from(document.querySelectorAll('.dataTables_scrollHead th'))"
        ".map(th => th.textContent.trim());")
    assert {"Lane", "Tier", "Tenant"} <= set(headers)
    for task_id in quick + failed:
        assert (rows[task_id]["lane"], rows[task_id]["tier"], rows[task_id]["tenant"]) == (
            "quick", "premium", "acme")
    assert rows[failed[0]]["state"] == "FAILURE"
    for task_id in slow:
        assert (rows[task_id]["lane"], rows[task_id]["tier"], rows[task_id]["tenant"]) == (
            "slow", "standard", "smallco")
    browser.save_screenshot(str(SCREENSHOTS / "flower-tasks.png"))

    # When the lane filter is set to slow, only the slow jobs are listed
    def shown_after(change) -> set[str]:
        change()
        wait_until(lambda: _table_settled(browser), 15, "the filtered table")
        return set(_rows(browser))

    lane = Select(browser.find_element(By.ID, "sy-filter-lane"))
    assert wait_until(lambda: shown_after(lambda: lane.select_by_value("slow")) == set(slow),
                      15, "only the slow jobs", interval=0.5)
    assert "lane=slow" in browser.current_url
    browser.save_screenshot(str(SCREENSHOTS / "flower-tasks-filtered.png"))
    # ... with the premium tier as well, none (no premium job ran on slow)
    tier = Select(browser.find_element(By.ID, "sy-filter-tier"))
    assert wait_until(lambda: shown_after(lambda: tier.select_by_value("premium")) == set()
                      and "No tasks match" in browser.find_element(By.ID, "tasks-table").text,
                      15, "no task", interval=0.5)
    # ... and a tenant alone lists that tenant's tasks, also after a reload of the page
    browser.find_element(By.ID, "sy-filter-clear").click()
    wait_until(lambda: _table_settled(browser) and set(_rows(browser)) >= set(ran), 15,
               "every task again")
    browser.find_element(By.ID, "sy-filter-tenant").send_keys("smallco")
    wait_until(lambda: _table_settled(browser) and set(_rows(browser)) == set(slow), 15,
               "only smallco's tasks", interval=0.5)
    browser.get(f"{flower}/tasks?tenant=acme")
    wait_until(lambda: _table_settled(browser) and set(_rows(browser)) == acmes, 15,
               "only acme's tasks from the address", interval=0.5)
    # ... and each chart's link on the Queues page opens its lane and tier's tasks
    browser.get(f"{flower}/queues")
    browser.find_element(By.ID, "sy-tasks-link-slow-standard").click()
    wait_until(lambda: "/tasks" in browser.current_url and _table_settled(browser)
               and set(_rows(browser)) == set(slow), 15, "the slow/standard tasks",
               interval=0.5)
    assert Select(browser.find_element(By.ID, "sy-filter-lane")).first_selected_option.text \
        == "slow"
    # Everything the pages loaded came from Flower itself: the charts are drawn in the page
    sent, _ = requested_urls(browser)
    sent = [u for u in sent if u.split(":", 1)[0] in {"http", "https", "ws", "wss"}]
    assert sent and [u for u in sent if not u.startswith(flower)] == []
    for role in roles:
        role.assert_running()

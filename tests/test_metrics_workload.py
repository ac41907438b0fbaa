"""After a known workload, /metrics counts exactly what ran, across every process.

Real roles (gunicorn with two workers, a worker per lane with pool processes,
the dispatcher) record into one metrics directory; the web sums it.
"""
from __future__ import annotations

import http.client
import json
import time

import pytest
from django.conf import settings

from jobs.models import Job
from tenants.services import tenant_create
from tests.processes import wait_until
from tests.test_api_e2e import _http
from tests.test_lanes import start_lane
from tests.test_monitoring import samples
from tests.test_platform import free_port

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers]


class Web:
    """A running web role, reached over HTTP like any client."""

    def __init__(self, port: int) -> None:
        self.port = port

    def request(self, method: str, path: str, body=None, key: str | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Token {key}"
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, data

    def submit(self, key: str, body: dict) -> str:
        status, data = self.request("POST", "/api/v1/jobs", body, key)
        assert status == 202, data
        return json.loads(data)["id"]

    def metrics(self) -> dict:
        status, data = self.request("GET", "/metrics")
        assert status == 200, data
        return samples(data.decode())


def start_web(start_role, metrics_dir, workers: int = 2) -> tuple[Web, object]:
    port = free_port()
    role = start_role("web", WEB_BIND=f"127.0.0.1:{port}", WEB_WORKERS=str(workers),
                      SWITCHYARD_METRICS_DIR=str(metrics_dir))
    wait_until(lambda: _http(f"http://127.0.0.1:{port}/healthz") == 200, 60, "web",
               roles=[role])
    return Web(port), role


def get(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_and_histograms_equal_the_workload(start_role, management, tmp_path,
                                                    monkeypatch):
    # Every role started below records into this one directory (role_env copies os.environ).
    metrics_dir = tmp_path / "metrics"
    monkeypatch.setenv("SWITCHYARD_METRICS_DIR", str(metrics_dir))
    web, web_role = start_web(start_role, metrics_dir)
    roles = [web_role, start_role("dispatcher")]
    _, premium = tenant_create(name="premium-co", tier="premium")
    _, standard = tenant_create(name="standard-co", tier="standard")

    # Given 100 premium quick jobs (3 fail for good, 1 fails once then succeeds),
    # 50 standard slow jobs, and 2 standard quick jobs cancelled before they run
    ids = [web.submit(premium, {"task": "demo.quick_task", "params": {"x": i}})
           for i in range(96)]
    ids += [web.submit(premium, {"task": "demo.flaky", "params": {"fail_runs": 1}})
            for _ in range(3)]
    ids.append(web.submit(premium, {"task": "demo.flaky", "params": {"fail_runs": 1},
                                    "options": {"retry_policy": {
                                        "max_retries": 1, "backoff": 0.2, "jitter": False}}}))
    ids += [web.submit(standard, {"task": "demo.slow_task", "params": {"seconds": 0.01}})
            for _ in range(50)]
    for _ in range(2):
        later = web.submit(standard, {"task": "demo.quick_task", "options": {"countdown": 600}})
        assert web.request("POST", f"/api/v1/jobs/{later}/cancel", key=standard)[0] == 200

    # Then, before any worker runs, the backlog is visible per lane and tier: all 100 quick
    # jobs in the broker, and of the 50 slow ones the standard tenant's fair-share window
    # (the rest are held in the job table, still counted as waiting)
    in_broker = 100 + settings.SWITCHYARD_FAIR_WINDOW["slow"]

    def published():
        return Job.objects.filter(id__in=ids, published_at__isnull=False).count() == in_broker
    wait_until(published, 30, f"{in_broker} publications", roles=roles)
    # (the management API refreshes its message counts every few seconds)
    before = wait_until(lambda: (lambda m: m if get(m, "switchyard_queue_messages_ready",
                                                   lane="quick") == 100 else None)(web.metrics()),
                        30, "the broker's count of ready quick messages", roles=roles,
                        interval=0.5)
    assert get(before, "switchyard_jobs_waiting", lane="quick", tier="premium") == 100
    assert get(before, "switchyard_jobs_waiting", lane="slow", tier="standard") == 50
    assert get(before, "switchyard_queue_consumers", lane="slow") == 0
    assert get(before, "switchyard_oldest_waiting_job_age_seconds",
               lane="slow", tier="standard") > 0

    # When workers of both lanes run everything
    roles += [start_lane(start_role, management, "quick", 2),
              start_lane(start_role, management, "slow", 2)]
    wait_until(lambda: Job.objects.filter(id__in=ids, status__in=Job.FINISHED).count() == 150,
               120, "the workload to finish", roles=roles, interval=0.2)
    time.sleep(0.5)  # the last outcome is recorded right after its row is written

    # Then every counter equals what ran, summed over every process
    found = web.metrics()
    qp, ss = {"lane": "quick", "tier": "premium"}, {"lane": "slow", "tier": "standard"}
    quick, flaky, slow = ({**qp, "task": "demo.quick_task"}, {**qp, "task": "demo.flaky"},
                          {**ss, "task": "demo.slow_task"})
    cancelled = {"lane": "quick", "tier": "standard", "task": "demo.quick_task"}
    expected = {
        ("switchyard_jobs_submitted_total", "quick"): 96, ("switchyard_jobs_submitted_total",
                                                           "flaky"): 4,
        ("switchyard_jobs_submitted_total", "slow"): 50,
        ("switchyard_jobs_submitted_total", "cancelled"): 2,
        ("switchyard_jobs_started_total", "quick"): 96,
        ("switchyard_jobs_started_total", "flaky"): 5,
        ("switchyard_jobs_started_total", "slow"): 50,
        ("switchyard_jobs_succeeded_total", "quick"): 96,
        ("switchyard_jobs_succeeded_total", "flaky"): 1,
        ("switchyard_jobs_succeeded_total", "slow"): 50,
        ("switchyard_jobs_failed_total", "flaky"): 3,
        ("switchyard_jobs_failed_total", "quick"): 0,
        ("switchyard_jobs_failed_total", "slow"): 0,
        ("switchyard_jobs_retried_total", "flaky"): 1,
        ("switchyard_jobs_cancelled_total", "cancelled"): 2,
        ("switchyard_jobs_dead_lettered_total", "slow"): 0,
        ("switchyard_jobs_expired_total", "quick"): 0,
    }
    labels = {"quick": quick, "flaky": flaky, "slow": slow, "cancelled": cancelled}
    got = {key: get(found, key[0], **labels[key[1]]) for key in expected}
    assert got == expected

    # ... and each histogram holds one observation per run (wait, run) or per job (end to end)
    for name, count_qp, count_ss in (("switchyard_job_queue_wait_seconds", 101, 50),
                                     ("switchyard_job_run_seconds", 101, 50),
                                     ("switchyard_job_end_to_end_seconds", 100, 50)):
        assert get(found, f"{name}_count", **qp) == count_qp, name
        assert get(found, f"{name}_count", **ss) == count_ss, name
        assert get(found, f"{name}_bucket", **qp, le="+Inf") == count_qp, name
    assert get(found, "switchyard_job_run_seconds_sum", **ss) >= 50 * 0.01
    assert get(found, "switchyard_job_queue_wait_seconds_sum", **qp) > 0

    # ... the gauges show the drained lanes with their consumers
    assert get(found, "switchyard_jobs_waiting", lane="quick", tier="premium") == 0
    assert get(found, "switchyard_queue_consumers", lane="quick") == 1
    assert get(found, "switchyard_management_api_up") == 1
    # ... and the sum really came from several processes (web workers, pool children)
    assert len({p.name.rsplit("_", 1)[-1] for p in metrics_dir.glob("*.db")}) >= 4

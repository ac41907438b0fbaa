"""The job API end to end: HTTP in, a real broker, real workers and the dispatcher."""
from __future__ import annotations

import time
import urllib.request

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from jobs.models import Job
from tenants.services import tenant_create
from tests.processes import wait_until
from tests.test_lanes import start_lane
from tests.test_platform import free_port

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers]


@pytest.fixture
def api(transactional_db):
    _, key = tenant_create(name="e2e", tier="premium")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    client.key = key
    return client


def submit(api, body) -> str:
    resp = api.post("/api/v1/jobs", body, format="json")
    assert resp.status_code == 202, resp.json()
    return resp.json()["id"]


def status_of(api, job_id) -> dict:
    return api.get(f"/api/v1/jobs/{job_id}").json()


def test_http_submit_runs_to_succeeded(api, start_role, management):
    worker = start_lane(start_role, management, "quick", concurrency=1)
    job_id = submit(api, {"task": "demo.quick_task", "params": {"x": {"file": "a.jpg"}}})
    wait_until(lambda: status_of(api, job_id)["status"] == "succeeded", 30, "job to succeed",
               roles=[worker])
    job = status_of(api, job_id)
    assert job["result"] == {"file": "a.jpg"} and job["attempts"] == 1
    assert job["submitted_at"] <= job["started_at"] <= job["finished_at"]


def test_countdown_delays_the_start(api, start_role, management):
    roles = [start_lane(start_role, management, "quick", concurrency=1),
             start_role("dispatcher")]
    job_id = submit(api, {"task": "demo.quick_task", "options": {"countdown": 2}})
    wait_until(lambda: status_of(api, job_id)["status"] == "succeeded", 30, "delayed job",
               roles=roles)
    job = Job.objects.get(id=job_id)
    assert (job.started_at - job.submitted_at).total_seconds() >= 2.0


def test_expired_job_is_skipped_not_run(api, start_role, management):
    # Given a job that expires in 1 s, published while no worker consumes its lane
    job_id = submit(api, {"task": "demo.quick_task", "options": {"expires": 1}})
    wait_until(lambda: Job.objects.get(id=job_id).published_at, 10, "publication")
    time.sleep(1.5)
    # When a worker arrives after its expiry
    worker = start_lane(start_role, management, "quick", concurrency=1)
    # Then the job ends expired, never started, and the message is gone
    wait_until(lambda: status_of(api, job_id)["status"] == "expired", 30, "expiry",
               roles=[worker])
    assert Job.objects.get(id=job_id).started_at is None
    wait_until(lambda: management.queue(settings.TEST_VHOST, "quick")["messages"] == 0, 15,
               "the quick queue to empty")


def test_cancelled_job_never_runs(api, start_role, management):
    # Given a job already in the broker, cancelled before any worker took it
    job_id = submit(api, {"task": "demo.quick_task"})
    wait_until(lambda: Job.objects.get(id=job_id).published_at, 10, "publication")
    assert api.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
    # When a worker consumes the lane
    worker = start_lane(start_role, management, "quick", concurrency=1)
    # Then its message is acknowledged unrun and the job stays cancelled
    wait_until(lambda: management.queue(settings.TEST_VHOST, "quick")["messages"] == 0, 30,
               "the cancelled message to be consumed", roles=[worker])
    job = Job.objects.get(id=job_id)
    assert job.status == "cancelled" and job.started_at is None and job.attempts == 0


def test_broker_down_accepts_and_publishes_once_the_broker_is_back(api, start_role, management):
    # Given the web running against a broker that does not answer
    port = free_port()
    web = start_role("web", WEB_BIND=f"127.0.0.1:{port}", WEB_WORKERS="1",
                     CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:1//")
    wait_until(lambda: _http(f"http://127.0.0.1:{port}/healthz") == 200, 60, "web", roles=[web])

    # When a job is submitted
    started = time.monotonic()
    code, body = _post_job(port, api.key)
    took = time.monotonic() - started

    # Then it is accepted within 2 s, persisted, not yet published
    assert code == 202 and took < 2.0, (code, took)
    job = Job.objects.get(id=body["id"])
    assert job.published_at is None and job.status == "queued"

    # And once a dispatcher and a worker reach the real broker, it runs
    roles = [start_role("dispatcher"), start_lane(start_role, management, "quick", 1)]
    wait_until(lambda: Job.objects.get(id=job.id).status == "succeeded", 30,
               "the job accepted while the broker was down to run", roles=roles)


def _http(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except OSError:
        return 0


def _post_job(port: int, key: str):
    import json

    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/jobs", method="POST",
        data=json.dumps({"task": "demo.quick_task", "params": {"x": 7}}).encode(),
        headers={"Authorization": f"Token {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


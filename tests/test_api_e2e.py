"""The job API end to end: HTTP in, a real broker, real workers and the dispatcher."""
from __future__ import annotations

import datetime as dt
import json
import time
import urllib.error
import urllib.request

import pytest
from django.conf import settings
from django.utils import timezone
from kombu import Connection
from rest_framework.test import APIClient

from jobs.models import Job
from jobs.publishing import publish_job
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


@pytest.mark.parametrize("when", ["countdown", "eta"])
def test_countdown_or_eta_delays_the_start(api, start_role, management, when):
    roles = [start_lane(start_role, management, "quick", concurrency=1),
             start_role("dispatcher")]
    delay = {"countdown": 2} if when == "countdown" else {
        "eta": (timezone.now() + dt.timedelta(seconds=2.05)).isoformat()}
    job_id = submit(api, {"task": "demo.quick_task", "options": delay})
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


def test_retry_policy_runs_again_until_success(api, start_role, management):
    roles = [start_lane(start_role, management, "quick", 1), start_role("dispatcher")]
    job_id = submit(api, {"task": "demo.flaky", "params": {"fail_runs": 2},
                          "options": {"retry_policy": {"max_retries": 3, "backoff": 0.2}}})
    wait_until(lambda: status_of(api, job_id)["status"] == "succeeded", 60, "retries",
               roles=roles)
    job = status_of(api, job_id)
    assert (job["attempts"], job["result"], job["max_attempts"]) == (3, 3, 4)


def test_exhausted_retries_dead_letter_and_run_link_error(api, start_role, management):
    roles = [start_lane(start_role, management, "quick", 1), start_role("dispatcher")]
    job_id = submit(api, {"task": "demo.flaky", "params": {"fail_runs": 5}, "options": {
        "retry_policy": {"max_retries": 1, "backoff": 0.1},
        "link_error": {"task": "demo.quick_task", "params": {"x": "clean up"}}}})
    wait_until(lambda: Job.objects.filter(parent_id=job_id, status="succeeded").first(), 60,
               "the link_error job to run", roles=roles)
    job = status_of(api, job_id)
    assert (job["status"], job["attempts"]) == ("dead", 2)
    assert "RuntimeError: run 2 of 5 planned failures" in job["error"]
    assert "message moved to quick.dead" in job["error"]
    wait_until(lambda: management.queue(settings.TEST_VHOST, "quick.dead")["messages"] == 1,
               15, "the spent job's message in quick.dead")
    assert Job.objects.get(parent_id=job_id).result == "clean up"


def test_link_runs_after_success_for_the_same_tenant(api, start_role, management):
    worker = start_lane(start_role, management, "quick", 1)
    job_id = submit(api, {"task": "demo.quick_task", "params": {"x": 1},
                          "options": {"link": {"task": "demo.quick_task", "params": {"x": 2}}}})
    child = wait_until(lambda: Job.objects.filter(parent_id=job_id, status="succeeded").first(),
                       30, "the linked job to run", roles=[worker])
    assert child.result == 2 and child.tenant.name == "e2e"
    assert status_of(api, job_id)["status"] == "succeeded"


def test_a_job_published_twice_runs_once(api, start_role, management):
    # Given two copies of one publication in the queue (the web's late publish
    # after its deadline, and the dispatcher's)
    job_id = submit(api, {"task": "demo.slow_task", "params": {"seconds": 1}})
    job = wait_until(lambda: Job.objects.filter(id=job_id, published_at__isnull=False).first(),
                     10, "publication")
    Job.objects.filter(id=job_id).update(publications=0)
    job.publications = 0
    publish_job(job)
    # And an older copy: a publication the record no longer knows
    stale = Job.objects.get(id=job_id)
    stale.publications = -1
    publish_job(stale)
    Job.objects.filter(id=job_id).update(publications=1)
    wait_until(lambda: management.queue(settings.TEST_VHOST, "slow")["messages"] == 3, 10,
               "three copies in the slow queue")
    # When two worker processes take them at once
    worker = start_lane(start_role, management, "slow", concurrency=2)
    wait_until(lambda: Job.objects.get(id=job_id).status == "succeeded", 30, "the job",
               roles=[worker])
    wait_until(lambda: management.queue(settings.TEST_VHOST, "slow")["messages"] == 0, 30,
               "every copy to be consumed", roles=[worker])
    # Then it ran once
    assert Job.objects.get(id=job_id).attempts == 1


def test_a_job_whose_worker_was_lost_is_published_again_and_runs(api, start_role, management):
    # Given a job recorded started long ago whose message is gone (its worker died)
    job_id = submit(api, {"task": "demo.quick_task", "params": {"x": "again"}})
    wait_until(lambda: Job.objects.get(id=job_id).published_at, 10, "publication")
    with Connection(settings.CELERY_BROKER_URL) as conn:
        conn.default_channel.queue_purge("quick")
    Job.objects.filter(id=job_id).update(status="started", attempts=1, worker="gone@host",
                                         started_at=timezone.now() - dt.timedelta(hours=1))
    # When the dispatcher looks for lost jobs
    roles = [start_role("dispatcher", SWITCHYARD_REAP_EVERY="1"),
             start_lane(start_role, management, "quick", 1)]
    # Then it is published again and runs
    wait_until(lambda: status_of(api, job_id)["status"] == "succeeded", 30, "the lost job",
               roles=roles)
    job = status_of(api, job_id)
    assert (job["attempts"], job["result"], job["error"]) == (2, "again", "")


BATCH_ITEMS = 100_000


def test_a_100000_item_batch_is_accepted_and_completed(api, start_role, management):
    fail_at = set(range(7, BATCH_ITEMS, 10_000))
    items = [{"data": f"img-{i:06d}.jpg", **({"fail": f"unreadable {i}"} if i in fail_at else {})}
             for i in range(BATCH_ITEMS)]
    resp = api.post("/api/v1/batches", {"task": "demo.checksum", "items": items}, format="json")
    assert resp.status_code == 202, resp.json()
    batch_id = resp.json()["id"]
    assert resp.json()["chunk_count"] == 1000

    roles = [start_role("dispatcher"), start_lane(start_role, management, "quick", 4)]
    url = f"/api/v1/batches/{batch_id}"
    wait_until(lambda: api.get(url).json()["status"] != "queued", 60, "the batch to start",
               roles=roles)
    running = api.get(url).json()
    assert running["status"] in ("running", "completed_with_failures")
    batch = wait_until(lambda: (b := api.get(url).json())["pending"] == 0 and b, 300,
                       "the batch to finish", interval=1, roles=roles)
    assert (batch["status"], batch["done"], batch["failed"], batch["percent"]) == (
        "completed_with_failures", BATCH_ITEMS - len(fail_at), len(fail_at), 100.0)
    assert [f["index"] for f in batch["failures"]] == sorted(fail_at)
    assert batch["failures"][0] == {"index": 7, "item": items[7],
                                    "error": "ValueError: unreadable 7"}
    assert batch["chunks"]["succeeded"] == 1000


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



def test_healthz_says_the_database_is_down_without_its_details(api, start_role):
    # Given the web running against a database that does not answer
    port = free_port()
    secret = "s3cret-db-password"
    web = start_role("web", WEB_BIND=f"127.0.0.1:{port}", WEB_WORKERS="1",
                     DATABASE_URL=f"postgres://appuser:{secret}@127.0.0.1:1/switchyard")

    def answer():
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return None
        return 200, ""
    code, body = wait_until(answer, 60, "web", roles=[web])
    # Then it answers 503 naming the database, and nothing of its host, user or password
    assert code == 503
    assert json.loads(body) == {"status": "unavailable", "database": "unreachable"}
    assert secret not in body and "appuser" not in body and "127.0.0.1" not in body

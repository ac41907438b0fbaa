"""The job API as an internal service uses it: every status code it promises."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from jobs.dispatch import job_publish_due
from jobs.models import Job
from tenants.models import Tenant
from tenants.services import tenant_create

pytestmark = pytest.mark.django_db


def client_for(name: str, tier: str = "standard", **quotas) -> tuple[APIClient, Tenant]:
    tenant, key = tenant_create(name=name, tier=tier)
    if quotas:
        Tenant.objects.filter(id=tenant.id).update(**quotas)
        tenant.refresh_from_db()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client, tenant


def submit(client: APIClient, body: dict, **headers):
    return client.post("/api/v1/jobs", body, format="json", **headers)


@pytest.fixture
def acme():
    return client_for("acme", "standard")[0]


def test_submit_answers_202_with_the_routing_it_derived(acme):
    resp = submit(acme, {"task": "demo.slow_task", "params": {"seconds": 1}})
    assert resp.status_code == 202, resp.json()
    body = resp.json()
    assert body["status"] == "queued"
    assert (body["lane"], body["tier"]) == ("slow", "standard")
    assert body["routing_key"] == "slow.standard.demo.slow_task"
    assert body["status_url"].endswith(f"/api/v1/jobs/{body['id']}")
    assert resp["Location"] == f"/api/v1/jobs/{body['id']}"
    assert Job.objects.filter(id=body["id"]).exists()


@pytest.mark.parametrize(("tier", "asked", "band"), [("standard", 9, range(0, 5)),
                                                     ("premium", 0, range(5, 10))])
def test_priority_is_placed_in_the_tenants_band_whatever_is_asked(tier, asked, band):
    client, _ = client_for(f"co-{tier}", tier)
    body = submit(client, {"task": "demo.quick_task", "options": {"priority": asked}}).json()
    assert body["tier"] == tier and body["priority"] in band


def test_no_token_or_a_bad_one_is_401():
    anon = APIClient()
    resp = anon.post("/api/v1/jobs", {"task": "demo.quick_task"}, format="json")
    assert resp.status_code == 401 and resp["WWW-Authenticate"] == "Token"
    anon.credentials(HTTP_AUTHORIZATION="Token sy_not-a-real-token")
    assert anon.get("/api/v1/jobs").status_code == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"task": "no.such.task"}, "task"),
        ({"params": {}}, "task"),
        ({"task": "demo.slow_task", "params": {"seconds": -1}}, "params.seconds"),
        ({"task": "demo.slow_task", "params": {"secs": 1}}, "params"),
        ({"task": "demo.slow_task", "params": "nope"}, "params"),
        ({"task": "demo.quick_task", "options": {"priority": 10}}, "options.priority"),
        ({"task": "demo.quick_task", "options": {"link": "x"}}, "options.link.task"),
        ({"task": "demo.quick_task", "options": {"link": 7}}, "options.link"),
        ({"task": "demo.quick_task", "options": {"link_error": {
            "task": "demo.slow_task", "params": {"seconds": -1}}}},
         "options.link_error.params.seconds"),
        ({"task": "demo.quick_task", "options": {"retry_policy": {"max_retries": 99}}},
         "options.retry_policy.max_retries"),
        ({"task": "demo.quick_task", "options": {"retry_policy": {"max_retries": 1,
                                                                   "interval": 2}}},
         "options.retry_policy.interval"),
        ({"task": "demo.quick_task", "options": {"retry_policy": {}}},
         "options.retry_policy.max_retries"),
        ({"task": "demo.quick_task", "options": {"retry_policy": {
            "max_retries": 2, "backoff": 1, "interval_step": 1}}},
         "options.retry_policy.interval_step"),
        ({"task": "demo.quick_task", "options": {"queue": "heavy_tasks"}}, "options.queue"),
        ({"task": "demo.quick_task", "options": {"routing_key": "heavy_tasks"}},
         "options.routing_key"),
        ({"task": "demo.quick_task", "options": {"retry": False}}, "options.retry"),
        ({"task": "demo.quick_task", "options": {"eta": "2001-01-01T00:00:00Z"}}, "options.eta"),
        ({"task": "demo.quick_task", "options": {"countdown": 60, "expires": 30}},
         "options.expires"),
        ({"task": "demo.quick_task", "options": {"expires": "tomorrow"}}, "options.expires"),
        ({"task": "demo.quick_task", "options": {"countdown": 10, "eta": "2099-01-01T00:00Z"}},
         "options.eta"),
        ({"task": "demo.quick_task", "surprise": 1}, "surprise"),
    ],
)
def test_bad_input_is_400_naming_the_field(acme, body, field):
    resp = submit(acme, body)
    assert resp.status_code == 400
    assert field in resp.json()["errors"], resp.json()
    assert resp.json()["detail"].startswith(field)
    assert Job.objects.count() == 0


def test_the_seeds_celery_retry_options_are_understood(acme):
    # apply_async(retry=True, retry_policy={max_retries, interval_start, interval_step,
    # interval_max}) as internal services write it today
    resp = submit(acme, {"task": "demo.quick_task", "options": {"retry": True, "retry_policy": {
        "max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}}})
    assert resp.status_code == 202, resp.json()
    job = resp.json()
    assert job["max_attempts"] == 4
    assert job["retry_policy"]["interval_step"] == 0.2 and job["retry_policy"]["jitter"] is False
    from jobs.options import RetryPolicy

    policy = RetryPolicy(**job["retry_policy"])
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [0, 0.2, 0.4, 0.5]


def test_expires_before_eta_is_refused(acme):
    eta = timezone.now() + dt.timedelta(hours=1)
    resp = submit(acme, {"task": "demo.quick_task", "options": {
        "eta": eta.isoformat(), "expires": (eta - dt.timedelta(minutes=1)).isoformat()}})
    assert resp.status_code == 400 and "options.expires" in resp.json()["errors"]


def test_body_that_is_not_json_or_too_big_is_400(acme, settings):
    resp = acme.post("/api/v1/jobs", "task=demo.quick_task",
                     content_type="application/x-www-form-urlencoded")
    assert resp.status_code == 415
    resp = acme.post("/api/v1/jobs", "{not json", content_type="application/json")
    assert resp.status_code == 400
    settings.SWITCHYARD_MAX_BODY_BYTES = 1000
    big = {"task": "demo.quick_task", "params": {"x": "y" * 2000}}
    resp = acme.post("/api/v1/jobs", json.dumps(big), content_type="application/json")
    assert resp.status_code == 400
    assert "at most 1000 bytes" in resp.json()["errors"]["body"][0]
    assert Job.objects.count() == 0


def test_another_tenants_job_is_404_to_read_and_to_cancel(acme):
    job_id = submit(acme, {"task": "demo.quick_task"}).json()["id"]
    other, _ = client_for("globex")
    assert other.get(f"/api/v1/jobs/{job_id}").status_code == 404
    assert other.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 404
    assert other.get("/api/v1/jobs").json()["results"] == []
    assert acme.get(f"/api/v1/jobs/{job_id}").status_code == 200


def test_cancel_a_queued_job_then_a_finished_one_is_409(acme):
    job_id = submit(acme, {"task": "demo.quick_task"}).json()["id"]
    resp = acme.post(f"/api/v1/jobs/{job_id}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    again = acme.post(f"/api/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]


def test_queued_quota_is_429_with_retry_after():
    client, _ = client_for("small", max_queued_jobs=2)
    assert [submit(client, {"task": "demo.quick_task"}).status_code for _ in range(2)] == [202,
                                                                                           202]
    resp = submit(client, {"task": "demo.quick_task"})
    assert resp.status_code == 429 and int(resp["Retry-After"]) > 0
    assert Job.objects.count() == 2


def test_rate_quota_is_429_with_retry_after():
    client, _ = client_for("chatty", submissions_per_minute=3)
    codes = [submit(client, {"task": "demo.quick_task"}).status_code for _ in range(4)]
    assert codes == [202, 202, 202, 429]
    assert 1 <= int(submit(client, {"task": "demo.quick_task"})["Retry-After"]) <= 61


def test_idempotency_key_returns_the_same_job(acme):
    body = {"task": "demo.quick_task", "params": {"x": 1}}
    first = submit(acme, body, HTTP_IDEMPOTENCY_KEY="order-42")
    second = submit(acme, body, HTTP_IDEMPOTENCY_KEY="order-42")
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second["Idempotent-Replayed"] == "true"
    other = submit(acme, {"task": "demo.quick_task", "params": {"x": 2}},
                   HTTP_IDEMPOTENCY_KEY="order-42")
    assert other.status_code == 409
    assert Job.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_idempotency_holds_under_two_concurrent_requests():
    if connection.vendor != "postgresql":
        pytest.skip("concurrent writers need PostgreSQL (CI runs it)")
    client, tenant = client_for("racer")
    barrier = threading.Barrier(2)
    answers = []

    def post():
        barrier.wait()
        answers.append(submit(client, {"task": "demo.quick_task"}, HTTP_IDEMPOTENCY_KEY="k1"))
        connection.close()

    threads = [threading.Thread(target=post) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a.status_code for a in answers] == [202, 202]
    assert answers[0].json()["id"] == answers[1].json()["id"]
    assert Job.objects.filter(tenant=tenant).count() == 1


def test_list_filters_and_paginates_own_jobs(acme):
    for _ in range(3):
        submit(acme, {"task": "demo.quick_task"})
    submit(acme, {"task": "demo.slow_task", "params": {"seconds": 0}})
    assert len(acme.get("/api/v1/jobs").json()["results"]) == 4
    slow = acme.get("/api/v1/jobs?lane=slow").json()["results"]
    assert [j["task"] for j in slow] == ["demo.slow_task"]
    assert len(acme.get("/api/v1/jobs?task=demo.quick_task").json()["results"]) == 3
    assert acme.get("/api/v1/jobs?status=succeeded").json()["results"] == []
    page = acme.get("/api/v1/jobs?page_size=2").json()
    assert len(page["results"]) == 2 and page["next"]
    assert acme.get("/api/v1/jobs?status=bogus").status_code == 400
    # A cursor that is not one of ours is a bad parameter, not a missing list
    bad = acme.get("/api/v1/jobs?cursor=not-a-cursor")
    assert bad.status_code == 400 and list(bad.json()["errors"]) == ["cursor"]


def test_a_page_of_jobs_stops_at_its_byte_budget_and_the_next_link_goes_on(acme, settings):
    # Given 30 jobs with 100 KB of params each (3 MB) and a page budget of 1 MB
    settings.SWITCHYARD_MAX_PAGE_BYTES = 1_000_000
    tenant = Tenant.objects.get(name="acme")
    now = timezone.now()
    Job.objects.bulk_create([
        Job(tenant=tenant, tenant_name="acme", task="demo.quick_task", lane="quick",
            tier="standard", priority=2, routing_key="quick.standard.demo.quick_task",
            params={"x": f"{i:02d}" * 50_000}, submitted_at=now - dt.timedelta(seconds=i))
        for i in range(30)])
    # When a client asks for pages of 1,000
    seen, url, pages = [], "/api/v1/jobs?page_size=1000", 0
    while url:
        answer = acme.get(url)
        assert answer.status_code == 200
        body = answer.json()
        # Then no page is much over the budget, whatever page_size asked
        assert len(answer.content) < 1_000_000 + 120_000
        assert body["results"] and all(len(j["params"]["x"]) == 100_000
                                       for j in body["results"])
        seen += [j["id"] for j in body["results"]]
        url, pages = body["next"], pages + 1
    # And following the next links gives every job once, newest first
    assert pages >= 3
    expected = [str(i) for i in Job.objects.filter(tenant=tenant)
                .order_by("-submitted_at").values_list("id", flat=True)]
    assert seen == expected
    # And a job larger than the budget still comes, alone on its page
    settings.SWITCHYARD_MAX_PAGE_BYTES = 10_000
    assert len(acme.get("/api/v1/jobs?page_size=1000").json()["results"]) == 1


def test_a_path_that_is_no_resource_is_a_json_404(acme):
    resp = acme.get("/api/v1/jobs/not-a-uuid")
    assert resp.status_code == 404 and resp["Content-Type"] == "application/json"
    assert "not-a-uuid" in resp.json()["detail"]


def test_task_catalogue_lists_public_tasks_with_lane_and_schema(acme):
    tasks = {t["name"]: t for t in acme.get("/api/v1/tasks").json()}
    assert tasks["demo.slow_task"]["lane"] == "slow"
    assert tasks["demo.slow_task"]["params_schema"]["properties"]["seconds"]["maximum"] == 600
    assert tasks["demo.quick_task"]["lane"] == "quick"
    assert "jobs.prune_finished" not in tasks


def test_openapi_schema_and_docs_page_are_served():
    anon = APIClient()
    schema = anon.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    document = json.loads(schema.content)
    submit_op = document["paths"]["/api/v1/jobs"]["post"]
    # Each view's input is its own component (not one shared "Input"), naming the tasks
    body_ref = submit_op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = document["components"]["schemas"][body_ref.rsplit("/", 1)[1]]
    assert "items" not in body["properties"]
    task_enum = body["properties"]["task"]["allOf"][0]["$ref"].rsplit("/", 1)[1]
    assert "demo.quick_task" in document["components"]["schemas"][task_enum]["enum"]
    # ... and the errors docs/api.md promises are in the schema, in the one error shape
    assert {"202", "400", "401", "409", "415", "429"} <= set(submit_op["responses"])
    listing = document["paths"]["/api/v1/jobs"]["get"]["responses"]["200"]
    page = listing["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert {"next", "previous", "results"} <= set(document["components"]["schemas"][page][
        "properties"])
    assert anon.get("/api/docs/").status_code == 200


def test_openapi_schema_is_valid_openapi_without_a_generator_warning(tmp_path):
    # The fuzzer (tests/test_fuzz_api.py) trusts this document: it must be valid OpenAPI 3,
    # and drf-spectacular must not have had to guess (a guess is a wrong schema).
    result = subprocess.run(
        [sys.executable, "platform/manage.py", "spectacular", "--validate", "--fail-on-warn",
         "--file", str(tmp_path / "schema.yaml")],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_countdown_job_waits_in_the_table_until_due(acme):
    body = submit(acme, {"task": "demo.quick_task", "options": {"countdown": 30}}).json()
    job = Job.objects.get(id=body["id"])
    assert job.published_at is None
    assert 29 <= (job.run_at - job.submitted_at).total_seconds() <= 31
    # Not due yet: the dispatcher leaves it alone.
    assert job_publish_due(now=job.submitted_at + dt.timedelta(seconds=10)) == 0


def test_job_that_expired_before_publication_is_marked_expired(acme):
    body = submit(acme, {"task": "demo.quick_task",
                         "options": {"countdown": 5, "expires": 10}}).json()
    job = Job.objects.get(id=body["id"])
    assert job_publish_due(now=job.submitted_at + dt.timedelta(seconds=11)) == 0
    job.refresh_from_db()
    assert job.status == "expired" and job.published_at is None


def test_any_nesting_depth_is_a_400_never_a_500(acme):
    # JSON nested deeper than Python's decoder recurses, on each JSON endpoint
    deep = "[" * 5000 + "]" * 5000
    bodies = {"/api/v1/jobs": f'{{"task": "demo.quick_task", "params": {{"x": {deep}}}}}',
              "/api/v1/jobs/bulk": f'{{"jobs": {deep}}}',
              "/api/v1/batches": f'{{"task": "demo.checksum", "items": {deep}}}'}
    for path, body in bodies.items():
        resp = acme.post(path, body, content_type="application/json")
        assert resp.status_code == 400, (path, resp.content[:300])
        assert "nested too deeply" in resp.json()["detail"]
    assert Job.objects.count() == 0

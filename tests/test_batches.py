"""The batch API on PostgreSQL: accepting, validating, progress, failures, cancel.

Chunk outcomes are written here the way the workers record them (through the
recording services); the broker round trip is covered in test_api_e2e.
"""
from __future__ import annotations

import datetime as dt
import json

import pytest
from django.utils import timezone

from jobs.models import Batch, Job
from jobs.outcomes import job_record_failure, job_record_success
from jobs.retention import batch_prune_finished
from tenants.models import Tenant
from tests.test_api import client_for

pytestmark = pytest.mark.django_db


def items(n: int, fail: dict[int, str] | None = None) -> list[dict]:
    fail = fail or {}
    return [{"data": f"file-{i}.jpg", **({"fail": fail[i]} if i in fail else {})}
            for i in range(n)]


def post_batch(client, body: dict, **headers):
    return client.post("/api/v1/batches", body, format="json", **headers)


@pytest.fixture
def acme():
    return client_for("acme", "premium")[0]


def _start(chunk: Job) -> None:
    Job.objects.filter(id=chunk.id).update(status=Job.Status.STARTED, started_at=timezone.now(),
                                           attempts=1)


def test_batch_is_accepted_as_chunks_waiting_for_the_dispatcher(acme):
    resp = post_batch(acme, {"task": "demo.checksum", "items": items(250), "chunk_size": 100})
    assert resp.status_code == 202, resp.json()
    body = resp.json()
    assert (body["status"], body["total"], body["chunk_count"], body["percent"]) == (
        "queued", 250, 3, 0.0)
    assert (body["lane"], body["tier"]) == ("quick", "premium")
    assert body["chunks"]["queued"] == 3 and body["pending"] == 250
    assert resp["Location"] == f"/api/v1/batches/{body['id']}"
    chunks = list(Job.objects.filter(batch_id=body["id"]).order_by("chunk_index"))
    assert [(c.item_offset, c.item_count) for c in chunks] == [(0, 100), (100, 100), (200, 50)]
    assert chunks[2].params["items"][0] == {"data": "file-200.jpg"}
    # Published by the dispatcher, due now, in the premium band.
    assert all(c.published_at is None and c.run_at is not None for c in chunks)
    assert all(c.priority >= 5 and c.routing_key == "quick.premium.demo.checksum"
               for c in chunks)


def test_default_chunk_size_keeps_a_batch_under_the_chunk_limit(acme, settings):
    resp = post_batch(acme, {"task": "demo.checksum", "items": items(30_000)})
    assert resp.status_code == 202
    assert (resp.json()["chunk_size"], resp.json()["chunk_count"]) == (100, 300)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"task": "no.such.task", "items": [{}]}, "task"),
        ({"task": "demo.quick_task", "items": [{}]}, "task"),
        ({"task": "demo.checksum", "items": {"data": "x"}}, "items"),
        ({"task": "demo.checksum", "items": []}, "items"),
        ({"task": "demo.checksum", "items": [{"data": "a"}, {"data": "b"}, {"data": 3}]},
         "items.2.data"),
        ({"task": "demo.checksum", "items": [{"data": "a", "extra": 1}]}, "items.0"),
        ({"task": "demo.checksum", "items": [{"data": "a"}], "chunk_size": 0}, "chunk_size"),
        ({"task": "demo.checksum", "items": [{"data": "a"}], "options": {"link": "demo.flaky"}},
         "options.link"),
        ({"task": "demo.checksum", "items": [{"data": "a"}], "options": {"priority": 12}},
         "options.priority"),
        ({"task": "demo.checksum", "items": [{"data": "a"}], "size": 1}, "size"),
    ],
)
def test_bad_batch_is_400_naming_the_field_and_nothing_is_created(acme, body, field):
    resp = post_batch(acme, body)
    assert resp.status_code == 400, resp.json()
    assert field in resp.json()["errors"], resp.json()
    assert Batch.objects.count() == 0 and Job.objects.count() == 0


def test_too_many_items_chunks_or_bytes_are_400(acme, settings):
    settings.SWITCHYARD_MAX_BATCH_ITEMS = 10
    resp = post_batch(acme, {"task": "demo.checksum", "items": items(11)})
    assert resp.status_code == 400 and "between 1 and 10 items" in resp.json()["errors"]["items"][0]
    settings.SWITCHYARD_MAX_BATCH_ITEMS = 100_000
    resp = post_batch(acme, {"task": "demo.checksum", "items": items(20_001), "chunk_size": 2})
    assert resp.status_code == 400
    assert "chunk_size of at least 3" in resp.json()["errors"]["chunk_size"][0]
    settings.SWITCHYARD_MAX_BATCH_BODY_BYTES = 5000
    resp = acme.post("/api/v1/batches", json.dumps({"task": "demo.checksum", "items": items(500)}),
                     content_type="application/json")
    assert resp.status_code == 400 and "at most 5000 bytes" in resp.json()["errors"]["body"][0]
    assert Batch.objects.count() == 0 and Job.objects.count() == 0


def test_a_batch_body_larger_than_a_job_body_is_accepted(acme, settings):
    settings.SWITCHYARD_MAX_BODY_BYTES = 1000
    resp = post_batch(acme, {"task": "demo.checksum", "items": items(200)})
    assert resp.status_code == 202


def test_progress_failures_and_completion_come_from_the_chunks(acme):
    body = post_batch(acme, {"task": "demo.checksum", "items": items(30), "chunk_size": 10}).json()
    first, second, third = Job.objects.filter(batch_id=body["id"]).order_by("chunk_index")

    # chunk 0 succeeds with items 3 and 7 failed; chunk 1 fails as a whole; chunk 2 runs
    for chunk in (first, second, third):
        _start(chunk)
    job_record_success(job_id=first.id, failed_items=2, result={"succeeded": 8, "failed": [
        {"index": 3, "error": "ValueError: corrupt"}, {"index": 7, "error": "ValueError: gone"}]})
    job_record_failure(job_id=second.id, error="OSError: disk full")

    batch = acme.get(f"/api/v1/batches/{body['id']}").json()
    assert (batch["status"], batch["done"], batch["failed"], batch["pending"]) == (
        "running", 8, 12, 10)
    assert batch["percent"] == pytest.approx(66.67)
    assert batch["chunks"]["started"] == 1 and batch["chunks"]["failed"] == 1
    assert batch["estimated_completion_at"] is not None
    failures = batch["failures"]
    assert [f["index"] for f in failures] == [3, 7, *range(10, 20)]
    assert failures[0] == {"index": 3, "item": {"data": "file-3.jpg"},
                           "error": "ValueError: corrupt"}
    assert failures[2]["error"] == "chunk failed: OSError: disk full"

    job_record_success(job_id=third.id, result={"succeeded": 10, "failed": []})
    batch = acme.get(f"/api/v1/batches/{body['id']}").json()
    assert (batch["status"], batch["percent"], batch["done"]) == (
        "completed_with_failures", 100.0, 18)
    assert batch["finished_at"] is not None and batch["estimated_completion_at"] is None


def test_failures_are_paged_in_index_order(acme):
    body = post_batch(acme, {"task": "demo.checksum", "items": items(40), "chunk_size": 10}).json()
    for chunk in Job.objects.filter(batch_id=body["id"]):
        _start(chunk)
        job_record_failure(job_id=chunk.id, error="boom")
    url = f"/api/v1/batches/{body['id']}/failures?limit=15"
    seen = []
    while url:
        page = acme.get(url).json()
        seen += [f["index"] for f in page["results"]]
        url = page["next"]
    assert seen == list(range(40))
    batch = acme.get(f"/api/v1/batches/{body['id']}").json()
    assert batch["status"] == "failed" and batch["failures_truncated"] is False


def test_cancel_stops_chunks_not_started_and_twice_is_409(acme):
    body = post_batch(acme, {"task": "demo.checksum", "items": items(30), "chunk_size": 10}).json()
    running = Job.objects.get(batch_id=body["id"], chunk_index=0)
    _start(running)
    resp = acme.post(f"/api/v1/batches/{body['id']}/cancel")
    assert resp.status_code == 200
    assert resp.json()["chunks"]["cancelled"] == 2 and resp.json()["cancelled"] == 20
    assert acme.post(f"/api/v1/batches/{body['id']}/cancel").status_code == 409
    job_record_success(job_id=running.id, result={"succeeded": 10, "failed": []})
    batch = acme.get(f"/api/v1/batches/{body['id']}").json()
    assert (batch["status"], batch["done"], batch["cancelled"]) == ("cancelled", 10, 20)


def test_another_tenants_batch_is_404(acme):
    other, _ = client_for("globex")
    body = post_batch(acme, {"task": "demo.checksum", "items": items(3)}).json()
    for path in ("", "/failures", "/chunks"):
        assert other.get(f"/api/v1/batches/{body['id']}{path}").status_code == 404
    assert other.post(f"/api/v1/batches/{body['id']}/cancel").status_code == 404
    assert other.get(f"/api/v1/jobs?batch={body['id']}").json()["results"] == []


def test_idempotency_key_returns_the_same_batch(acme):
    body = {"task": "demo.checksum", "items": items(25), "chunk_size": 10}
    first = post_batch(acme, body, HTTP_IDEMPOTENCY_KEY="upload-2026-11-21")
    again = post_batch(acme, body, HTTP_IDEMPOTENCY_KEY="upload-2026-11-21")
    assert again.status_code == 202 and again["Idempotent-Replayed"] == "true"
    assert first.json()["id"] == again.json()["id"]
    assert Batch.objects.count() == 1 and Job.objects.count() == 3
    other = post_batch(acme, {**body, "chunk_size": 5}, HTTP_IDEMPOTENCY_KEY="upload-2026-11-21")
    assert other.status_code == 409


def test_a_batch_over_the_queued_quota_is_429():
    client, tenant = client_for("tiny", max_queued_jobs=5)
    resp = post_batch(client, {"task": "demo.checksum", "items": items(60), "chunk_size": 10})
    assert resp.status_code == 429 and int(resp["Retry-After"]) > 0
    assert Batch.objects.count() == 0 and Job.objects.count() == 0
    assert post_batch(client, {"task": "demo.checksum", "items": items(50),
                               "chunk_size": 10}).status_code == 202


def test_a_batch_counts_as_one_submission_for_the_rate_quota():
    client, tenant = client_for("steady", submissions_per_minute=2)
    for _ in range(2):
        resp = post_batch(client, {"task": "demo.checksum", "items": items(50), "chunk_size": 5})
        assert resp.status_code == 202
    assert post_batch(client, {"task": "demo.checksum", "items": items(1)}).status_code == 429
    assert Tenant.objects.get(id=tenant.id).jobs.count() == 20


def test_chunks_are_listed_in_order_and_filtered(acme):
    body = post_batch(acme, {"task": "demo.checksum", "items": items(25), "chunk_size": 10}).json()
    _start(Job.objects.get(batch_id=body["id"], chunk_index=1))
    page = acme.get(f"/api/v1/batches/{body['id']}/chunks").json()
    assert [c["index"] for c in page["results"]] == [0, 1, 2]
    assert page["results"][2]["item_count"] == 5
    started = acme.get(f"/api/v1/batches/{body['id']}/chunks?status=started").json()
    assert [c["index"] for c in started["results"]] == [1]
    listed = acme.get(f"/api/v1/jobs?batch={body['id']}").json()["results"]
    assert len(listed) == 3 and all(j["batch"] == body["id"] for j in listed)


def test_catalogue_says_which_tasks_take_batches(acme):
    tasks = {t["name"]: t for t in acme.get("/api/v1/tasks").json()}
    assert tasks["demo.checksum"]["accepts_batches"] is True
    assert tasks["demo.checksum"]["item_schema"]["required"] == ["data"]
    assert tasks["demo.quick_task"]["accepts_batches"] is False


def test_finished_batches_are_pruned_with_their_chunks(acme):
    old = post_batch(acme, {"task": "demo.checksum", "items": items(20), "chunk_size": 10}).json()
    live = post_batch(acme, {"task": "demo.checksum", "items": items(20), "chunk_size": 10}).json()
    long_ago = timezone.now() - dt.timedelta(days=40)
    Job.objects.filter(batch_id=old["id"]).update(status=Job.Status.SUCCEEDED,
                                                  finished_at=long_ago)
    Job.objects.filter(batch_id=live["id"], chunk_index=0).update(
        status=Job.Status.SUCCEEDED, finished_at=long_ago)
    assert batch_prune_finished(older_than=dt.timedelta(days=30)) == 1
    assert list(Batch.objects.values_list("id", flat=True)) == [
        Batch.objects.get(id=live["id"]).id]
    assert Job.objects.filter(batch_id=old["id"]).count() == 0
    assert Job.objects.filter(batch_id=live["id"]).count() == 2


def test_admin_shows_jobs_with_their_routing_and_batches_read_only(acme, admin_client):
    body = post_batch(acme, {"task": "demo.checksum", "items": items(3)}).json()
    jobs = admin_client.get("/admin/jobs/job/")
    assert jobs.status_code == 200 and b"quick.premium.demo.checksum" in jobs.content
    batches = admin_client.get("/admin/jobs/batch/")
    assert batches.status_code == 200 and body["id"].encode() in batches.content
    assert admin_client.get("/admin/jobs/batch/add/").status_code == 403

"""An operator's commands for a tenant's waiting work: pause, resume, cancel (and the admin).

On the real database and broker, without workers: what each command does to the job
table and the broker, what a paused tenant's submissions are answered, what the
dispatcher publishes. tests/test_drills_flood.py runs the same commands against a
flood on real workers and a real dispatcher.
"""
from __future__ import annotations

import datetime as dt
import io
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.db.models import F
from django.db.models.functions import Now
from django.test.utils import CaptureQueriesContext
from kombu import Connection
from rest_framework.test import APIClient

from jobs.dispatch import job_publish_due, job_refill_window
from jobs.models import Job, Workflow
from jobs.outcomes import job_record_failure, job_record_success
from jobs.submission import job_submit
from jobs.task import job_begin
from jobs.tenant_work import tenant_work_cancel, tenant_work_pause, tenant_work_resume
from switchyard.clock import platform_now
from tenants.models import Tenant
from tenants.services import tenant_create

pytestmark = [pytest.mark.rabbitmq, pytest.mark.django_db(transaction=True)]

#: Past the web's publish grace: what the dispatcher's pass treats as due.
LATER = dt.timedelta(seconds=10)


def _ready(broker_url, queue: str) -> int:
    with Connection(broker_url) as conn:
        return conn.default_channel.queue_declare(queue, passive=True).message_count


def _tenant(name: str) -> Tenant:
    return Tenant.objects.create(name=name, tier="premium", max_queued_jobs=10**6,
                                 submissions_per_minute=10**6)


def run(*args) -> str:
    out = io.StringIO()
    call_command("tenant_work", *args, stdout=out)
    return out.getvalue()


def test_pause_takes_back_what_is_in_the_broker_and_holds_new_work(lanes_empty, settings):
    settings.SWITCHYARD_FAIR_WINDOW = {"slow": 2, "quick": 0}
    noisy, _ = tenant_create(name="noisy", tier="premium")
    quiet = _tenant("quiet")
    in_broker = [job_submit(tenant=noisy, task="demo.quick_task", params={})[0]
                 for _ in range(3)]
    assert _ready(lanes_empty, "quick") == 3

    # A dry run says what a pause would hold, and changes nothing
    out = run("pause", "noisy", "--dry-run")
    assert ("would pause noisy: 3 waiting job(s) held, 3 of them taken back from the broker; "
            "0 running job(s) finish; dry run, nothing changed") in out
    assert Tenant.objects.get(id=noisy.id).paused_at is None
    assert Job.objects.filter(tenant=noisy, published_at__isnull=False).count() == 3

    # When the operator pauses the noisy tenant
    out = run("pause", "noisy", "--reason", "flood on quick")

    # Then its 3 jobs are unpublished again, each with a newer publication number (the
    # copies queued are stale: a worker acknowledges them unrun)
    assert "paused noisy: 3 waiting job(s) held, 3 of them taken back from the broker" in out
    for job in in_broker:
        record = Job.objects.get(id=job.id)
        assert record.published_at is None and record.publications == 2
        assert record.status == Job.Status.QUEUED
    noisy.refresh_from_db()
    assert noisy.paused_at is not None and noisy.pause_reason == "flood on quick"

    # And a new submission is accepted, held, and says so; the other tenant's is published
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {_token(noisy)}")
    answer = client.post("/api/v1/jobs", {"task": "demo.slow_task", "params": {"seconds": 0}},
                         format="json")
    assert answer.status_code == 202, answer.json()
    assert answer.json()["paused"] is True and answer.json()["status"] == "queued"
    held = Job.objects.get(id=answer.json()["id"])
    assert held.published_at is None and held.run_at is not None
    other, _ = job_submit(tenant=quiet, task="demo.slow_task", params={"seconds": 0})
    assert Job.objects.get(id=other.id).published_at is not None
    assert client.get(f"/api/v1/jobs/{held.id}").json()["paused"] is True

    # And nothing of it is published: not by a dispatcher pass, not by a window refill
    assert job_publish_due(now=platform_now() + LATER) == 0
    Job.objects.filter(id=other.id).update(status=Job.Status.STARTED, started_at=Now())
    assert job_refill_window(job_id=held.id, lane="slow") == 0
    assert not Job.objects.filter(tenant=noisy, published_at__isnull=False).exists()

    # When it is resumed (a dry run first: it counts, and the tenant stays paused), the
    # dispatcher publishes all 4 again, each once
    out = run("resume", "noisy", "--dry-run")
    assert "would resume noisy (paused): the dispatcher would publish its 4 unpublished" in out
    assert Tenant.objects.get(id=noisy.id).paused_at is not None
    out = run("resume", "noisy")
    assert "resumed noisy: the dispatcher publishes its 4 held job(s)" in out
    assert job_publish_due(now=platform_now() + LATER) == 4
    assert not Job.objects.filter(tenant=noisy, published_at__isnull=True).exists()
    assert client.get(f"/api/v1/jobs/{held.id}").json()["paused"] is False
    assert _ready(lanes_empty, "quick") == 3 + 3  # the stale copies and the new ones


def _token(tenant: Tenant) -> str:
    from tenants.services import token_create

    return token_create(tenant=tenant)


def test_a_retry_and_a_link_of_a_paused_tenant_wait_for_the_resume(lanes_empty):
    tenant = _tenant("retrier")
    job, _ = job_submit(tenant=tenant, task="demo.quick_task", params={})
    Job.objects.filter(id=job.id).update(
        status=Job.Status.STARTED, started_at=Now(), attempts=F("attempts") + 1,
        retry_policy={"max_retries": 3, "backoff": 0}, max_attempts=4)
    tenant_work_pause(tenant=tenant)
    # A run that began before the pause ends as usual: its retry is recorded...
    assert job_record_failure(job_id=job.id, error="boom") == Job.Status.RETRYING
    # ... and not published while the tenant is paused
    assert job_publish_due(now=platform_now() + LATER) == 0
    tenant_work_resume(tenant=tenant)
    assert job_publish_due(now=platform_now() + LATER) == 1


def test_a_released_workflow_step_and_a_link_of_a_paused_tenant_stay_unpublished(lanes_empty):
    tenant, key = tenant_create(name="linked", tier="premium")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    body = client.post("/api/v1/workflows", {"steps": [
        {"id": "a", "task": "demo.add", "params": {"x": 1, "y": 2}},
        {"id": "b", "task": "demo.add", "params": {"y": 10}, "depends_on": ["a"],
         "from": {"x": "a"}}]}, format="json").json()
    steps = {s["id"]: s["job"] for s in body["steps"]}
    parent, _ = job_submit(tenant=tenant, task="demo.quick_task", params={})
    Job.objects.filter(id=parent.id).update(link={"task": "demo.quick_task", "params": {}})
    for job_id in (steps["a"], parent.id):
        Job.objects.filter(id=job_id).update(status=Job.Status.STARTED, started_at=Now(),
                                             attempts=F("attempts") + 1)
    tenant_work_pause(tenant=tenant)

    # When the started step and the linked job succeed while the tenant is paused
    assert job_record_success(job_id=steps["a"], result=3, has_link=True)
    assert job_record_success(job_id=parent.id, result=None, has_link=True)

    # Then the released step and the link's follow-up are recorded, not published
    step_b = Job.objects.get(id=steps["b"])
    child = Job.objects.get(parent_id=parent.id)
    assert (step_b.status, step_b.published_at, step_b.params["x"]) == ("queued", None, 3)
    assert (child.status, child.published_at) == ("queued", None)
    assert job_publish_due(now=platform_now() + LATER) == 0
    # And the resume has the dispatcher publish both
    tenant_work_resume(tenant=tenant)
    assert job_publish_due(now=platform_now() + LATER) == 2
    assert not Job.objects.filter(tenant=tenant, status="queued",
                                  published_at__isnull=True).exists()


def test_cancel_counts_with_dry_run_then_cancels_only_what_matches(lanes_empty):
    tenant, other = _tenant("flood"), _tenant("bystander")
    old_slow = [job_submit(tenant=tenant, task="demo.slow_task", params={"seconds": 0})[0]
                for _ in range(4)]
    new_slow = job_submit(tenant=tenant, task="demo.slow_task", params={"seconds": 0})[0]
    quick = job_submit(tenant=tenant, task="demo.quick_task", params={})[0]
    running = job_submit(tenant=tenant, task="demo.slow_task", params={"seconds": 0})[0]
    theirs = job_submit(tenant=other, task="demo.slow_task", params={"seconds": 0})[0]
    Job.objects.filter(id__in=[j.id for j in old_slow]).update(
        submitted_at=F("submitted_at") - dt.timedelta(hours=3))
    Job.objects.filter(id=running.id).update(status=Job.Status.STARTED, started_at=Now(),
                                             submitted_at=F("submitted_at")
                                             - dt.timedelta(hours=3))
    before = sorted(Job.objects.values_list("id", "status", "published_at"))

    # A dry run counts and changes nothing
    out = run("cancel", "flood", "--lane", "slow", "--older-than", "2h", "--dry-run")
    assert out.strip() == ("would cancel 4 job(s) of flood not yet started (lane slow, "
                           "submitted more than 2h ago); dry run, nothing changed")
    assert sorted(Job.objects.values_list("id", "status", "published_at")) == before
    assert "would cancel 6 job(s)" in run("cancel", "flood", "--dry-run")
    assert "would cancel 1 job(s)" in run("cancel", "flood", "--task", "demo.quick_task",
                                          "--dry-run")

    # Then the same command cancels exactly those
    out = run("cancel", "flood", "--lane", "slow", "--older-than", "2h")
    assert out.strip() == ("cancelled 4 job(s) of flood not yet started (lane slow, "
                           "submitted more than 2h ago)")
    status = dict(Job.objects.values_list("id", "status"))
    assert {status[j.id] for j in old_slow} == {"cancelled"}
    assert (status[new_slow.id], status[quick.id], status[running.id],
            status[theirs.id]) == ("queued", "queued", "started", "queued")
    assert set(Job.objects.filter(status="cancelled").values_list("error", flat=True)) == {
        "cancelled by an operator with the rest of its tenant's waiting work"}
    assert "cancelled 0 job(s)" in run("cancel", "flood", "--lane", "slow",
                                       "--older-than", "2h")


def test_cancelled_workflow_steps_are_counted_by_their_workflow(lanes_empty):
    tenant, key = tenant_create(name="flows", tier="premium")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    body = client.post("/api/v1/workflows", {"steps": [
        {"id": "a", "task": "demo.slow_task", "params": {"seconds": 0}},
        {"id": "b", "task": "demo.add", "params": {"x": 1, "y": 2}, "depends_on": ["a"]},
        {"id": "c", "task": "demo.add", "params": {"x": 1, "y": 1}},
    ], "on_complete": {"task": "demo.quick_task"}}, format="json").json()
    steps = {s["id"]: s["job"] for s in body["steps"]}

    # When the operator cancels the tenant's slow_task jobs: step a (b waits behind it)
    out = run("cancel", "flows", "--task", "demo.slow_task", "--dry-run")
    assert "would cancel 1 job(s)" in out and "1 of them step(s) of 1 workflow(s)" in out
    out = run("cancel", "flows", "--task", "demo.slow_task")

    # Then the workflow counted it as an end: under fail_workflow it cancelled b too
    assert out.strip() == ("cancelled 1 job(s) of flows not yet started (task "
                           "demo.slow_task); 1 of them step(s) of 1 workflow(s), counted by "
                           "their workflows; their workflows cancelled 1 more step(s) that "
                           "depended on them")
    b = Job.objects.get(id=steps["b"])
    assert b.status == "cancelled" and b.error == "not run: step 'a' ended cancelled"
    workflow = Workflow.objects.get(id=body["id"])
    assert (workflow.status, workflow.open_steps) == ("running", 1)  # c still to run
    assert Job.objects.get(id=steps["c"]).status == "queued"

    # When the rest is cancelled, c and the on_complete step: the workflow is finished
    count = tenant_work_cancel(tenant=tenant)
    assert (count.jobs, count.steps, count.workflows) == (2, 2, 1)
    workflow.refresh_from_db()
    assert workflow.open_steps == 0 and workflow.status == "failed"
    assert workflow.finished_at is not None
    assert not Job.objects.filter(workflow=workflow, status__in=Job.NOT_STARTED).exists()


def test_the_admin_asks_before_it_pauses_resumes_and_cancels(client, lanes_empty):
    tenant = _tenant("acme")
    jobs = [job_submit(tenant=tenant, task="demo.quick_task", params={})[0] for _ in range(2)]
    User.objects.create_superuser("ops", password="pw")
    client.login(username="ops", password="pw")
    url = "/admin/tenants/tenant/"

    # The action first shows what it will touch, and changes nothing
    page = client.post(url, {"action": "pause_work", "_selected_action": [tenant.id]})
    assert page.status_code == 200
    text = page.content.decode()
    assert "Pause waiting work" in text and '<td class="work-count">2</td>' in text
    assert Tenant.objects.get(id=tenant.id).paused_at is None
    # Confirmed, it pauses
    done = client.post(url, {"action": "pause_work", "_selected_action": [tenant.id],
                             "confirm": "yes", "reason": "incident 42"}, follow=True)
    assert "Paused acme: 2 waiting job(s) held, 2 taken back from the broker" in \
        done.content.decode()
    tenant.refresh_from_db()
    assert tenant.paused_at is not None and tenant.pause_reason == "incident 42"

    page = client.post(url, {"action": "cancel_work", "_selected_action": [tenant.id]})
    assert '<td class="work-count">2</td>' in page.content.decode()
    assert Job.objects.filter(status="queued").count() == 2
    done = client.post(url, {"action": "cancel_work", "_selected_action": [tenant.id],
                             "confirm": "yes", "lane": "quick"}, follow=True)
    assert "Cancelled 2 job(s) of acme (lane quick)" in done.content.decode()
    assert set(Job.objects.filter(id__in=[j.id for j in jobs])
               .values_list("status", flat=True)) == {"cancelled"}

    done = client.post(url, {"action": "resume_work", "_selected_action": [tenant.id],
                             "confirm": "yes"}, follow=True)
    assert "Resumed acme: 0 held job(s)" in done.content.decode()
    assert Tenant.objects.get(id=tenant.id).paused_at is None


def test_the_admin_cancels_only_what_its_filters_select_after_counting_it(client, lanes_empty):
    tenant = _tenant("acme")
    old = [job_submit(tenant=tenant, task="demo.slow_task", params={"seconds": 1})[0]
           for _ in range(3)]
    Job.objects.filter(id__in=[j.id for j in old]).update(
        submitted_at=platform_now() - dt.timedelta(hours=3))
    new_slow = job_submit(tenant=tenant, task="demo.slow_task", params={"seconds": 1})[0]
    quick = job_submit(tenant=tenant, task="demo.quick_task", params={})[0]
    User.objects.create_superuser("ops", password="pw")
    client.login(username="ops", password="pw")
    url = "/admin/tenants/tenant/"
    chosen = {"action": "cancel_work", "_selected_action": [tenant.id], "lane": "slow",
              "task": "demo.slow_task", "older_than": "2h"}

    page = client.post(url, {"action": "cancel_work", "_selected_action": [tenant.id]})
    assert '<td class="work-count">5</td>' in page.content.decode()
    # Counting again with filters is a dry run, even with the confirm field set
    page = client.post(url, {**chosen, "confirm": "yes", "recount": "1"})
    text = page.content.decode()
    assert '<td class="work-count">3</td>' in text and 'value="2h"' in text
    assert not Job.objects.filter(status="cancelled").exists()
    # A bad duration is named, nothing is counted or cancelled, and there is no confirm
    page = client.post(url, {**chosen, "older_than": "two hours", "confirm": "yes"})
    text = page.content.decode()
    assert "older than &#x27;two hours&#x27;: give a duration like 90s" in text
    assert "Yes, cancel them" not in text
    assert not Job.objects.filter(status="cancelled").exists()

    done = client.post(url, {**chosen, "confirm": "yes"}, follow=True)
    assert ("Cancelled 3 job(s) of acme (lane slow, task demo.slow_task, submitted more "
            "than 2h ago)") in done.content.decode()
    status = dict(Job.objects.values_list("id", "status"))
    assert {status[j.id] for j in old} == {"cancelled"}
    assert (status[new_slow.id], status[quick.id]) == ("queued", "queued")


def _delivery(job: Job, publication: int):
    """What the worker's task object carries for one delivery of ``job``'s message."""
    request = SimpleNamespace(
        id=str(job.id), hostname="quick@test", properties={"user_id": "guest"},
        delivery_info={"routing_key": job.routing_key, "redelivered": False},
        switchyard_publication=publication)
    return SimpleNamespace(request=request, name=job.task, lane=job.lane)


def test_a_start_stays_one_update_and_a_paused_tenants_delivery_starts_nothing(lanes_empty):
    tenant = _tenant("hot-path")
    running, held = (Job.objects.create(
        tenant=tenant, tenant_name=tenant.name, task="demo.quick_task", lane="quick",
        tier="premium", priority=7, routing_key="quick.premium.demo.quick_task",
        submitted_at=platform_now(), published_at=platform_now(), publications=1)
        for _ in range(2))

    # A delivery of a tenant not paused starts its job with one statement, as before
    with CaptureQueriesContext(connection) as queries:
        assert job_begin(task=_delivery(running, 1), task_id=str(running.id), args=(),
                         kwargs={}) == {}
    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["UPDATE"]
    assert Job.objects.get(id=running.id).status == Job.Status.STARTED

    # A delivery of the latest publication of a paused tenant's job: not started, and
    # the job back to unpublished for the resume
    Tenant.objects.filter(id=tenant.id).update(paused_at=Now())
    assert job_begin(task=_delivery(held, 1), task_id=str(held.id), args=(), kwargs={}) is None
    record = Job.objects.get(id=held.id)
    assert (record.status, record.published_at, record.attempts) == ("queued", None, 0)

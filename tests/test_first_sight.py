"""A Celery-native message seen for the first time (``jobs.task.job_begin`` through
``jobs.admission``): recorded and started by the same insert, never asked about first.

What a tenant notices: its message runs once, by the worker that saw it; a paused
tenant's message is kept for its resume, not run; an expired one is not run; a message
naming a job that already exists runs nothing new (the record decides, as for any
delivery). Through the real functions on the real database, no broker.
"""
from __future__ import annotations

import datetime as dt
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from jobs import senders
from jobs.models import Job
from jobs.task import job_begin
from switchyard.celery import app
from switchyard.clock import platform_now
from tenants.models import BrokerUser, Tenant
from tenants.services import tenant_create

pytestmark = pytest.mark.django_db

TASK = "demo.quick_task"


@pytest.fixture
def tenant():
    tenant, _ = tenant_create(name="sight", tier="premium")
    BrokerUser.objects.create(tenant=tenant, username="tenant-sight")
    senders._cache.clear()
    yield tenant
    senders._cache.clear()


def _deliver(task_id: str, *, expires: str | None = None, redelivered: bool = False):
    """A worker's delivery of the tenant's own message (in its band, lane and tier)."""
    task = app.tasks[TASK]
    task.push_request(id=task_id, hostname="quick@sight", properties={"user_id": "tenant-sight"},
                      delivery_info={"priority": 7, "redelivered": redelivered,
                                     "routing_key": f"quick.premium.{TASK}"},
                      expires=expires)
    try:
        return job_begin(task=task, task_id=task_id, args=(), kwargs={"x": 1})
    finally:
        task.pop_request()


def test_a_first_sight_is_recorded_started_by_its_worker_in_one_insert(tenant):
    task_id = str(uuid.uuid4())
    with CaptureQueriesContext(connection) as queries:
        assert _deliver(task_id) == {"x": 1}
    job = Job.objects.get(id=task_id)
    assert (job.status, job.attempts, job.worker, job.tenant_id) == (
        "started", 1, "quick@sight", tenant.id)
    assert abs((job.started_at - platform_now()).total_seconds()) < 5
    writes = [q["sql"] for q in queries.captured_queries
              if q["sql"].startswith(("INSERT", "UPDATE", "SELECT"))]
    # No read of the job before, and no UPDATE to start it after: the insert did both.
    assert not any('FROM "jobs_job"' in sql and sql.startswith("SELECT") for sql in writes)
    assert [sql for sql in writes if sql.startswith("UPDATE") and '"jobs_job"' in sql] == []
    assert sum(sql.startswith('INSERT INTO "jobs_job"') for sql in writes) == 1


def test_a_paused_tenants_first_sight_is_kept_unpublished_and_not_run(tenant):
    Tenant.objects.filter(id=tenant.id).update(paused_at=platform_now())
    task_id = str(uuid.uuid4())
    assert _deliver(task_id) is None
    job = Job.objects.get(id=task_id)
    assert (job.status, job.attempts, job.published_at, job.started_at) == (
        "queued", 0, None, None)


def test_an_expired_first_sight_is_not_run_and_left_to_the_dispatcher(tenant):
    task_id = str(uuid.uuid4())
    past = (platform_now() - dt.timedelta(seconds=5)).isoformat()
    assert _deliver(task_id, expires=past) is None
    job = Job.objects.get(id=task_id)
    assert (job.status, job.attempts, job.published_at) == ("queued", 0, None)


def test_the_same_message_delivered_again_runs_nothing_new(tenant):
    task_id = str(uuid.uuid4())
    assert _deliver(task_id) == {"x": 1}
    # A second copy (published twice by the client): the job has started; not run again
    assert _deliver(task_id) is None
    assert Job.objects.get(id=task_id).attempts == 1
    # A redelivery after the worker died mid-run runs it again, from the record
    assert _deliver(task_id, redelivered=True) == {"x": 1}
    assert Job.objects.get(id=task_id).attempts == 2


def test_a_message_naming_another_tenants_job_runs_nothing(tenant):
    other, _ = tenant_create(name="other", tier="premium")
    task_id = str(uuid.uuid4())
    Job.objects.create(id=task_id, tenant=other, tenant_name=other.name, task=TASK,
                       lane="quick", tier="premium", priority=7, params={"x": 1},
                       routing_key=f"quick.premium.{TASK}", submitted_at=platform_now())
    assert _deliver(task_id) is None
    job = Job.objects.get(id=task_id)
    assert (job.status, job.attempts, job.tenant_id) == ("queued", 0, other.id)

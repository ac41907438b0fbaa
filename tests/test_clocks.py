"""Every stored time that is later compared comes from the database's clock
(docs/architecture.md, "Clocks"): one test per place that writes such a time,
each run in a process whose own clock is an hour ahead.

The skew is made in-process: ``time.time`` (what ``switchyard.clock`` reads) and
``django.utils.timezone.now`` (what Django code reads) both answer an hour late,
as on a host whose clock is off; the database's clock is untouched. A time
written from the host's clock then lands an hour away from the database's.
"""
from __future__ import annotations

import datetime as dt
import time
import uuid

import pytest
from django.db import connection
from django.utils import timezone

from jobs.admission import job_admit_native
from jobs.dispatch import job_reclaim_unconfirmed
from jobs.models import Job, PendingConfirm
from jobs.options import Link, SubmitOptions
from jobs.outcomes import job_record_failure, job_record_success
from jobs.publishing import publish_job
from jobs.retention import job_prune_finished
from jobs.senders import Sender
from jobs.submission import job_cancel, job_submit
from switchyard import clock
from switchyard.celery import app
from tenants.services import tenant_create

pytestmark = pytest.mark.django_db

SKEW = dt.timedelta(hours=1)
#: Slack allowed between a stored time and the database's clock read just after.
CLOSE = dt.timedelta(seconds=30)


def database_now() -> dt.datetime:
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0]


@pytest.fixture
def host_clock_ahead(monkeypatch):
    """This process's clock an hour ahead of the database's, for the test's length."""
    real_time, real_now = time.time, timezone.now
    monkeypatch.setattr(time, "time", lambda: real_time() + SKEW.total_seconds())
    monkeypatch.setattr(timezone, "now", lambda: real_now() + SKEW)
    clock.forget()  # measure the offset again, as a process started on this host would
    assert timezone.now() - database_now() > SKEW - CLOSE, "the skew did not take"
    yield
    clock.forget()


def assert_on_database_clock(value: dt.datetime | None, what: str) -> None:
    assert value is not None, f"{what} was not written"
    gap = abs(database_now() - value)
    assert gap < CLOSE, f"{what} is {gap} away from the database's clock (host clock used?)"


@pytest.fixture
def tenant():
    tenant, _ = tenant_create(name="clocks", tier="premium")
    return tenant


def started_job(tenant, **options) -> Job:
    job, _ = job_submit(tenant=tenant, task="demo.quick_task", params={"x": 1},
                        options=SubmitOptions(**options))
    Job.objects.filter(id=job.id).update(status=Job.Status.STARTED, attempts=1,
                                         started_at=database_now())
    return Job.objects.select_related("tenant").get(id=job.id)


def test_submission_stamps_the_job_on_the_database_clock(host_clock_ahead, tenant):
    job, _ = job_submit(tenant=tenant, task="demo.quick_task", params={"x": 1},
                        options=SubmitOptions(countdown=60))
    job.refresh_from_db()
    assert_on_database_clock(job.submitted_at, "submitted_at")
    # A countdown counts from the platform's now, not the host's.
    assert abs(job.run_at - job.submitted_at - dt.timedelta(seconds=60)) < CLOSE


@pytest.mark.rabbitmq
def test_a_publication_is_stamped_on_the_database_clock(host_clock_ahead, tenant,
                                                        topology_applied, lanes_empty):
    # Given a job recorded but not yet published (as the dispatcher or dlq replay finds it)
    job, _ = job_submit(tenant=tenant, task="demo.quick_task", params={"x": 1})
    job = Job.objects.get(id=job.id)
    assert job.published_at is None
    # When it is published from a host an hour ahead
    publish_job(job)
    # Then published_at, which promotion compares with the platform's clock, is right
    job.refresh_from_db()
    assert_on_database_clock(job.published_at, "published_at")
    assert job.publications == 1


def test_a_linked_follow_up_is_submitted_on_the_database_clock(host_clock_ahead, tenant):
    parent = started_job(tenant, link=Link(task="demo.quick_task", params={"x": 2}))
    assert job_record_success(job_id=parent.id, result=None, has_link=True)
    child = Job.objects.get(parent=parent)
    # The dispatcher publishes an unpublished child once submitted_at + PUBLISH_GRACE
    # passes on the platform's clock: an hour ahead would delay nothing but an hour
    # behind would strand it; either way it must be the database's time.
    assert_on_database_clock(child.submitted_at, "the follow-up's submitted_at")
    parent.refresh_from_db()
    assert_on_database_clock(parent.finished_at, "finished_at")


def test_a_failed_follow_up_and_finish_are_on_the_database_clock(host_clock_ahead, tenant):
    parent = started_job(tenant, link_error=Link(task="demo.quick_task"))
    assert job_record_failure(job_id=parent.id, error="boom") == Job.Status.FAILED
    parent.refresh_from_db()
    assert_on_database_clock(parent.finished_at, "finished_at")
    assert_on_database_clock(Job.objects.get(parent=parent).submitted_at,
                             "the link_error's submitted_at")


def test_a_native_message_is_admitted_on_the_database_clock(host_clock_ahead, tenant):
    # Given a Celery-native delivery of the tenant's broker user, already in the tenant's
    # band, lane and tier
    task = app.tasks["demo.quick_task"]
    task_id = str(uuid.uuid4())
    task.push_request(id=task_id, delivery_info={
        "priority": 7, "routing_key": "quick.premium.demo.quick_task"})
    sender = Sender(username="tenant-clocks", tenant=tenant)
    try:
        # When a worker an hour ahead sees it first
        assert job_admit_native(task=task, task_id=task_id, args=(), kwargs={"x": 1},
                                sender=sender, start_as="quick@clocks") == {"x": 1}
    finally:
        task.pop_request()
    # Then its record's times are the database's
    job = Job.objects.get(id=task_id)
    assert_on_database_clock(job.submitted_at, "submitted_at")
    assert_on_database_clock(job.published_at, "published_at")


def test_a_fresh_bulk_confirm_is_not_reclaimed_by_a_dispatcher_an_hour_ahead(
        host_clock_ahead, tenant, settings):
    # Given a bulk submission still waiting for its confirms (stamped on the platform's
    # clock, as job_submit_bulk stamps it), and one whose submitter died long ago
    waiting, _ = job_submit(tenant=tenant, task="demo.quick_task")
    orphaned, _ = job_submit(tenant=tenant, task="demo.quick_task")
    Job.objects.filter(id__in=[waiting.id, orphaned.id]).update(published_at=database_now(),
                                                                publications=1)
    PendingConfirm.objects.create(created_at=clock.platform_now(), job_ids=[str(waiting.id)])
    old = clock.platform_now() - dt.timedelta(seconds=settings.SWITCHYARD_BULK_CONFIRM_GRACE + 5)
    PendingConfirm.objects.create(created_at=old, job_ids=[str(orphaned.id)])
    # When a dispatcher whose host clock is an hour ahead looks for orphans
    reclaimed = job_reclaim_unconfirmed()
    # Then only the orphaned one is set back for publishing
    assert reclaimed == 1
    assert Job.objects.get(id=orphaned.id).published_at is None
    assert Job.objects.get(id=waiting.id).published_at is not None


def test_a_just_cancelled_job_is_not_pruned_by_a_host_an_hour_ahead(host_clock_ahead, tenant):
    job, _ = job_submit(tenant=tenant, task="demo.quick_task", params={"x": 1},
                        options=SubmitOptions(countdown=600))
    job = job_cancel(job=job)
    assert_on_database_clock(job.finished_at, "finished_at")
    # Pruning "finished more than 30 minutes ago" leaves a job cancelled just now.
    assert job_prune_finished(older_than=dt.timedelta(minutes=30)) == 0
    assert Job.objects.filter(id=job.id).exists()

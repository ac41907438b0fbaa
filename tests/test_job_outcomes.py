"""What happens after a run, on PostgreSQL: retries, links, lost workers.

The broker round trip of the same rules is in test_api_e2e; here each rule is
checked against the job record it writes.
"""
from __future__ import annotations

import datetime as dt
import os
import signal

import pytest
from celery.app.trace import build_tracer
from django.conf import settings
from django.utils import timezone

import jobs.task
import routing.celery_config as routing_celery
from jobs.dispatch import job_reap_lost
from jobs.models import Job
from jobs.options import Link, RetryPolicy, SubmitOptions
from jobs.outcomes import job_record_failure, job_record_success
from jobs.submission import job_submit
from routing import topology
from switchyard.celery import app
from tenants.services import tenant_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def tenant():
    return tenant_create(name="acme", tier="standard")[0]


def started(job: Job, *, ago: dt.timedelta = dt.timedelta(0), attempts: int = 1) -> Job:
    Job.objects.filter(id=job.id).update(status=Job.Status.STARTED, attempts=attempts,
                                         started_at=timezone.now() - ago, worker="w1@host",
                                         published_at=timezone.now() - ago, publications=1)
    job.refresh_from_db()
    return job


def test_backoff_doubles_up_to_its_cap_and_jitter_stays_in_the_upper_half():
    policy = RetryPolicy(max_retries=5, backoff=2, backoff_max=10, jitter=False)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [2, 4, 8, 10]
    jittered = RetryPolicy(max_retries=5, backoff=8, jitter=True)
    assert all(4 <= jittered.delay(1) <= 8 for _ in range(200))


def test_a_failure_within_the_policy_waits_for_its_retry_in_the_table(tenant):
    policy = RetryPolicy(max_retries=2, backoff=30, jitter=False)
    job, _ = job_submit(tenant=tenant, task="demo.quick_task",
                        options=SubmitOptions(retry_policy=policy))
    assert job.max_attempts == 3
    started(job)
    before = timezone.now()
    assert job_record_failure(job_id=job.id, error="OSError: timeout") == Job.Status.RETRYING
    job.refresh_from_db()
    assert job.published_at is None and job.error == "OSError: timeout"
    assert dt.timedelta(seconds=29) < job.run_at - before < dt.timedelta(seconds=31)
    started(job, attempts=3)
    assert job_record_failure(job_id=job.id, error="OSError: timeout") == Job.Status.DEAD
    job.refresh_from_db()
    assert job.error == ("failed 3 of 3 attempts (retry policy spent); message moved to "
                         "quick.dead; last error: OSError: timeout")


def test_a_spent_policy_after_a_hard_time_limit_fails_without_dead_letter(tenant):
    # Celery acknowledged the message itself: the record must not claim it is in quick.dead
    job, _ = job_submit(tenant=tenant, task="demo.quick_task",
                        options=SubmitOptions(retry_policy=RetryPolicy(max_retries=1)))
    started(job, attempts=2)
    assert job_record_failure(job_id=job.id, error="TimeLimitExceeded: 60",
                              dead_letter=False) == Job.Status.FAILED


def test_a_permanent_failure_or_no_policy_fails_at_once(tenant):
    job, _ = job_submit(tenant=tenant, task="demo.quick_task",
                        options=SubmitOptions(retry_policy=RetryPolicy(max_retries=3)))
    started(job)
    assert job_record_failure(job_id=job.id, error="bad", retryable=False) == Job.Status.FAILED
    plain, _ = job_submit(tenant=tenant, task="demo.quick_task")
    started(plain)
    assert job_record_failure(job_id=plain.id, error="bad") == Job.Status.FAILED


def test_link_on_success_and_link_error_on_failure_submit_for_the_same_tenant(tenant):
    options = SubmitOptions(priority=3, link=Link("demo.quick_task", {"x": "next"}),
                            link_error=Link("demo.slow_task", {"seconds": 0}))
    ok, _ = job_submit(tenant=tenant, task="demo.quick_task", options=options)
    bad, _ = job_submit(tenant=tenant, task="demo.quick_task", options=options)
    started(ok)
    started(bad)
    job_record_success(job_id=ok.id, result=1, has_link=True)
    job_record_failure(job_id=bad.id, error="RuntimeError: no")
    after_ok = Job.objects.get(parent=ok)
    after_bad = Job.objects.get(parent=bad)
    assert (after_ok.task, after_ok.params, after_ok.tenant) == (
        "demo.quick_task", {"x": "next"}, tenant)
    assert after_ok.priority == ok.priority  # same tenant band and rank
    assert (after_bad.task, after_bad.lane, after_bad.params) == (
        "demo.slow_task", "slow", {"seconds": 0})
    assert Job.objects.filter(parent__isnull=False).count() == 2


def test_an_unknown_linked_task_is_refused_at_submission(tenant):
    from jobs.errors import InvalidSubmission

    with pytest.raises(InvalidSubmission) as caught:
        job_submit(tenant=tenant, task="demo.quick_task",
                   options=SubmitOptions(link=Link("no.such.task")))
    assert caught.value.field == "options.link.task"


def test_a_started_job_silent_past_its_lane_limit_is_published_again(tenant):
    quick = topology.lane("quick")
    lost, _ = job_submit(tenant=tenant, task="demo.quick_task")
    lost = started(lost, ago=dt.timedelta(seconds=quick.time_limit + 180))
    running, _ = job_submit(tenant=tenant, task="demo.quick_task")
    started(running, ago=dt.timedelta(seconds=quick.time_limit - 5))
    slow, _ = job_submit(tenant=tenant, task="demo.slow_task")
    started(slow, ago=dt.timedelta(seconds=quick.time_limit + 180))  # within the slow limit

    assert job_reap_lost() == (1, 0)
    lost.refresh_from_db()
    assert (lost.status, lost.published_at, lost.run_at) == (Job.Status.QUEUED, None, None)
    assert "w1@host" in lost.error and "published again" in lost.error
    assert Job.objects.get(id=running.id).status == Job.Status.STARTED
    assert Job.objects.get(id=slow.id).status == Job.Status.STARTED


def test_a_job_lost_on_every_delivery_ends_dead_and_runs_its_link_error(tenant):
    quick = topology.lane("quick")
    job, _ = job_submit(tenant=tenant, task="demo.quick_task", options=SubmitOptions(
        link_error=Link("demo.quick_task", {"x": "alert"})))
    started(job, ago=dt.timedelta(seconds=quick.time_limit + 180), attempts=3)
    assert job_reap_lost() == (0, 1)
    job.refresh_from_db()
    assert job.status == Job.Status.DEAD and "no deliveries left" in job.error
    assert Job.objects.get(parent=job).params == {"x": "alert"}


def test_a_platform_message_whose_arguments_do_not_fit_ends_dead_not_stuck(tenant, settings):
    # Given a recorded job, and a message of the platform's naming it with three positional
    # arguments for a task that takes one (a legacy message, say)
    from celery.exceptions import Reject

    import routing.celery_config as routing_celery
    from jobs.task import job_begin
    from switchyard.celery import app

    job, _ = job_submit(tenant=tenant, task="demo.quick_task", params={"x": 1})
    task = app.tasks["demo.quick_task"]
    task.push_request(id=str(job.id), hostname="quick@test", delivery_info={}, properties={
        "user_id": routing_celery.broker_user(settings.CELERY_BROKER_URL)})
    try:
        # When a worker receives it, it runs nothing and the job ends dead with the reason
        with pytest.raises(Reject):
            job_begin(task=task, task_id=str(job.id), args=(1, 2, 3), kwargs={})
    finally:
        task.pop_request()
    job.refresh_from_db()
    assert job.status == Job.Status.DEAD and job.attempts == 0
    assert "takes 1 positional argument(s) (x), got 3" in job.error


@pytest.mark.rabbitmq
@pytest.mark.django_db(transaction=True)
def test_a_termination_as_a_run_ends_waits_until_its_outcome_is_recorded(tenant, monkeypatch,
                                                                        lanes_empty):
    """Celery terminates (SIGTERM) a late-acked run whose worker lost its broker connection,
    so that the redelivered copy is the only one. Arriving after the task's code returned,
    it takes effect once the job is recorded succeeded: the redelivery finds it done and
    does not run it a second time."""
    job, _ = job_submit(tenant=tenant, task="demo.witness", params={"seconds": 0})
    task = app.tasks["demo.witness"]
    status_when_terminated = []
    real_record = jobs.task.job_record_success

    def terminated_then_recorded(**kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # Celery's request.cancel(), as the run ends
        return real_record(**kwargs)

    monkeypatch.setattr(jobs.task, "job_record_success", terminated_then_recorded)
    previous = signal.signal(signal.SIGTERM, lambda *_: status_when_terminated.append(
        Job.objects.get(id=job.id).status))
    try:
        tracer = build_tracer(task.name, task, eager=True, propagate=True, app=app)
        tracer(str(job.id), (), {"seconds": 0}, {
            "id": str(job.id), "hostname": "quick@test",
            "properties": {"user_id": routing_celery.broker_user(
                settings.CELERY_BROKER_URL)},
            "delivery_info": {"redelivered": False, "routing_key": topology.routing_key(
                "quick", "standard", "demo.witness")}})
        assert status_when_terminated == [Job.Status.SUCCEEDED]
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})

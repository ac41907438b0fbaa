"""Recording how a run ended: succeeded, retrying, failed or dead, and the follow-up
job a ``link`` or ``link_error`` asks for.

Run by the worker (``jobs.task`` calls these as each delivery ends) and by the
dispatcher for runs that were lost (``jobs.dispatch.job_reap_lost``). Each
transition is one conditional UPDATE on the job's primary key: it happens once,
whichever of two racing deliveries gets there first, and a finished job is
never written again.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection, Mapping
from typing import Any

from django.db import transaction
from django.db.models.functions import Now

from jobs.errors import UnknownTask
from jobs.models import Job
from jobs.options import RetryPolicy
from jobs.publishing import publish_or_defer
from jobs.signals import job_events_for
from jobs.submission import new_job
from jobs.workflows import step_ended
from switchyard.clock import platform_now
from switchyard.logs import job_fields
from switchyard.returning import update_returning

logger = logging.getLogger(__name__)

#: Deliveries allowed beyond ``max_attempts`` for runs that never reported an
#: outcome (worker killed, machine lost). Past it the job is ``dead``: a message
#: that kills its worker every time must not cycle for ever.
LOST_DELIVERY_ALLOWANCE = 2


def _submit_followup(parent: Job, spec: Mapping[str, Any], *, passed: Any) -> Job | None:
    """Submit ``parent``'s link or link_error for the same tenant, published after commit.

    A follow-up from a Celery signature (``jobs.admission``) names the parameter that
    receives ``passed``: the parent's result for a link, its id for a link_error."""
    params = dict(spec.get("params") or {})
    if spec.get("result_param"):
        params[spec["result_param"]] = passed
    try:
        child = new_job(tenant=parent.tenant, task=spec["task"], params=params,
                        priority=None, absolute_priority=parent.priority, now=platform_now())
    except UnknownTask:  # unregistered since the parent was accepted
        logger.error("job %s: linked task %r is no longer registered", parent.id, spec["task"],
                     extra=job_fields(parent))
        return None
    child.parent = parent
    child.save(force_insert=True)
    transaction.on_commit(lambda: job_events_for("submitted", [child]))
    transaction.on_commit(lambda: publish_or_defer(child))
    return child


def job_record_success(*, job_id, result: Any, failed_items: int = 0,
                       has_link: bool = False) -> bool:
    """``started`` → ``succeeded``; submits the job's ``link``, releases what waits on it
    in its workflow (``jobs.workflows``). False if it was not started.

    Without follow-ups (``has_link``: the message's ``LINK_HEADER``) this is one UPDATE
    in autocommit (one round trip: it runs after every job); with them, the UPDATE reads
    the job back (``RETURNING``) and they are written in the same transaction.
    """
    started = Job.objects.filter(id=job_id, status=Job.Status.STARTED)
    values = {"status": Job.Status.SUCCEEDED, "finished_at": Now(), "result": result,
              "error": "", "failed_items": failed_items}
    if not has_link:
        return bool(started.update(**values))
    with transaction.atomic():
        succeeded = update_returning(started, **values)
        for job in succeeded:
            if job.link:
                _submit_followup(job, job.link, passed=job.result)
            step_ended(job, Job.Status.SUCCEEDED)
    return bool(succeeded)


def job_record_failure(*, job_id, error: str, retryable: bool = True,
                       dead_letter: bool = True) -> str | None:
    """A started job failed: ``retrying`` (published again after its backoff)
    while its retry policy allows; ``dead`` once a retry policy is spent on
    retryable errors (the caller then rejects the message into
    ``<lane>.dead``, where ``manage.py dlq`` replays it after a fix); else
    ``failed`` (no retry policy, a ``PermanentFailure`` no replay can fix, or
    ``dead_letter`` False: a message already acknowledged, e.g. after a hard
    time limit). ``dead`` and ``failed`` submit the job's ``link_error``. Returns the new
    status, or None if the job was not started."""
    job = Job.objects.select_related("tenant").filter(id=job_id,
                                                      status=Job.Status.STARTED).first()
    if job is None:
        return None
    now = platform_now()
    error = error[:5000]
    started = Job.objects.filter(id=job.id, status=Job.Status.STARTED)
    if retryable and job.retry_policy and job.attempts < job.max_attempts:
        wait = RetryPolicy(**job.retry_policy).delay(job.attempts)
        updated = started.update(status=Job.Status.RETRYING, error=error, published_at=None,
                                 run_at=now + dt.timedelta(seconds=wait))
        return Job.Status.RETRYING if updated else None
    if retryable and dead_letter and job.retry_policy:
        reason = (f"failed {job.attempts} of {job.max_attempts} attempts (retry policy spent); "
                  f"message moved to {job.lane}.dead; last error: {error}")
        dead = job_record_dead(job=job, runnable=(Job.Status.STARTED,), reason=reason)
        return Job.Status.DEAD if dead else None
    with transaction.atomic():
        updated = started.update(status=Job.Status.FAILED, finished_at=now, error=error)
        if updated and job.link_error:
            _submit_followup(job, job.link_error, passed=str(job.id))
        if updated:
            step_ended(job, Job.Status.FAILED)
    return Job.Status.FAILED if updated else None


def job_record_dead(*, job: Job, runnable: Collection[str], reason: str) -> bool:
    """Mark ``job`` dead if it is still in one of the ``runnable`` states, and submit
    its ``link_error``; False if it had moved on (another delivery got there first)."""
    with transaction.atomic():
        updated = Job.objects.filter(id=job.id, status__in=runnable).update(
            status=Job.Status.DEAD, finished_at=Now(), error=reason[:5000])
        if updated and job.link_error:
            _submit_followup(job, job.link_error, passed=str(job.id))
        if updated:
            step_ended(job, Job.Status.DEAD)
            transaction.on_commit(lambda: job_events_for("dead", [job]))
    return bool(updated)

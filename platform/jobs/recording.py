"""Worker-side recorders: each job's status follows what its worker does.

``job_begin`` is called by ``SwitchyardTask.__call__`` before a delivery runs;
the rest are Celery signal handlers, connected in ``JobsConfig.ready`` and run
inside the worker's processes.
Each is one UPDATE by primary key, so recording costs a round trip per
transition, never a read-modify-write race between two deliveries.
"""
from __future__ import annotations

import logging

from celery import signals
from django.db.models import F
from django.utils import timezone

from jobs.admission import job_admit_native, jsonable
from jobs.models import Job

logger = logging.getLogger(__name__)


def _is_switchyard_task(task) -> bool:
    return getattr(task, "lane", None) is not None


#: States from which a delivery may (re)start the job. ``started`` is included
#: because a worker that died mid-task leaves its job there, and the
#: redelivered message must run it again.
RUNNABLE = (Job.Status.QUEUED, Job.Status.RETRYING, Job.Status.STARTED)


def job_begin(*, task, task_id: str, args, kwargs) -> bool:
    """Mark the job started for this delivery; False if it must not run.

    One conditional UPDATE: a job cancelled, expired or already finished
    (redelivered after its worker died between recording and acking) is not
    run again. A message published without Switchyard's submit path
    (Celery-native) is admitted on first sight (``jobs.admission``).
    """
    values = {
        "status": Job.Status.STARTED,
        "started_at": timezone.now(),
        "attempts": F("attempts") + 1,
        "worker": task.request.hostname or "",
    }
    runnable = Job.objects.filter(id=task_id, status__in=RUNNABLE)
    if runnable.update(**values):
        return True
    if Job.objects.filter(id=task_id).exists():
        logger.info("job %s is no longer runnable; its delivery is acknowledged unrun", task_id)
        return False
    if not job_admit_native(task=task, task_id=task_id, args=args, kwargs=kwargs):
        return False
    return bool(runnable.update(**values))


@signals.task_success.connect
def job_succeeded(sender=None, result=None, **_):
    if not _is_switchyard_task(sender):
        return
    # Only a started job moves on: a terminal state is never overwritten.
    Job.objects.filter(id=sender.request.id, status=Job.Status.STARTED).update(
        status=Job.Status.SUCCEEDED, finished_at=timezone.now(), result=jsonable(result),
        error="",
    )


@signals.task_retry.connect
def job_retrying(sender=None, request=None, reason=None, **_):
    if not _is_switchyard_task(sender):
        return
    Job.objects.filter(id=request.id, status=Job.Status.STARTED).update(
        status=Job.Status.RETRYING, error=str(reason)[:5000])


@signals.task_revoked.connect
def job_expired(sender=None, request=None, expired=False, **_):
    """Celery drops a message whose ``expires`` passed before it started."""
    if expired and request is not None:
        Job.objects.filter(id=request.id, status__in=RUNNABLE).update(
            status=Job.Status.EXPIRED, finished_at=timezone.now(),
            error="expired before a worker could start it",
        )


@signals.task_failure.connect
def job_failed(sender=None, task_id=None, exception=None, **_):
    if not _is_switchyard_task(sender):
        return
    Job.objects.filter(id=task_id, status=Job.Status.STARTED).update(
        status=Job.Status.FAILED, finished_at=timezone.now(),
        error=f"{type(exception).__name__}: {exception}"[:5000],
    )

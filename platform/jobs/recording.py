"""Worker-side recorders: each job's status follows what its worker does.

``job_begin`` is called by ``SwitchyardTask.__call__`` before a delivery runs;
the rest are Celery signal handlers, connected in ``JobsConfig.ready`` and run
inside the worker's processes.
Each is one UPDATE by primary key, so recording costs a round trip per
transition, never a read-modify-write race between two deliveries.
"""
from __future__ import annotations

import json
import logging

from celery import signals
from django.db.models import F
from django.utils import timezone

import routing.celery_config as routing_celery
from jobs.models import Job
from routing import priorities, topology

logger = logging.getLogger(__name__)


def _is_switchyard_task(task) -> bool:
    return getattr(task, "lane", None) is not None


def _jsonable(value):
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def _record_unknown_job(task, task_id: str, kwargs) -> None:
    """A message published without Switchyard's submit path (Celery-native): record it now."""
    request = task.request
    delivery = request.delivery_info or {}
    tier = getattr(request, routing_celery.TIER_HEADER, None)
    tier = tier if tier in priorities.TIERS_BY_NAME else priorities.DEFAULT_TIER.name
    now = timezone.now()
    Job.objects.get_or_create(
        id=task_id,
        defaults={
            "tenant_name": getattr(request, routing_celery.TENANT_HEADER, None)
            or routing_celery.SYSTEM_TENANT,
            "task": task.name,
            "lane": task.lane,
            "tier": tier,
            "priority": delivery.get("priority") or 0,
            "routing_key": delivery.get("routing_key")
            or topology.routing_key(task.lane, tier, task.name),
            "params": _jsonable(dict(kwargs or {})),
            "submitted_at": now,
            "published_at": now,
        },
    )


#: States from which a delivery may (re)start the job. ``started`` is included
#: because a worker that died mid-task leaves its job there, and the
#: redelivered message must run it again.
RUNNABLE = (Job.Status.QUEUED, Job.Status.RETRYING, Job.Status.STARTED)


def job_begin(*, task, task_id: str, kwargs) -> bool:
    """Mark the job started for this delivery; False if it must not run.

    One conditional UPDATE: a job cancelled, expired or already finished
    (redelivered after its worker died between recording and acking) is not
    run again. A message published without Switchyard's submit path
    (Celery-native) is recorded on first sight.
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
    _record_unknown_job(task, task_id, kwargs)
    return bool(runnable.update(**values))


@signals.task_success.connect
def job_succeeded(sender=None, result=None, **_):
    if not _is_switchyard_task(sender):
        return
    Job.objects.filter(id=sender.request.id).update(
        status=Job.Status.SUCCEEDED, finished_at=timezone.now(), result=_jsonable(result),
        error="",
    )


@signals.task_retry.connect
def job_retrying(sender=None, request=None, reason=None, **_):
    if not _is_switchyard_task(sender):
        return
    Job.objects.filter(id=request.id).update(status=Job.Status.RETRYING, error=str(reason)[:5000])


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
    Job.objects.filter(id=task_id).update(
        status=Job.Status.FAILED, finished_at=timezone.now(),
        error=f"{type(exception).__name__}: {exception}"[:5000],
    )

"""Worker-side recorders: each job's status follows what its worker does.

Connected in ``JobsConfig.ready`` and run inside the worker's pool processes.
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


@signals.task_prerun.connect
def job_started(sender=None, task_id=None, task=None, kwargs=None, **_):
    if not _is_switchyard_task(task):
        return
    values = {
        "status": Job.Status.STARTED,
        "started_at": timezone.now(),
        "attempts": F("attempts") + 1,
        "worker": task.request.hostname or "",
    }
    if not Job.objects.filter(id=task_id).update(**values):
        _record_unknown_job(task, task_id, kwargs)
        Job.objects.filter(id=task_id).update(**values)


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


@signals.task_failure.connect
def job_failed(sender=None, task_id=None, exception=None, **_):
    if not _is_switchyard_task(sender):
        return
    Job.objects.filter(id=task_id).update(
        status=Job.Status.FAILED, finished_at=timezone.now(),
        error=f"{type(exception).__name__}: {exception}"[:5000],
    )

"""Admission of task messages that did not come through ``job_submit`` (Celery-native).

Run by the worker: ``jobs.task.job_begin`` calls it for a delivery whose job id
has no record yet.

An internal service that already speaks Celery may publish straight to the
``tasks`` exchange with ``<lane>.<tier>.<task>`` and its tenant in the
``tenant`` header. RabbitMQ cannot authorise a message's priority property
(topic permissions cover routing keys only), so the first worker that sees
such a message holds it to the tenant's record:

* the tenant's tier and band come from ``tenants.Tenant``, whatever the
  routing key or the priority property claimed;
* a message already in the right band, tier and lane (``SwitchyardTask.lane_for``
  of its params: the lane ``job_submit`` would have chosen) runs;
* any other is re-published with the routing key and priority the tenant is
  entitled to (the priority clamped into its band, as ``job_submit`` would
  place it), and this delivery is acknowledged unrun. A cheater's message is
  delivered early once, runs nothing, and then waits where it belongs:
  cheating gains nothing over asking legitimately;
* an unknown or inactive tenant, positional arguments, or the platform's own
  ``system`` name on a public task: the job is recorded ``dead`` with the
  reason and the message is rejected into ``<lane>.dead``.
"""
from __future__ import annotations

import json
import logging

from celery.exceptions import Reject
from django.db import IntegrityError

import routing.celery_config as routing_celery
from jobs.models import Job
from jobs.publishing import publish_job
from jobs.signals import job_events_for
from routing import priorities, topology
from switchyard.clock import platform_now
from tenants.models import Tenant
from tenants.selectors import tenant_by_name

logger = logging.getLogger(__name__)


def jsonable(value):
    """``value`` if JSON can store it, else its ``repr`` (a task may return anything)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def job_admit_native(*, task, task_id: str, args, kwargs) -> bool:
    """Record a Celery-native delivery; True if it may run now.

    False: re-published in the tenant's band, this delivery must be acked unrun.
    Raises ``Reject`` (no requeue) after recording the job ``dead`` with its reason.
    """
    request = task.request
    delivery = request.delivery_info or {}
    tenant_name = getattr(request, routing_celery.TENANT_HEADER, None) or ""
    # The platform's clock: the dispatcher and promotion compare these times with it.
    now = platform_now()
    job = Job(id=task_id, task=task.name, lane=task.lane, tenant_name=tenant_name[:63] or "-",
              params=jsonable(dict(kwargs or {})), submitted_at=now, published_at=now,
              expires_at=getattr(request, "expires", None) or None)

    tenant = tenant_by_name(name=tenant_name) if tenant_name else None
    reason = None
    if tenant_name == routing_celery.SYSTEM_TENANT and not getattr(task, "public", True):
        tier = priorities.DEFAULT_TIER  # the platform's own periodic work
    elif tenant is None or not tenant.is_active:
        reason = f"unknown or inactive tenant {tenant_name!r} in the tenant header"
        tier = priorities.DEFAULT_TIER
    else:
        tier = priorities.tier(tenant.tier)
        job.tenant = tenant
    if reason is None and args:
        reason = "positional arguments are not accepted; pass keyword arguments"

    job.tier = tier.name
    job.lane = _lane_for(task, kwargs, job.tenant)
    job.routing_key = topology.routing_key(job.lane, tier.name, task.name)
    claimed = delivery.get("priority")
    job.priority = tier.clamp(claimed)
    if reason:
        job.status, job.error, job.finished_at = Job.Status.DEAD, reason, now
        _save_first_sight(job)
        logger.warning("dead-lettering native job %s: %s", task_id, reason)
        raise Reject(reason, requeue=False)

    in_band = claimed is not None and claimed in tier and delivery.get("routing_key") == (
        job.routing_key)
    if in_band:
        _save_first_sight(job)
        return True
    job.published_at = None
    if not _save_first_sight(job):
        return False  # another delivery of the same id got here first
    logger.info("native job %s claimed %s priority %s; re-published as %s priority %s",
                task_id, delivery.get("routing_key"), claimed, job.routing_key, job.priority)
    publish_job(job)
    return False


def _lane_for(task, kwargs, tenant: Tenant | None) -> str:
    """The lane the task picks for these params (as ``job_submit`` would); a message on
    another lane is re-published on this one, like one claiming the wrong tier."""
    try:
        return topology.lane(task.lane_for(dict(kwargs or {}), tenant=tenant)).name
    except Exception:  # bad params: the task itself will refuse them, in its declared lane
        logger.warning("task %s could not pick a lane for a native message; using %s",
                       task.name, task.lane, exc_info=True)
        return task.lane


def _save_first_sight(job: Job) -> bool:
    try:
        job.save(force_insert=True)
    except IntegrityError:
        return False
    job_events_for("submitted", [job])
    if job.status == Job.Status.DEAD:
        job_events_for("dead", [job])
    return True

"""Celery's calling API inside the platform: ``task.delay(...)`` and ``apply_async(...)``
on the platform's own app, from a Django view, a management command or beat.

Run by whichever process calls (web, beat, tools, a worker's task). Each call
becomes a job through ``jobs.submission.job_submit``, as if it came through the
API: recorded, counted against its tenant's quotas, held to its fair-share
window, published after the surrounding transaction commits. A call from a
task's own run for its own job (Celery's ``self.retry``) re-schedules that job
in the job table instead.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from django.utils.dateparse import parse_datetime

import routing.celery_config as routing_celery
from jobs.admission import Refused, native_params
from jobs.errors import InvalidSubmission
from jobs.models import Job
from jobs.options import Link, SubmitOptions
from jobs.submission import job_submit
from switchyard.celery import app
from switchyard.clock import platform_now
from tenants.models import Tenant
from tenants.selectors import tenant_by_name

#: Options of ``apply_async`` whose job Switchyard does itself: the lane decides.
_ROUTING = ("queue", "routing_key", "exchange", "exchange_type", "declare")


def _tenant(options: dict) -> Tenant | None:
    named = options.pop("tenant", None) or (options.get("headers") or {}).get(
        routing_celery.TENANT_HEADER)
    if named is None or named == routing_celery.SYSTEM_TENANT:
        return None
    if isinstance(named, Tenant):
        return named
    tenant = tenant_by_name(name=str(named))
    if tenant is None or not tenant.is_active:
        raise InvalidSubmission("tenant", f"unknown or inactive tenant {named!r}")
    return tenant


def _link(signature: Any, field: str) -> Link | None:
    if signature is None:
        return None
    if isinstance(signature, list | tuple):
        if len(signature) != 1:
            raise InvalidSubmission(field, f"at most one signature (got {len(signature)})")
        signature = signature[0]
    if not isinstance(signature, Mapping) or not signature.get("immutable"):
        raise InvalidSubmission(field, "give an immutable signature (task.si(...)): a job's "
                                       "follow-up takes its own parameters")
    task = app.tasks.get(signature["task"])
    if task is None:
        raise InvalidSubmission(f"{field}.task", f"unknown task {signature['task']!r}")
    try:
        params = native_params(task, signature.get("args") or (), signature.get("kwargs") or {})
    except Refused as exc:
        raise InvalidSubmission(field, str(exc)) from None
    return Link(task=task.name, params=params)


def _instant(value: Any, field: str) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    parsed = parse_datetime(str(value))
    if parsed is None:
        raise InvalidSubmission(field, f"{value!r} is not an ISO 8601 time")
    return parsed


def platform_call(task, *, args, kwargs, task_id, link, link_error, options: dict):
    """``task.apply_async(...)`` in a platform process; the job's ``AsyncResult``."""
    options = dict(options)
    if task_id and task.request.id == task_id and Job.objects.filter(id=task_id).exists():
        return _reschedule(task, task_id, options)
    for name in _ROUTING:
        options.pop(name, None)
    tenant = _tenant(options)
    try:
        params = native_params(task, args or (), kwargs or {})
    except Refused as exc:
        raise InvalidSubmission("args", str(exc)) from None
    expires = options.get("expires")
    submit = SubmitOptions(
        priority=options.get("priority"), countdown=options.get("countdown"),
        eta=_instant(options.get("eta"), "eta"),
        expires=expires if isinstance(expires, int | float) else _instant(expires, "expires"),
        link=_link(link, "link"), link_error=_link(link_error, "link_error"))
    job, _ = job_submit(tenant=tenant, task=task.name, params=params, options=submit)
    return task.AsyncResult(str(job.id))


def _reschedule(task, task_id: str, options: dict):
    """Celery's ``self.retry`` from a job's own run: the job runs again at the retry's
    time, published by the dispatcher (never held in a worker)."""
    countdown = options.get("countdown")
    eta = _instant(options.get("eta"), "eta")
    run_at = eta or (platform_now() + dt.timedelta(seconds=float(countdown or 0)))
    Job.objects.filter(id=task_id, status=Job.Status.STARTED).update(run_at=run_at,
                                                                     published_at=None)
    return task.AsyncResult(task_id)

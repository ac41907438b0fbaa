"""Accepting a job: its record written, then its publication after the commit; and
cancelling one that has not started.

Run by the web (``POST /api/v1/jobs`` and the media uploads) and the platform's
tools; ``new_job`` also by the worker, for a job's follow-up link
(``jobs.outcomes``), and by the bulk and batch paths for their templates.

A job is written in the transaction that accepts it and published after that
transaction commits, so a rolled-back request never leaves a task behind. If
the publish fails (broker down or blocked) or the job is delayed (countdown,
eta) or held (its tenant's fair-share window is full), the job waits in the
table with ``published_at`` empty and the dispatcher (``jobs.dispatch``)
publishes it when it is due: an accepted job is never lost because the
broker was away when it was accepted.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.db.models.functions import Now

import routing.celery_config as routing_celery
from jobs import fairness
from jobs.catalogue import task_lane
from jobs.errors import IdempotencyConflict, NotCancellable
from jobs.models import Job
from jobs.options import (
    SubmitOptions,
    apply_run_options,
    check_links,
    fingerprint,
    schedule_of,
)
from jobs.publishing import publish_after_commit
from jobs.quotas import check_quotas
from jobs.signals import job_events_for
from routing import priorities, topology
from switchyard.clock import platform_now
from tenants.models import Tenant


def new_job(*, tenant: Tenant | None, task: str, params: Mapping[str, Any],
            priority: int | None, now: dt.datetime, absolute_priority: int | None = None,
            ) -> Job:
    """An unsaved job of ``task`` for ``tenant`` (None: the platform's own work) in
    the lane the task picks for ``params``, in the band of the tenant's tier:
    ``priority`` is relative to the band, ``absolute_priority`` (a follow-up
    keeping its parent's) is clamped into it. ``UnknownTask`` if not routable."""
    lane = task_lane(task, params, tenant=tenant)
    tier = priorities.tier(tenant.tier) if tenant else priorities.DEFAULT_TIER
    return Job(
        tenant=tenant,
        tenant_name=tenant.name if tenant else routing_celery.SYSTEM_TENANT,
        task=task,
        lane=lane.name,
        tier=tier.name,
        priority=tier.clamp(absolute_priority) if absolute_priority is not None
        else tier.place(priority),
        routing_key=topology.routing_key(lane.name, tier.name, task),
        params=dict(params),
        submitted_at=now,
    )


def job_submit(*, tenant: Tenant | None, task: str, params: Mapping[str, Any] | None = None,
               options: SubmitOptions | None = None, priority: int | None = None,
               idempotency_key: str = "") -> tuple[Job, bool]:
    """Record a job and publish it once the surrounding transaction commits.

    Returns ``(job, created)``: with an ``idempotency_key`` already used by this
    tenant for the same request, the existing job and False (a different
    request under the same key raises ``IdempotencyConflict``). The tier, and
    so the priority band, comes from the tenant record, never from the caller.
    Raises ``UnknownTask``, ``InvalidSubmission`` or ``QuotaExceeded``.
    """
    options = options or SubmitOptions(priority=priority)
    params = dict(params or {})
    now = platform_now()
    run_at, expires_at = schedule_of(options, now)
    check_links(options)
    job = new_job(tenant=tenant, task=task, params=params, priority=options.priority, now=now)
    if run_at is None and fairness.must_hold(lane=job.lane, tier=job.tier, tenant=tenant):
        # The tenant's window in this lane is full, or its work is paused
        # (jobs.tenant_work): the job is held in the table, due now, and the
        # dispatcher publishes it when the window frees or the work is resumed.
        run_at = now
    job.run_at, job.expires_at = run_at, expires_at
    apply_run_options(job, options)
    if idempotency_key:
        job.idempotency_key = idempotency_key
        job.request_fingerprint = fingerprint(task, params, asdict(options))
        existing = idempotent_replay(Job.objects.filter(tenant=tenant), idempotency_key,
                                     job.request_fingerprint)
        if existing:
            return existing, False
    try:
        with transaction.atomic():
            if tenant is not None:
                check_quotas(tenant, now)
            job.save(force_insert=True)
            transaction.on_commit(lambda: job_events_for("submitted", [job]))
            if job.run_at is None:
                transaction.on_commit(lambda: publish_after_commit(job))
    except IntegrityError:
        # A concurrent request with the same key won the insert.
        existing = idempotent_replay(Job.objects.filter(tenant=tenant), idempotency_key,
                                     job.request_fingerprint)
        if existing is None:
            raise
        return existing, False
    return job, True


def idempotent_replay(records: QuerySet, key: str, expected: str):
    """The record (a job or a batch among the tenant's ``records``) already
    accepted under ``key``, or None; ``IdempotencyConflict`` if it was accepted
    for a request whose fingerprint differs from ``expected``."""
    if not key:
        return None
    existing = records.filter(idempotency_key=key).first()
    if existing and existing.request_fingerprint != expected:
        what = records.model._meta.verbose_name
        raise IdempotencyConflict(
            f"Idempotency-Key {key!r} was used for a different request ({what} {existing.id})")
    return existing


def job_cancel(*, job: Job) -> Job:
    """Cancel a job that has not started: it will never run (its message, if
    already in the broker, is acknowledged unrun). ``NotCancellable`` otherwise."""
    updated = Job.objects.filter(id=job.id, status__in=Job.WAITING).update(
        status=Job.Status.CANCELLED, finished_at=Now(), error="cancelled by its caller"
    )
    job.refresh_from_db()
    if not updated:
        raise NotCancellable(f"job {job.id} is {job.status}; only a job that has not started "
                             "can be cancelled")
    job_events_for("cancelled", [job])
    return job

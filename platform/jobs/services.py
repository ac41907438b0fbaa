"""Writes on jobs: submitting, cancelling, publishing, pruning.

A job is written in the transaction that accepts it and published after that
transaction commits, so a rolled-back request never leaves a task behind. If
the publish fails (broker down or blocked) or the job is delayed (countdown,
eta), the job waits in the table with ``published_at`` empty and the
dispatcher (``manage.py dispatch``) publishes it when it is due: an accepted
job is never lost because the broker was away when it was accepted.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

import routing.celery_config as routing_celery
from jobs.models import Job
from routing import priorities, topology
from switchyard.celery import app
from tenants.models import Tenant

logger = logging.getLogger(__name__)

#: Longest countdown or eta accepted, and longest expiry.
MAX_DELAY = dt.timedelta(days=30)
#: The web publishes right after commit; the dispatcher only steps in for jobs
#: left unpublished this long (so both do not publish the same job).
PUBLISH_GRACE = dt.timedelta(seconds=3)


class UnknownTask(LookupError):
    """The task is not registered, or declares no lane."""


class InvalidSubmission(ValueError):
    """A submission the platform refuses; ``field`` names what was wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class QuotaExceeded(Exception):
    """The tenant is over one of its quotas; ``retry_after`` is in seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class IdempotencyConflict(Exception):
    """An ``Idempotency-Key`` reused with a different request."""


@dataclass(frozen=True)
class SubmitOptions:
    """How a job is to run. ``priority`` is relative (0..9) inside the tenant's band;
    ``countdown`` is seconds from now; ``eta`` and ``expires`` are absolute times
    (``expires`` may also be seconds from now). Times are read on the platform's
    clock at submission, never the caller's."""

    priority: int | None = None
    countdown: float | None = None
    eta: dt.datetime | None = None
    expires: dt.datetime | float | None = None


def task_lane(task: str) -> topology.Lane:
    """The lane ``task`` declared; ``UnknownTask`` if it is not a routable task."""
    registered = app.tasks.get(task)
    lane_name = getattr(registered, "lane", None)
    if registered is None or lane_name is None:
        raise UnknownTask(f"unknown task {task!r}")
    return topology.lane(lane_name)


def _schedule(options: SubmitOptions, now: dt.datetime) -> tuple[dt.datetime | None,
                                                                   dt.datetime | None]:
    """``(run_at, expires_at)`` from the options, validated against ``now``."""
    if options.priority is not None and not (
        priorities.RELATIVE_MIN <= options.priority <= priorities.RELATIVE_MAX
    ):
        raise InvalidSubmission("options.priority", f"must be between {priorities.RELATIVE_MIN} "
                                f"and {priorities.RELATIVE_MAX}, got {options.priority}")
    if options.countdown is not None and options.eta is not None:
        raise InvalidSubmission("options.eta", "give countdown or eta, not both")
    run_at = None
    if options.countdown is not None:
        if not 0 <= options.countdown <= MAX_DELAY.total_seconds():
            raise InvalidSubmission("options.countdown", "must be between 0 and "
                                    f"{int(MAX_DELAY.total_seconds())} seconds")
        run_at = now + dt.timedelta(seconds=options.countdown) if options.countdown else None
    elif options.eta is not None:
        eta = _aware(options.eta, "options.eta")
        if eta < now:
            raise InvalidSubmission("options.eta", f"{eta.isoformat()} is in the past")
        if eta - now > MAX_DELAY:
            raise InvalidSubmission("options.eta", f"more than {MAX_DELAY.days} days ahead")
        run_at = eta
    expires_at = None
    if options.expires is not None:
        if isinstance(options.expires, dt.datetime):
            expires_at = _aware(options.expires, "options.expires")
        else:
            if not 0 < options.expires <= MAX_DELAY.total_seconds():
                raise InvalidSubmission("options.expires", "seconds must be between 0 and "
                                        f"{int(MAX_DELAY.total_seconds())}")
            expires_at = now + dt.timedelta(seconds=options.expires)
        if expires_at <= (run_at or now):
            what = "eta/countdown" if run_at else "now"
            raise InvalidSubmission("options.expires", f"{expires_at.isoformat()} is not after "
                                    f"{what} ({(run_at or now).isoformat()})")
    return run_at, expires_at


def _aware(value: dt.datetime, field: str) -> dt.datetime:
    if timezone.is_naive(value):
        raise InvalidSubmission(field, "needs a time zone, e.g. 2026-01-01T12:00:00Z")
    return value


def _fingerprint(task: str, params: Mapping[str, Any], options: SubmitOptions) -> str:
    raw = json.dumps([task, params, options.__dict__], sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()


def _new_job(*, tenant: Tenant | None, task: str, params: Mapping[str, Any],
             priority: int | None, now: dt.datetime) -> Job:
    ln = task_lane(task)
    tier = priorities.tier(tenant.tier) if tenant else priorities.DEFAULT_TIER
    return Job(
        tenant=tenant,
        tenant_name=tenant.name if tenant else routing_celery.SYSTEM_TENANT,
        task=task,
        lane=ln.name,
        tier=tier.name,
        priority=tier.place(priority),
        routing_key=topology.routing_key(ln.name, tier.name, task),
        params=dict(params),
        submitted_at=now,
    )


def _check_quotas(tenant: Tenant, now: dt.datetime) -> None:
    waiting = Job.objects.filter(
        tenant=tenant, status__in=(Job.Status.QUEUED, Job.Status.RETRYING)
    ).count()
    if waiting >= tenant.max_queued_jobs:
        raise QuotaExceeded(f"{waiting} jobs are waiting, the quota is {tenant.max_queued_jobs}",
                            retry_after=30)
    window = now - dt.timedelta(seconds=60)
    recent = Job.objects.filter(tenant=tenant, submitted_at__gt=window)
    if recent.count() >= tenant.submissions_per_minute:
        oldest = recent.order_by("submitted_at").values_list("submitted_at", flat=True).first()
        retry_after = max(1, int((oldest + dt.timedelta(seconds=60) - now).total_seconds()) + 1)
        raise QuotaExceeded(f"more than {tenant.submissions_per_minute} submissions in 60 s",
                            retry_after=retry_after)


def publish_job(job: Job, producer=None) -> None:
    """Publish ``job`` now with its recorded routing, and note it as published."""
    _publish(job, producer=producer)
    _mark_published([job.id])


def _publish(job: Job, producer=None) -> None:
    app.send_task(
        job.task,
        kwargs=job.params,
        task_id=str(job.id),
        priority=job.priority,
        expires=job.expires_at,
        headers={routing_celery.TENANT_HEADER: job.tenant_name,
                 routing_celery.TIER_HEADER: job.tier},
        producer=producer,
    )


def _mark_published(job_ids: list) -> None:
    Job.objects.filter(id__in=job_ids, published_at__isnull=True).update(
        published_at=timezone.now()
    )


def _publish_after_commit(job: Job) -> None:
    """Publish now; on failure the job stays unpublished for the dispatcher."""
    try:
        publish_job(job)
    except Exception as exc:  # broker down or refusing: the dispatcher will retry
        logger.warning("job %s accepted but not yet published (%s); the dispatcher will "
                       "publish it", job.id, exc)


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
    now = timezone.now()
    run_at, expires_at = _schedule(options, now)
    job = _new_job(tenant=tenant, task=task, params=params, priority=options.priority, now=now)
    job.run_at, job.expires_at = run_at, expires_at
    if idempotency_key:
        job.idempotency_key = idempotency_key
        job.request_fingerprint = _fingerprint(task, params, options)
        existing = _idempotent_replay(tenant, idempotency_key, job.request_fingerprint)
        if existing:
            return existing, False
    try:
        with transaction.atomic():
            if tenant is not None:
                _check_quotas(tenant, now)
            job.save(force_insert=True)
            if run_at is None:
                transaction.on_commit(lambda: _publish_after_commit(job))
    except IntegrityError:
        # A concurrent request with the same key won the insert.
        existing = _idempotent_replay(tenant, idempotency_key, job.request_fingerprint)
        if existing is None:
            raise
        return existing, False
    return job, True


def _idempotent_replay(tenant: Tenant | None, key: str, fingerprint: str) -> Job | None:
    if not key:
        return None
    existing = Job.objects.filter(tenant=tenant, idempotency_key=key).first()
    if existing and existing.request_fingerprint != fingerprint:
        raise IdempotencyConflict(
            f"Idempotency-Key {key!r} was used for a different request (job {existing.id})")
    return existing


def job_submit_many(*, tenant: Tenant | None, task: str, params_list: Iterable[Mapping[str, Any]],
                    priority: int | None = None, chunk: int = 2000) -> int:
    """Record and publish many jobs of one task for one tenant; return how many.

    Rows are inserted in chunks and each chunk is published after its commit
    over one producer connection, with publisher confirms.
    """
    total = 0
    batch: list[Job] = []

    def flush() -> None:
        nonlocal total
        if not batch:
            return
        with transaction.atomic():
            Job.objects.bulk_create(batch)
        with app.producer_or_acquire() as producer:
            for job in batch:
                _publish(job, producer=producer)
        _mark_published([job.id for job in batch])
        total += len(batch)
        batch.clear()

    for params in params_list:
        batch.append(_new_job(tenant=tenant, task=task, params=params, priority=priority,
                              now=timezone.now()))
        if len(batch) >= chunk:
            flush()
    flush()
    return total


class NotCancellable(Exception):
    """The job already started or finished."""


CANCELLABLE = (Job.Status.QUEUED, Job.Status.RETRYING)


def job_cancel(*, job: Job) -> Job:
    """Cancel a job that has not started: it will never run (its message, if
    already in the broker, is acknowledged unrun). ``NotCancellable`` otherwise."""
    updated = Job.objects.filter(id=job.id, status__in=CANCELLABLE).update(
        status=Job.Status.CANCELLED, finished_at=timezone.now(), error="cancelled by its caller"
    )
    job.refresh_from_db()
    if not updated:
        raise NotCancellable(f"job {job.id} is {job.status}; only a job that has not started "
                             "can be cancelled")
    return job


def job_publish_due(*, now: dt.datetime | None = None, limit: int = 500) -> int:
    """Publish queued jobs that are due and not yet published; return how many.

    Due means: ``run_at`` passed (countdown, eta), or an immediate job the web
    could not publish within ``PUBLISH_GRACE``. Jobs whose expiry passed while
    they waited are marked expired, not published. Rows are locked with SKIP
    LOCKED so several dispatchers never publish the same job; a dispatcher
    dying between publishing and committing republishes at most ``limit`` jobs
    (at-least-once), and the worker's job_begin runs each only once it is
    still runnable.
    """
    now = now or timezone.now()
    with transaction.atomic():
        due = list(
            Job.objects.select_for_update(skip_locked=True)
            .filter(published_at__isnull=True, status=Job.Status.QUEUED)
            .filter(Q(run_at__lte=now) | Q(run_at__isnull=True,
                                             submitted_at__lte=now - PUBLISH_GRACE))
            .order_by("run_at", "submitted_at")[:limit]
        )
        expired, ready = [], []
        for job in due:
            (expired if job.expires_at and job.expires_at <= now else ready).append(job)
        if expired:
            Job.objects.filter(id__in=[j.id for j in expired]).update(
                status=Job.Status.EXPIRED, finished_at=now,
                error="expired before it could be published")
        if ready:
            with app.producer_or_acquire() as producer:
                for job in ready:
                    _publish(job, producer=producer)
            Job.objects.filter(id__in=[j.id for j in ready]).update(published_at=now)
    return len(ready)


def job_prune_finished(*, older_than: dt.timedelta) -> int:
    """Delete finished jobs whose end is older than ``older_than``; return how many."""
    cutoff = timezone.now() - older_than
    deleted, _ = Job.objects.filter(status__in=Job.FINISHED, finished_at__lt=cutoff).delete()
    return deleted

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
import random
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, Min, Q, QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

import routing.celery_config as routing_celery
from jobs import fairness
from jobs.models import Job
from jobs.signals import job_events_for, timing_headers
from routing import priorities, topology
from switchyard.celery import app
from switchyard.clock import platform_now
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
class RetryPolicy:
    """Runs again after a failure, up to ``max_retries`` times.

    Exponential (the default): the n-th retry waits ``backoff * 2**(n-1)``
    seconds, capped at ``backoff_max``. Linear, with Celery's ``retry_policy``
    names: ``interval_start + interval_step * (n-1)``, capped at
    ``interval_max``. With ``jitter`` the wait is drawn from its upper half, so
    jobs that failed together do not all come back in the same second. A
    waiting retry sits in the job table (status ``retrying``), not in a
    worker's memory, and the dispatcher publishes it when due.
    """

    max_retries: int
    backoff: float = 1.0
    backoff_max: float = 600.0
    jitter: bool = True
    interval_start: float | None = None
    interval_step: float | None = None
    interval_max: float | None = None

    @property
    def linear(self) -> bool:
        return any(v is not None for v in (self.interval_start, self.interval_step,
                                            self.interval_max))

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        if self.linear:
            wait = (self.interval_start or 0) + (self.interval_step or 0) * max(0, retry - 1)
            if self.interval_max is not None:
                wait = min(wait, self.interval_max)
        else:
            wait = min(self.backoff_max, self.backoff * 2 ** max(0, retry - 1))
        return random.uniform(wait / 2, wait) if self.jitter else wait


@dataclass(frozen=True)
class Link:
    """A task to submit for the same tenant when a job succeeds (``link``) or
    fails for good (``link_error``), with its own parameters."""

    task: str
    params: dict = field(default_factory=dict)


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
    retry_policy: RetryPolicy | None = None
    link: Link | None = None
    link_error: Link | None = None


def task_lane(task: str, params: Mapping[str, Any] | None = None, *,
              tenant: Tenant | None = None) -> topology.Lane:
    """The lane of ``task``: the one it declared, or with ``params`` the one it picks
    for them (``SwitchyardTask.lane_for``); ``UnknownTask`` if it is not routable."""
    registered = app.tasks.get(task)
    lane_name = getattr(registered, "lane", None)
    if registered is None or lane_name is None:
        raise UnknownTask(f"unknown task {task!r}")
    if params is not None:
        lane_name = registered.lane_for(params, tenant=tenant)
    return topology.lane(lane_name)


def schedule_of(options: SubmitOptions, now: dt.datetime) -> tuple[dt.datetime | None,
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


def fingerprint(*parts: Any) -> str:
    """SHA-256 of a request, to tell a replay from a different request under one key."""
    raw = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()


def new_job(*, tenant: Tenant | None, task: str, params: Mapping[str, Any],
             priority: int | None, now: dt.datetime, absolute_priority: int | None = None,
             ) -> Job:
    ln = task_lane(task, params, tenant=tenant)
    tier = priorities.tier(tenant.tier) if tenant else priorities.DEFAULT_TIER
    return Job(
        tenant=tenant,
        tenant_name=tenant.name if tenant else routing_celery.SYSTEM_TENANT,
        task=task,
        lane=ln.name,
        tier=tier.name,
        priority=tier.clamp(absolute_priority) if absolute_priority is not None
        else tier.place(priority),
        routing_key=topology.routing_key(ln.name, tier.name, task),
        params=dict(params),
        submitted_at=now,
    )


def run_option_values(options: SubmitOptions) -> dict[str, Any]:
    """The job fields that say what happens after a run (retries, links)."""
    values: dict[str, Any] = {
        "link": asdict(options.link) if options.link else None,
        "link_error": asdict(options.link_error) if options.link_error else None,
    }
    if options.retry_policy is not None:
        values["retry_policy"] = asdict(options.retry_policy)
        values["max_attempts"] = 1 + options.retry_policy.max_retries
    return values


def apply_run_options(job: Job, options: SubmitOptions) -> None:
    """Copy what happens after a run (retries, links) from ``options`` onto ``job``."""
    for name, value in run_option_values(options).items():
        setattr(job, name, value)


def check_links(options: SubmitOptions, prefix: str = "options") -> None:
    """``InvalidSubmission`` naming the field if a linked task is not routable."""
    for name in ("link", "link_error"):
        linked = getattr(options, name)
        if linked is not None:
            try:
                task_lane(linked.task)
            except UnknownTask as exc:
                raise InvalidSubmission(f"{prefix}.{name}.task", str(exc)) from None


_QUOTA_COUNTS = """
SELECT (SELECT count(*) FROM jobs_job WHERE tenant_id = %(tenant)s
          AND status IN ('queued', 'retrying')),
       (SELECT count(*) FROM jobs_job WHERE tenant_id = %(tenant)s
          AND submitted_at > %(window)s AND batch_id IS NULL)
     + (SELECT count(*) FROM jobs_batch WHERE tenant_id = %(tenant)s
          AND submitted_at > %(window)s)
"""


#: Per process: tenant id -> (when read, waiting, recent). Counting a tenant's
#: backlog costs a scan of its index entries (about 60 ms for 300,000 waiting
#: jobs, measured), paid by every submission; within SWITCHYARD_QUOTA_COUNT_TTL
#: the last counts are reused, plus what this process added since.
_quota_cache: dict[Any, tuple[float, int, int]] = {}


def _quota_counts(tenant: Tenant, window: dt.datetime) -> tuple[int, int]:
    ttl = settings.SWITCHYARD_QUOTA_COUNT_TTL
    cached = _quota_cache.get(tenant.id)
    if ttl > 0 and cached and time.monotonic() - cached[0] < ttl:
        return cached[1], cached[2]
    with connection.cursor() as cursor:
        cursor.execute(_QUOTA_COUNTS, {"tenant": tenant.id, "window": window})
        waiting, recent = cursor.fetchone()
    if ttl > 0:
        _quota_cache[tenant.id] = (time.monotonic(), waiting, recent)
    return waiting, recent


def _quota_counted(tenant: Tenant, adding: int, submissions: int) -> None:
    """Count a submission that passed into the cached counts (an over-count if
    its transaction then rolls back: the safe side, for at most the TTL)."""
    cached = _quota_cache.get(tenant.id)
    if cached:
        _quota_cache[tenant.id] = (cached[0], cached[1] + adding, cached[2] + submissions)


def check_quotas(tenant: Tenant, now: dt.datetime, *, adding: int = 1,
                 submissions: int = 1) -> None:
    """Raise ``QuotaExceeded`` if ``adding`` more waiting jobs, counting as
    ``submissions`` toward the rate quota, would break the tenant's quotas. A
    batch is one submission of many jobs; a bulk submission of n jobs is n.
    Both counts are read in one round trip (each on its own index)."""
    window = now - dt.timedelta(seconds=60)
    waiting, recent = _quota_counts(tenant, window)
    if waiting + adding > tenant.max_queued_jobs:
        raise QuotaExceeded(f"{waiting} jobs are waiting and this adds {adding}; the quota is "
                            f"{tenant.max_queued_jobs}", retry_after=30)
    if submissions > tenant.submissions_per_minute:
        raise QuotaExceeded(f"{submissions} jobs in one submission is more than the "
                            f"{tenant.submissions_per_minute} submissions a minute allowed; "
                            "send them in smaller parts, or as a batch", retry_after=60)
    if recent + submissions > tenant.submissions_per_minute:
        recent_jobs = Job.objects.filter(tenant=tenant, submitted_at__gt=window,
                                         batch__isnull=True)
        recent_batches = tenant.batches.filter(submitted_at__gt=window)
        oldest = min(t for t in (recent_jobs.aggregate(t=Min("submitted_at"))["t"],
                                 recent_batches.aggregate(t=Min("submitted_at"))["t"]) if t)
        retry_after = max(1, int((oldest + dt.timedelta(seconds=60) - now).total_seconds()) + 1)
        raise QuotaExceeded(f"more than {tenant.submissions_per_minute} submissions in 60 s",
                            retry_after=retry_after)
    _quota_counted(tenant, adding, submissions)


#: Message header carrying the job's publication number: a delivery whose number
#: is below the job record's is a stale copy and is acknowledged unrun.
PUBLICATION_HEADER = "switchyard_publication"
#: Set on messages of jobs with a ``link``: the worker looks the link up on success.
LINK_HEADER = "switchyard_link"


def publish_job(job: Job, producer=None, **publish_options) -> None:
    """Publish ``job`` now with its recorded routing, and note it as published."""
    job.publications += 1
    _publish(job, producer=producer, **publish_options)
    _mark_published(job)


def _mark_published(job: Job) -> None:
    Job.objects.filter(id=job.id).update(published_at=timezone.now(),
                                         publications=job.publications)


def _publish(job: Job, producer=None, promoted: bool = False, **publish_options) -> None:
    headers = {routing_celery.TENANT_HEADER: job.tenant_name,
               routing_celery.TIER_HEADER: job.tier,
               PUBLICATION_HEADER: job.publications}
    if promoted:
        headers[routing_celery.PROMOTED_HEADER] = 1
    if job.link:
        headers[LINK_HEADER] = 1
    headers.update(timing_headers(job))  # observers time the wait (jobs.signals)
    app.send_task(
        job.task,
        kwargs=job.params,
        task_id=str(job.id),
        priority=job.priority,
        expires=job.expires_at,
        headers=headers,
        producer=producer,
        # The job's recorded lane, not the task's declared one: a task may pick
        # its lane from its params (SwitchyardTask.lane_for) when it is submitted.
        **routing_celery.route_for(job.task, job.lane, job.tier),
        **publish_options,
    )


#: One thread publishes for the web, so a request can stop waiting for a broker
#: that blocks (resource alarm) or hangs: the publish gets a deadline whatever
#: stage it is stuck in (connect, channel open, confirm).
_web_publisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="switchyard-publish")
#: The publisher thread's latest publish and when it was handed over.
_last_publish: tuple[Future, float] | None = None
_last_publish_lock = threading.Lock()


def _publisher_stuck(deadline: float) -> bool:
    """True while an earlier publish has been stuck past its deadline (a blocked or hung
    broker): later requests then skip the wait instead of queueing behind it."""
    last = _last_publish
    return last is not None and not last[0].done() and time.monotonic() - last[1] > deadline


def _publish_after_commit(job: Job) -> None:
    """Publish within ``SWITCHYARD_PUBLISH_DEADLINE`` seconds, else leave it to the dispatcher.

    The broker call runs on the publisher thread; the database is only touched
    here. A publish that finishes after the deadline has still put the message
    in the broker: the dispatcher then publishes it again, and the worker runs
    whichever copy comes first and acknowledges the other unrun (``job_begin``).
    While an earlier publish is still stuck past its deadline, the job is left
    to the dispatcher at once: a blocked broker costs one request the deadline,
    not every request behind it, and no publishes pile up on the thread.
    """
    global _last_publish
    deadline = settings.SWITCHYARD_PUBLISH_DEADLINE
    with _last_publish_lock:
        if _publisher_stuck(deadline):
            logger.warning("job %s accepted; the broker has not confirmed an earlier publish "
                           "for over %.1f s, the dispatcher will publish it", job.id, deadline)
            return
        job.publications += 1
        options = {"retry": True, "confirm_timeout": deadline / 2, "timeout": deadline / 2,
                   "retry_policy": {"max_retries": 1, "interval_start": 0,
                                    "interval_step": 0.1, "interval_max": 0.1}}
        future = _web_publisher.submit(_publish, job, **options)
        _last_publish = (future, time.monotonic())
    try:
        future.result(timeout=deadline)
    except FutureTimeout:
        logger.warning("job %s accepted; the broker did not confirm within %.1f s (blocked "
                       "or slow), the dispatcher will publish it", job.id, deadline)
        return
    except Exception as exc:  # broker down or refusing: the dispatcher will retry
        logger.warning("job %s accepted but not yet published (%s); the dispatcher will "
                       "publish it", job.id, exc)
        return
    _mark_published(job)


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
        # The tenant's window in this lane is full: the job waits in the table,
        # due now, and the dispatcher publishes it when the window frees.
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
                transaction.on_commit(lambda: _publish_after_commit(job))
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
    job_events_for("cancelled", [job])
    return job


#: How long the dispatcher waits for a confirm before giving the pass up.
DISPATCH_CONFIRM_TIMEOUT = 10.0


def _due(now: dt.datetime) -> Q:
    return Q(run_at__lte=now) | Q(run_at__isnull=True, submitted_at__lte=now - PUBLISH_GRACE)


def job_publish_due(*, now: dt.datetime | None = None, limit: int = 500) -> int:
    """Publish waiting jobs that are due and not yet published; return how many.

    Due means: ``run_at`` passed (countdown, eta, a retry's backoff, a batch
    chunk, a job held by its tenant's window), or an immediate job the web
    could not publish within ``PUBLISH_GRACE``. Jobs are taken per tenant, tier
    and lane (``jobs.fairness.release_plan``): in a lane with a window, only as
    many as the tenant's window has room for, tenants furthest below their
    share first. Jobs whose expiry passed while they waited are marked
    expired, not published. Rows are locked with SKIP LOCKED (and each windowed
    group with an advisory lock) so several dispatchers never publish the same
    job; a dispatcher dying between publishing and committing republishes at
    most ``limit`` jobs (at-least-once), and the worker's job_begin runs each
    only once.
    """
    now = now or platform_now()
    keys = fairness.held_keys()
    if not keys:
        return 0
    windowed = {lane for lane, _, _ in keys if fairness.base_window(lane)}
    published = fairness.in_broker_counts(windowed)
    weights = dict(Tenant.objects.filter(id__in={tenant_id for _, _, tenant_id in keys})
                   .values_list("id", "weight"))
    # How many each group holds is not counted (that would read every held row):
    # the release takes what is due, up to the room.
    plan = fairness.release_plan([
        fairness.Group(key=key, held=limit, in_broker=published.get(key, 0),
                       window=fairness.tenant_window(key[0], weights.get(key[2], 1)))
        for key in keys], 10**9)
    # The plan gives the order and each group's room; the pass's limit is spent on
    # what is actually published (a group may have less due than its room).
    left = limit
    for (lane, tier, tenant_id), room in plan:
        if left <= 0:
            break
        left -= _release(lane, tier, tenant_id, min(room, left), now, weights.get(tenant_id, 1))
    return limit - left


def _group_lock(lane: str, tier: str, tenant_id) -> bool:
    """Serialise dispatchers on one windowed group (PostgreSQL advisory lock,
    released at commit); False if another dispatcher holds it."""
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(hashtext(%s))",
                       [f"switchyard-window:{lane}:{tier}:{tenant_id}"])
        return bool(cursor.fetchone()[0])


def _release(lane: str, tier: str, tenant_id, take: int, now: dt.datetime,
             weight: int) -> int:
    """Publish up to ``take`` of one group's due held jobs, highest priority and
    oldest first; return how many were published."""
    window = fairness.tenant_window(lane, weight)
    with transaction.atomic():
        if window is not None:
            if not _group_lock(lane, tier, tenant_id):
                return 0
            # Counted again under the lock: another dispatcher or the web may
            # have published since the plan was made.
            take = min(take, window - fairness.in_broker(lane, tier, tenant_id).count())
            if take <= 0:
                return 0
        due = list(
            Job.objects.select_for_update(skip_locked=True)
            .filter(lane=lane, tier=tier, tenant_id=tenant_id, published_at__isnull=True,
                    status__in=fairness.WAITING)
            .filter(_due(now))
            .order_by("-priority", Coalesce("run_at", "submitted_at"))[:take]
        )
        expired, ready = [], []
        for job in due:
            (expired if job.expires_at and job.expires_at <= now else ready).append(job)
        if expired:
            Job.objects.filter(id__in=[j.id for j in expired]).update(
                status=Job.Status.EXPIRED, finished_at=now,
                error="expired before it could be published")
            transaction.on_commit(lambda: job_events_for("expired", expired))
        if ready:
            band = priorities.tier(tier)
            # A job promoted once (jobs.fairness) and now waiting again (a retry, a
            # lost run) goes back into its band: the next promotion is decided afresh.
            demoted = [j.id for j in ready if j.priority > band.high]
            with app.producer_or_acquire() as producer:
                for job in ready:
                    job.priority = min(job.priority, band.high)
                    job.publications += 1
                    _publish(job, producer=producer, confirm_timeout=DISPATCH_CONFIRM_TIMEOUT)
            Job.objects.filter(id__in=[j.id for j in ready]).update(
                published_at=now, publications=F("publications") + 1)
            if demoted:
                Job.objects.filter(id__in=demoted).update(priority=band.high)
    return len(ready)


#: Most standard jobs promoted in one lane by one check.
MAX_PROMOTIONS = 100


def job_promote_starved(*, now: dt.datetime | None = None) -> int:
    """Keep the standard tier's starvation bound in every lane; return the jobs promoted.

    Per lane: the standard tier's share of the starts over the last
    ``SWITCHYARD_FAIR_SHARE_WINDOW`` seconds is compared with
    ``SWITCHYARD_STANDARD_MIN_SHARE`` (``jobs.fairness.promotions_needed``), and
    standard jobs in the broker for longer than ``SWITCHYARD_STANDARD_MAX_WAIT``
    less ``SWITCHYARD_STARVATION_MARGIN`` are overdue. Overdue jobs, then the
    oldest other standard jobs in the broker, are published again above the
    premium band with a higher publication number; the copy already queued is
    then stale and acknowledged unrun. Only jobs in their tenant's window (in
    the broker) are promoted: held jobs enter the window as it frees.
    """
    now = now or platform_now()
    standard = priorities.STANDARD.name
    since = now - dt.timedelta(seconds=settings.SWITCHYARD_FAIR_SHARE_WINDOW)
    promoted = 0
    for ln in topology.LANES:
        min_share = settings.SWITCHYARD_STANDARD_MIN_SHARE.get(ln.name, 0.0)
        max_wait = settings.SWITCHYARD_STANDARD_MAX_WAIT.get(ln.name, 0.0)
        in_broker = Job.objects.filter(lane=ln.name, tier=standard, published_at__isnull=False,
                                       status__in=fairness.WAITING)
        waiting = in_broker.filter(priority__lte=priorities.STANDARD.high)
        overdue_before = now - dt.timedelta(
            seconds=max(0.0, max_wait - settings.SWITCHYARD_STARVATION_MARGIN))
        overdue = max_wait > 0 and waiting.filter(published_at__lte=overdue_before).exists()
        if not overdue and not (min_share > 0 and waiting.exists()):
            continue
        starts = dict(Job.objects.filter(lane=ln.name, started_at__gte=since).order_by()
                      .values_list("tier").annotate(n=Count("id")))
        if sum(starts.values()) == starts.get(standard, 0):
            # No premium work started here lately: standard waits behind standard
            # only (its own backlog), which a promotion cannot shorten.
            continue
        need = fairness.promotions_needed(
            starts_total=sum(starts.values()), starts_standard=starts.get(standard, 0),
            min_share=min_share,
            promoted_waiting=in_broker.filter(priority__gt=priorities.STANDARD.high).count(),
            standard_waiting=len(waiting.values_list("id", flat=True)[:MAX_PROMOTIONS]))
        with transaction.atomic():
            chosen = []
            if overdue:
                chosen = list(waiting.select_for_update(skip_locked=True)
                              .filter(published_at__lte=overdue_before)
                              .order_by("published_at")[:MAX_PROMOTIONS])
            if need > len(chosen):
                chosen += list(waiting.select_for_update(skip_locked=True)
                               .exclude(id__in=[j.id for j in chosen])
                               .order_by("published_at")[:need - len(chosen)])
            if not chosen:
                continue
            with app.producer_or_acquire() as producer:
                for job in chosen:
                    job.publications += 1
                    job.priority = fairness.PROMOTED_PRIORITY
                    _publish(job, producer=producer, confirm_timeout=DISPATCH_CONFIRM_TIMEOUT,
                             promoted=True)
            Job.objects.filter(id__in=[j.id for j in chosen]).update(
                priority=fairness.PROMOTED_PRIORITY, publications=F("publications") + 1)
        promoted += len(chosen)
        logger.info("lane %s: %d standard job(s) promoted (standard share %d of %d starts, "
                    "overdue: %s)", ln.name, len(chosen), starts.get(standard, 0),
                    sum(starts.values()), overdue)
    return promoted


#: Deliveries allowed beyond ``max_attempts`` for runs that never reported an
#: outcome (worker killed, machine lost). Past it the job is ``dead``: a message
#: that kills its worker every time must not cycle for ever.
LOST_DELIVERY_ALLOWANCE = 2
#: A started job silent for its lane's hard time limit plus this is lost.
REAP_GRACE = dt.timedelta(minutes=2)


def _publish_from_worker(job: Job) -> None:
    try:
        publish_job(job)
    except Exception as exc:  # the dispatcher publishes it after PUBLISH_GRACE
        logger.warning("follow-up job %s recorded but not yet published (%s)", job.id, exc)


def _submit_followup(parent: Job, spec: Mapping[str, Any]) -> Job | None:
    """Submit ``parent``'s link or link_error for the same tenant, published after commit."""
    try:
        child = new_job(tenant=parent.tenant, task=spec["task"], params=spec.get("params") or {},
                         priority=None, absolute_priority=parent.priority, now=timezone.now())
    except UnknownTask:  # unregistered since the parent was accepted
        logger.error("job %s: linked task %r is no longer registered", parent.id, spec["task"])
        return None
    child.parent = parent
    child.save(force_insert=True)
    transaction.on_commit(lambda: job_events_for("submitted", [child]))
    transaction.on_commit(lambda: _publish_from_worker(child))
    return child


def job_record_success(*, job_id, result: Any, failed_items: int = 0,
                       has_link: bool = False) -> bool:
    """``started`` → ``succeeded``; submits the job's ``link``. False if it was not started.

    Without a link this is one UPDATE in autocommit (one round trip: it runs
    after every job); with one, the follow-up is written in the same transaction.
    """
    def succeed() -> int:
        return Job.objects.filter(id=job_id, status=Job.Status.STARTED).update(
            status=Job.Status.SUCCEEDED, finished_at=timezone.now(), result=result, error="",
            failed_items=failed_items)

    if not has_link:
        return bool(succeed())
    with transaction.atomic():
        updated = succeed()
        if updated:
            job = Job.objects.select_related("tenant").get(id=job_id)
            if job.link:
                _submit_followup(job, job.link)
    return bool(updated)


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
            _submit_followup(job, job.link_error)
    return Job.Status.FAILED if updated else None


def job_record_dead(*, job: Job, reason: str, runnable=()) -> bool:
    """Mark ``job`` dead (if still in ``runnable``) and submit its ``link_error``."""
    with transaction.atomic():
        updated = Job.objects.filter(id=job.id, status__in=runnable).update(
            status=Job.Status.DEAD, finished_at=timezone.now(), error=reason[:5000])
        if updated and job.link_error:
            _submit_followup(job, job.link_error)
        if updated:
            transaction.on_commit(lambda: job_events_for("dead", [job]))
    return bool(updated)


def job_reap_lost(*, now: dt.datetime | None = None, limit: int = 500) -> tuple[int, int]:
    """Find started jobs whose run can no longer be going on; return ``(requeued, dead)``.

    A run is over once its lane's hard time limit has passed (the worker kills
    it there and records the failure). A job still ``started`` after that plus
    ``REAP_GRACE`` lost its outcome (worker or machine gone, outcome not
    written). It is published again, with a new publication number so an old
    copy still in the queue is not run too; past ``max_attempts +
    LOST_DELIVERY_ALLOWANCE`` deliveries it is ``dead`` instead.
    """
    now = now or platform_now()
    requeued = dead = 0
    for ln in topology.LANES:
        cutoff = now - dt.timedelta(seconds=ln.time_limit) - REAP_GRACE
        with transaction.atomic():
            lost = list(Job.objects.select_for_update(skip_locked=True, of=("self",))
                        .select_related("tenant")
                        .filter(status=Job.Status.STARTED, lane=ln.name, started_at__lt=cutoff)
                        [:limit])
            for job in lost:
                silent = int((now - job.started_at).total_seconds())
                where = f"on {job.worker}" if job.worker else ""
                if job.attempts >= job.max_attempts + LOST_DELIVERY_ALLOWANCE:
                    dead += job_record_dead(job=job, runnable=(Job.Status.STARTED,), reason=(
                        f"lost: no outcome {silent} s after delivery {job.attempts} started "
                        f"{where}; no deliveries left"))
                    continue
                Job.objects.filter(id=job.id).update(
                    status=Job.Status.QUEUED, published_at=None, run_at=None,
                    error=f"delivery {job.attempts} {where} gave no outcome in {silent} s "
                          "(worker lost); published again")
                requeued += 1
        if lost:
            logger.warning("lane %s: %d lost job(s) handled (requeued so far %d, dead %d)",
                           ln.name, len(lost), requeued, dead)
    return requeued, dead


def job_prune_finished(*, older_than: dt.timedelta) -> int:
    """Delete finished jobs whose end is older than ``older_than``; return how many.
    Batch chunks go with their batch (``batches.batch_prune_finished``)."""
    cutoff = timezone.now() - older_than
    deleted, _ = Job.objects.filter(status__in=Job.FINISHED, finished_at__lt=cutoff,
                                    batch__isnull=True).delete()
    return deleted

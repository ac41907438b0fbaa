"""The dispatcher's passes over the job table (``manage.py dispatch``), each safe to
run in several dispatchers at once:

* ``job_publish_due``: publish what is due and unpublished (a countdown or eta
  reached, a retry's backoff over, a batch chunk, a job the web could not
  publish within ``PUBLISH_GRACE``, a job held by its tenant's full window),
  tenants furthest below their fair share first, none of a paused tenant's;
* ``job_promote_starved``: the standard tier's starvation bound (``jobs.fairness``);
* ``job_reap_lost``: started jobs whose worker vanished, published again or dead;
* ``job_reclaim_unconfirmed``: jobs of a bulk submission whose submitter died
  before the broker confirmed them (``jobs.bulk``), set back to unpublished.
"""
from __future__ import annotations

import datetime as dt
import functools
import logging
import random

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Q
from django.db.models.functions import Coalesce

from jobs import fairness
from jobs.models import Job, PendingConfirm
from jobs.outcomes import LOST_DELIVERY_ALLOWANCE, job_record_dead
from jobs.publishing import PUBLISH_GRACE, send_job
from jobs.signals import job_event_send, job_events_for
from routing import priorities, topology
from switchyard.amqp import Unroutable
from switchyard.celery import app
from switchyard.clock import platform_now
from tenants.models import Tenant

logger = logging.getLogger(__name__)

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
    keys = fairness.unpublished_keys()
    if not keys:
        return 0
    tenants = {tenant_id: (weight, paused_at) for tenant_id, weight, paused_at in
               Tenant.objects.filter(id__in={tenant_id for _, _, tenant_id in keys})
               .values_list("id", "weight", "paused_at")}
    weights = {tenant_id: weight for tenant_id, (weight, _) in tenants.items()}
    # A paused tenant's work stays unpublished until it is resumed (jobs.tenant_work).
    keys = [key for key in keys if tenants.get(key[2], (1, None))[1] is None]
    windowed = {lane for lane, _, _ in keys if fairness.base_window(lane)}
    published = fairness.in_broker_counts(windowed)
    # How many unpublished jobs each group has is not counted (that would read
    # every such row): the release takes what is due, up to the room.
    plan = fairness.release_plan([
        fairness.Group(key=key, unpublished=limit, in_broker=published.get(key, 0),
                       window=fairness.tenant_window(key[0], weights.get(key[2], 1)))
        for key in keys], 10**9)
    # The plan gives the order and each group's room; the pass's limit is spent on
    # what is actually published (a group may have less due than its room), shared
    # out in rounds: each group first gets an equal part of what is left, and what
    # one leaves unused goes round again. Without that, a group with no window (the
    # quick lane's) whose key sorts first would take every pass while it has work.
    # Groups of equal standing start at a random place, so when there are more of
    # them than the pass has jobs, no key is always served last.
    left = limit
    unroutable: set[str] = set()
    pending = _rotate_ties(plan, windowed)
    while left > 0 and pending:
        share = max(1, left // len(pending))
        again = []
        for (lane, tier, tenant_id), room in pending:
            if left <= 0:
                break
            if lane in unroutable:
                continue
            take = min(room, share, left)
            sent, returned = _release(lane, tier, tenant_id, take, now,
                                      weights.get(tenant_id, 1))
            left -= sent
            if returned is not None:
                # No queue is bound for this lane's keys (deleted, or a binding
                # removed): its jobs stay unpublished until it is back; the other
                # lanes go on.
                unroutable.add(lane)
                logger.error("lane %s: %s; its jobs stay unpublished until the lane's "
                             "queue and binding are back (python -m routing apply)",
                             lane, returned)
            elif sent == take and room > take:
                again.append(((lane, tier, tenant_id), room - take))
        pending = again
    return limit - left


def try_transaction_lock(name: str) -> bool:
    """Take the PostgreSQL advisory lock ``name`` until the surrounding transaction ends;
    False if another session holds it. Elsewhere (SQLite, one dispatcher) always True."""
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(hashtext(%s))", [name])
        return bool(cursor.fetchone()[0])


def _release(lane: str, tier: str, tenant_id, take: int, now: dt.datetime,
             weight: int) -> tuple[int, Unroutable | None]:
    """Publish up to ``take`` of one group's due held jobs, highest priority and
    oldest first; return how many were published, and the broker's refusal if it
    returned one unrouted (the group's rest then stays unpublished)."""
    window = fairness.tenant_window(lane, weight)
    with transaction.atomic():
        if window is not None:
            # One dispatcher (or starting worker) refills a window at a time.
            if not try_transaction_lock(f"switchyard-window:{lane}:{tier}:{tenant_id}"):
                return 0, None
            # Counted again under the lock: another dispatcher or the web may
            # have published since the plan was made.
            take = min(take, window - fairness.in_broker(lane, tier, tenant_id).count())
            if take <= 0:
                return 0, None
        due = list(
            Job.objects.select_for_update(skip_locked=True)
            .filter(lane=lane, tier=tier, tenant_id=tenant_id, published_at__isnull=True,
                    status__in=Job.WAITING)
            # Read again here: a pause committed since the pass planned is kept.
            .filter(_due(now), fairness.tenant_not_paused())
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
        if connection.vendor != "sqlite":
            # Published under the rows' locks (SKIP LOCKED keeps other dispatchers off).
            return _publish(ready, lane, tier, now)
    # SQLite: one dispatcher, and one writer at a time for the whole database. The
    # publishes (up to DISPATCH_CONFIRM_TIMEOUT each while the broker is blocked) run
    # outside the write transaction, so submissions do not wait behind them.
    return _publish(ready, lane, tier, now)


def _publish(ready: list[Job], lane: str, tier: str,
             now: dt.datetime) -> tuple[int, Unroutable | None]:
    """Publish ``ready`` in order and record what the broker confirmed; stop at the
    first message it returns unrouted."""
    if not ready:
        return 0, None
    sent, returned = [], None
    band = priorities.tier(tier)
    promoted_before = {j.id for j in ready if j.priority > band.high}
    with app.producer_or_acquire() as producer:
        for job in ready:
            job.priority = min(job.priority, band.high)
            job.publications += 1
            try:
                send_job(job, producer=producer, confirm_timeout=DISPATCH_CONFIRM_TIMEOUT)
            except Unroutable as exc:  # the rest of the group stays unpublished
                returned = exc
                job.publications -= 1
                break
            sent.append(job)
    with transaction.atomic():
        # What the broker confirmed is recorded, even when a later one was returned.
        Job.objects.filter(id__in=[j.id for j in sent]).update(
            published_at=now, publications=F("publications") + 1)
        # A job promoted once (jobs.fairness) and now waiting again (a retry, a lost
        # run) goes back into its band: the next promotion is decided afresh.
        demoted = [j.id for j in sent if j.id in promoted_before]
        if demoted:
            Job.objects.filter(id__in=demoted).update(priority=band.high)
        if returned is not None:
            transaction.on_commit(functools.partial(
                job_event_send, "returned", lane=lane, tier=tier, task=ready[len(sent)].task))
    return len(sent), returned


def job_refill_window(*, job_id, lane: str) -> int:
    """Publish the next held job of the tenant whose job ``job_id`` just started in
    ``lane``, if the lane has windows: the place it freed is filled at once, not at the
    dispatcher's next pass (so a tenant's held premium work never loses a turn to queued
    standard work meanwhile). Returns how many were published (0 or 1). Costs the
    starting worker a read, a locked count and a publish, in windowed lanes only; any
    failure is left to the dispatcher, which publishes the same job on its pass."""
    if not fairness.base_window(lane):
        return 0
    try:
        row = (Job.objects.filter(id=job_id).values_list("lane", "tier", "tenant_id",
                                                         "tenant__weight",
                                                         "tenant__paused_at").first())
        if row is None or row[2] is None or row[4] is not None or not fairness.base_window(
                row[0]):
            return 0  # no window to refill, or its tenant is paused
        published, _ = _release(row[0], row[1], row[2], 1, platform_now(), row[3] or 1)
        return published
    except Exception as exc:  # the dispatcher's pass publishes it instead
        logger.warning("job %s started; its tenant's next held job is left to the "
                       "dispatcher (%s)", job_id, exc)
        return 0


def _rotate_ties(plan: list, windowed: set[str]) -> list:
    """``plan`` with its groups that have no window (all of equal standing: the
    plan orders them by key only) rotated by a random offset, after the windowed
    groups in the plan's own order."""
    fixed = [entry for entry in plan if entry[0][0] in windowed]
    free = [entry for entry in plan if entry[0][0] not in windowed]
    if free:
        start = random.randrange(len(free))
        free = free[start:] + free[:start]
    return fixed + free


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
    for lane in topology.LANES:
        min_share = settings.SWITCHYARD_STANDARD_MIN_SHARE.get(lane.name, 0.0)
        max_wait = settings.SWITCHYARD_STANDARD_MAX_WAIT.get(lane.name, 0.0)
        in_broker = Job.objects.filter(lane=lane.name, tier=standard, published_at__isnull=False,
                                       status__in=Job.WAITING)
        waiting = in_broker.filter(priority__lte=priorities.STANDARD.high)
        overdue_before = now - dt.timedelta(
            seconds=max(0.0, max_wait - settings.SWITCHYARD_STARVATION_MARGIN))
        overdue = max_wait > 0 and waiting.filter(published_at__lte=overdue_before).exists()
        if not overdue and not (min_share > 0 and waiting.exists()):
            continue
        starts = dict(Job.objects.filter(lane=lane.name, started_at__gte=since).order_by()
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
                    send_job(job, producer=producer, confirm_timeout=DISPATCH_CONFIRM_TIMEOUT,
                             promoted=True)
            Job.objects.filter(id__in=[j.id for j in chosen]).update(
                priority=fairness.PROMOTED_PRIORITY, publications=F("publications") + 1)
        promoted += len(chosen)
        logger.info("lane %s: %d standard job(s) promoted (standard share %d of %d starts, "
                    "overdue: %s)", lane.name, len(chosen), starts.get(standard, 0),
                    sum(starts.values()), overdue)
    return promoted


#: A started job silent for its lane's hard time limit plus this is lost.
REAP_GRACE = dt.timedelta(minutes=2)


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
    for lane in topology.LANES:
        cutoff = now - dt.timedelta(seconds=lane.time_limit) - REAP_GRACE
        with transaction.atomic():
            lost = list(Job.objects.select_for_update(skip_locked=True, of=("self",))
                        .select_related("tenant")
                        .filter(status=Job.Status.STARTED, lane=lane.name, started_at__lt=cutoff)
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
                           lane.name, len(lost), requeued, dead)
    return requeued, dead


def job_reclaim_unconfirmed(*, now: dt.datetime | None = None) -> int:
    """Set back to unpublished the still-queued jobs of ``PendingConfirm`` rows
    older than ``SWITCHYARD_BULK_CONFIRM_GRACE`` (their submitter died before
    hearing the broker), so the dispatcher publishes them; return how many.
    Rows are stamped on the platform's clock, and aged on it here."""
    now = now or platform_now()
    horizon = now - dt.timedelta(seconds=settings.SWITCHYARD_BULK_CONFIRM_GRACE)
    reclaimed = 0
    with transaction.atomic():
        stale = list(PendingConfirm.objects.select_for_update(skip_locked=True)
                     .filter(created_at__lte=horizon)[:20])
        for row in stale:
            for start in range(0, len(row.job_ids), 5000):  # bounded query parameters
                reclaimed += Job.objects.filter(
                    id__in=row.job_ids[start:start + 5000], status=Job.Status.QUEUED,
                    published_at__isnull=False,
                ).update(published_at=None)
        PendingConfirm.objects.filter(id__in=[row.id for row in stale]).delete()
    if reclaimed:
        logger.warning("%d job(s) of an interrupted bulk submission set to be published again",
                       reclaimed)
    return reclaimed

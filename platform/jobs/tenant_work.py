"""A tenant's waiting work, paused, resumed or cancelled by an operator in one go.

Run by operators (``manage.py tenant_work``, the tenant admin's actions); the worker
asks ``job_hold_paused`` about a delivery of a paused tenant's job (``jobs.task``).

**Pausing** a tenant (``Tenant.paused_at``) holds all its waiting work in the job table:

* nothing more of it is published: not by the web or the bulk path (its window is
  none, ``jobs.fairness.must_hold``), not by the dispatcher nor a window refill
  (``jobs.dispatch`` skips paused tenants, and reads the pause again under the rows'
  locks), so neither a retry's nor a lost run's next publication; not a released
  workflow step nor a link's follow-up (``jobs.publishing.publish_or_defer``);
* what is in the broker is taken back: its jobs are set unpublished with a higher
  publication number, so the queued copies are stale and acknowledged unrun. A copy
  published while the pause commits is caught by the worker: a paused tenant's
  waiting job does not start, its delivery is acknowledged unrun and the job set back
  to unpublished. Nothing is lost: all of it is published again on resume;
* what already runs finishes, and its outcome is recorded as usual;
* new submissions are accepted (``202``) and held: the answer says ``"paused": true``.

**Resuming** clears the pause: the dispatcher publishes the held work on its next pass,
under the usual fair-share windows (``jobs.fairness``).

**Cancelling** ends what has not started (``queued``, ``retrying``, a workflow's
``blocked`` steps), optionally of one lane, one task, or submitted before some time: a
cancelled job never runs (a copy in the broker is acknowledged unrun). A workflow step
is cancelled as ``POST /api/v1/jobs/{id}/cancel`` does it (``jobs.workflows``): under
its workflow's row lock, taken first, and counted by the workflow, whose
``on_failure`` rule may cancel steps downstream of it too (reported apart).
"""
from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Count, F, Q, QuerySet

from jobs.models import Job, Workflow
from jobs.signals import job_events_for
from jobs.workflows import steps_ended
from switchyard.clock import platform_now
from tenants.models import Tenant

logger = logging.getLogger(__name__)

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def cancel_scope(*, lane: str | None, task: str | None, older_than: str | None) -> str:
    """What a cancel's filters select, as an operator reads it (`` (lane slow, task
    media.thumbnail, submitted more than 2h ago)``), or "" for everything."""
    parts = [part for part in (f"lane {lane}" if lane else "", f"task {task}" if task else "",
                               f"submitted more than {older_than} ago" if older_than else "")
             if part]
    return f" ({', '.join(parts)})" if parts else ""


def parse_age(text: str) -> dt.timedelta:
    """``90``, ``90s``, ``30m``, ``2h``, ``1d`` as a duration; ``ValueError`` saying what
    is wrong otherwise (an operator's ``--older-than``, the admin's field)."""
    match = _AGE.match(text.strip())
    if not match:
        raise ValueError(f"older than {text!r}: give a duration like 90s, 30m, 2h or 1d")
    return dt.timedelta(seconds=float(match[1]) * _UNIT[match[2]])

#: Jobs cancelled per UPDATE: bounded query parameters and short row locks.
CANCEL_CHUNK = 2000
#: What a job cancelled this way says in its ``error``.
CANCEL_REASON = "cancelled by an operator with the rest of its tenant's waiting work"


# -- pause and resume -------------------------------------------------------------------

@dataclass(frozen=True)
class PauseOutcome:
    tenant: Tenant
    was_paused: bool  # it already was (the pause kept its first time)
    taken_back: int  # jobs whose message was in the broker, now unpublished
    held: int  # waiting jobs it now holds in the table (taken back ones included)
    running: int = 0  # its started jobs, which finish


@dataclass(frozen=True)
class ResumeOutcome:
    tenant: Tenant
    was_paused: bool
    to_publish: int  # held jobs the dispatcher now publishes (scheduled ones when due)


def _waiting(tenant: Tenant) -> QuerySet:
    return Job.objects.filter(tenant=tenant, status__in=Job.WAITING)


def tenant_work_pause(*, tenant: Tenant, reason: str = "",
                      dry_run: bool = False) -> PauseOutcome:
    """Pause ``tenant``'s waiting work (see the module's docstring); idempotent.
    ``dry_run`` only counts what it would hold and take back."""
    running = Job.objects.filter(tenant=tenant, status=Job.Status.STARTED).count()
    if dry_run:
        return PauseOutcome(tenant=tenant, was_paused=tenant.paused_at is not None,
                            taken_back=_waiting(tenant).filter(published_at__isnull=False)
                            .count(), held=_waiting(tenant).count(), running=running)
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(id=tenant.id)
        was_paused = locked.paused_at is not None
        if not was_paused:
            locked.paused_at = platform_now()
        locked.pause_reason = (reason or locked.pause_reason)[:200]
        locked.save(update_fields=["paused_at", "pause_reason"])
        # A new publication number makes every copy in the broker stale (jobs.task).
        taken_back = _waiting(locked).filter(published_at__isnull=False).update(
            published_at=None, publications=F("publications") + 1)
    held = _waiting(locked).count()
    logger.warning("tenant %s paused: %d job(s) taken back from the broker, %d held",
                   locked.name, taken_back, held)
    return PauseOutcome(tenant=locked, was_paused=was_paused, taken_back=taken_back,
                        held=held, running=running)


def tenant_work_resume(*, tenant: Tenant, dry_run: bool = False) -> ResumeOutcome:
    """Resume ``tenant``'s work: the dispatcher publishes what it held; idempotent.
    ``dry_run`` only counts what it would publish."""
    if dry_run:
        return ResumeOutcome(tenant=tenant, was_paused=tenant.paused_at is not None,
                             to_publish=_waiting(tenant).filter(published_at__isnull=True)
                             .count())
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(id=tenant.id)
        was_paused = locked.paused_at is not None
        locked.paused_at, locked.pause_reason = None, ""
        locked.save(update_fields=["paused_at", "pause_reason"])
    to_publish = _waiting(locked).filter(published_at__isnull=True).count()
    logger.warning("tenant %s resumed: %d held job(s) for the dispatcher to publish",
                   locked.name, to_publish)
    return ResumeOutcome(tenant=locked, was_paused=was_paused, to_publish=to_publish)


def job_hold_paused(*, delivered: QuerySet, job: Job) -> bool:
    """The worker's side of a pause, for a delivery that did not start its job: if the
    job waits and its tenant is paused, set it back to unpublished (published again
    on resume) and say so: True, the delivery is acknowledged unrun. ``delivered`` is
    the job as this delivery may run it (status, publication number); False when it
    could not have run anyway (a stale copy) or the tenant is not paused."""
    if job.tenant is None or job.tenant.paused_at is None:
        return False
    if not delivered.filter(status__in=Job.WAITING).update(published_at=None):
        return False
    logger.info("job %s: its tenant %s is paused; acknowledged unrun, published again on "
                "resume", job.id, job.tenant_name)
    return True


# -- what a tenant has waiting ----------------------------------------------------------

@dataclass(frozen=True)
class LaneWork:
    lane: str
    in_broker: int  # published, not started
    unpublished: int  # held (a pause, a full window) or scheduled (countdown, backoff)
    blocked: int  # workflow steps waiting for others
    started: int


def tenant_work_summary(*, tenant: Tenant) -> list[LaneWork]:
    """``tenant``'s unfinished work per lane, from the job table (one grouped read)."""
    rows = (Job.objects.filter(tenant=tenant, status__in=(*Job.NOT_STARTED,
                                                          Job.Status.STARTED))
            .order_by().values("lane").annotate(
                in_broker=Count("id", filter=Q(status__in=Job.WAITING,
                                               published_at__isnull=False)),
                unpublished=Count("id", filter=Q(status__in=Job.WAITING,
                                                 published_at__isnull=True)),
                blocked=Count("id", filter=Q(status=Job.Status.BLOCKED)),
                started=Count("id", filter=Q(status=Job.Status.STARTED))))
    return [LaneWork(**row) for row in sorted(rows, key=lambda r: r["lane"])]


# -- cancel -----------------------------------------------------------------------------

@dataclass
class CancelCount:
    """What ``tenant_work_cancel`` cancelled (or, in a dry run, would cancel)."""

    jobs: int = 0  # all of them, workflow steps included
    steps: int = 0  # of them, steps of workflows
    workflows: int = 0  # the workflows those steps belong to
    cascaded: int = 0  # further steps their workflows cancelled (on_failure: fail_workflow)


def cancellable(*, tenant: Tenant, lane: str | None = None, task: str | None = None,
                older_than: dt.timedelta | None = None,
                now: dt.datetime | None = None) -> QuerySet:
    """``tenant``'s jobs not started and submitted by ``now`` (minus ``older_than``),
    of ``lane`` and ``task`` if given."""
    now = now or platform_now()
    jobs = Job.objects.filter(tenant=tenant, status__in=Job.NOT_STARTED,
                              submitted_at__lte=now - (older_than or dt.timedelta()))
    if lane:
        jobs = jobs.filter(lane=lane)
    if task:
        jobs = jobs.filter(task=task)
    return jobs


def tenant_work_cancel(*, tenant: Tenant, lane: str | None = None, task: str | None = None,
                       older_than: dt.timedelta | None = None,
                       dry_run: bool = False) -> CancelCount:
    """Cancel ``tenant``'s work not yet started (of ``lane``, ``task``, submitted more
    than ``older_than`` ago, when given); ``dry_run`` only counts it. Jobs submitted
    while this runs are not touched; a job that starts meanwhile runs and is not
    counted."""
    selected = cancellable(tenant=tenant, lane=lane, task=task, older_than=older_than)
    steps = selected.filter(workflow__isnull=False)
    if dry_run:
        return CancelCount(jobs=selected.count(), steps=steps.count(),
                           workflows=steps.order_by().values("workflow_id").distinct().count())
    count = CancelCount()
    count.jobs = _cancel_plain(selected.filter(workflow__isnull=True))
    for workflow_id in steps.order_by().values_list("workflow_id", flat=True).distinct():
        cancelled, cascaded = _cancel_steps(workflow_id, selected)
        if cancelled:
            count.jobs += cancelled
            count.steps += cancelled
            count.workflows += 1
            count.cascaded += cascaded
    logger.warning("tenant %s: %d waiting job(s) cancelled by an operator (%d workflow "
                   "step(s), %d more cancelled by their workflows)", tenant.name, count.jobs,
                   count.steps, count.cascaded)
    return count


def _cancel_plain(jobs: QuerySet) -> int:
    """Cancel ``jobs`` (none a workflow step), a chunk per transaction, under the rows'
    locks (so what is counted is what was cancelled; the dispatcher skips locked rows)."""
    cancelled = 0
    while True:
        with transaction.atomic():
            chunk = list(jobs.select_for_update().only("id", "lane", "tier", "task")
                         [:CANCEL_CHUNK])
            if not chunk:
                return cancelled
            done = Job.objects.filter(id__in=[j.id for j in chunk],
                                      status__in=Job.NOT_STARTED).update(
                status=Job.Status.CANCELLED, finished_at=platform_now(), error=CANCEL_REASON)
            transaction.on_commit(lambda chunk=chunk: job_events_for("cancelled", chunk))
        cancelled += done


def _cancel_steps(workflow_id, selected: QuerySet) -> tuple[int, int]:
    """Cancel the ``selected`` steps of one workflow and have it count them, in one
    transaction: the workflow's row lock first, then the steps' rows (the lock order of
    ``jobs.workflows``). Returns ``(cancelled, cascaded)``."""
    with transaction.atomic():
        if Workflow.objects.select_for_update().filter(id=workflow_id).first() is None:
            return 0, 0
        in_workflow = Job.objects.filter(workflow_id=workflow_id, status__in=Job.NOT_STARTED)
        before = in_workflow.count()
        jobs = list(selected.filter(workflow_id=workflow_id).select_for_update()
                    .only("id", "lane", "tier", "task", "workflow_id"))
        if not jobs:
            return 0, 0
        Job.objects.filter(id__in=[j.id for j in jobs], status__in=Job.NOT_STARTED).update(
            status=Job.Status.CANCELLED, finished_at=platform_now(), error=CANCEL_REASON)
        steps_ended([(job.id, workflow_id, Job.Status.CANCELLED) for job in jobs])
        cascaded = before - len(jobs) - in_workflow.count()
        transaction.on_commit(lambda: job_events_for("cancelled", jobs))
    return len(jobs), max(0, cascaded)

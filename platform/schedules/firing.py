"""The dispatcher's schedule pass: fire each fire time of each due schedule once.

The web creates, changes, pauses, resumes and triggers schedules
(``schedules.api``); the dispatcher (``manage.py dispatch``) runs
``schedule_fire_due`` every ``--schedule-every`` seconds. A fire only writes rows
(its ``ScheduleFire``, its job with ``run_at`` = the fire time plus jitter, and the
schedule's next fire time) in one transaction; the dispatcher's publish pass
publishes the job like any other job that is due, so a fire never waits on the
broker and a broker outage delays jobs without losing fire times.

Exactly once, whatever runs the pass:

* each due schedule is taken under its row lock (``SKIP LOCKED``: a second
  dispatcher moves on to other schedules), and its fire time is recorded in a
  ``ScheduleFire`` row whose ``(schedule, fire_at)`` is unique, in the same
  transaction as the job and the move of ``next_fire_at``: a duplicate is
  refused by the database and rolled back as a whole;
* a dispatcher killed mid-fire commits nothing, so ``next_fire_at`` still names
  the fire time and the next pass (its restart, or another dispatcher) fires it.

A fire time more than ``SWITCHYARD_SCHEDULE_GRACE`` seconds old when a pass sees it
was missed (no dispatcher ran): with ``catch_up=skip`` every missed time is recorded
skipped (reason ``missed``); with ``run_once`` the latest of them fires one job and
the others are recorded skipped. Of several due times only the latest can fire:
the earlier ones are always recorded skipped ``missed``.
"""
from __future__ import annotations

import datetime as dt
import functools
import logging
import time
from dataclasses import dataclass

from django.db import IntegrityError, transaction

from jobs.catalogue import InvalidParams, catalogue_task, unknown_task_message, validate_params
from jobs.errors import InvalidSubmission, QuotaExceeded, UnknownTask
from jobs.models import Job
from jobs.options import apply_run_options
from jobs.quotas import check_quotas
from jobs.signals import job_events_for
from jobs.submission import new_job
from schedules.models import Schedule, ScheduleFire
from schedules.rules import (
    grace,
    jitter_offset,
    last_fire_at_or_before,
    next_fire_after,
    options_of,
)
from schedules.signals import schedule_event_send
from switchyard.clock import platform_now

logger = logging.getLogger(__name__)

#: Most missed fire times recorded one by one for one schedule in one pass; beyond
#: them the schedule jumps to its next fire time after now.
MAX_MISSED_RECORDS = 1000
#: What a job still counts as running for ``overlap``.
RUNNING = (*Job.NOT_STARTED, Job.Status.STARTED)


class Reason:
    """Why a fire time gave no job (``ScheduleFire.reason``), defined once."""

    MISSED = "missed"
    OVERLAP = "overlap"
    QUOTA = "quota"
    INVALID = "invalid"


@dataclass
class FirePass:
    """What one ``schedule_fire_due`` pass did."""

    fired: int = 0
    skipped: int = 0
    buffered: int = 0


def schedule_fire_due(*, now: dt.datetime | None = None, limit: int = 200,
                      budget: float = 5.0) -> FirePass:
    """Fire what is due: each unpaused schedule whose ``next_fire_at`` has come, and
    each buffered fire whose schedule's last run ended. Safe in several dispatchers
    at once (see the module). ``now`` is the platform's clock unless given (tests).

    Schedules are taken ``limit`` at a time, soonest first, until none is left or
    ``budget`` seconds have passed (the dispatcher's other passes then get their
    turn, and the next pass goes on): thousands of schedules on the same minute fire
    in one pass without holding up the publishing of what they fired."""
    now = now or platform_now()
    result = FirePass()
    deadline = time.monotonic() + budget
    tried: set = set()
    buffered = set(ScheduleFire.objects.filter(outcome=ScheduleFire.Outcome.BUFFERED)
                   .values_list("schedule_id", flat=True)[:limit])
    while True:
        due = list(Schedule.objects.filter(paused=False, next_fire_at__lte=now)
                   .exclude(id__in=tried).order_by("next_fire_at")
                   .values_list("id", flat=True)[:limit])
        batch = [*due, *(buffered - set(due) - tried)]
        if not batch:
            break
        for schedule_id in batch:
            tried.add(schedule_id)
            _fire_schedule(schedule_id, now, result)
        if len(due) < limit or time.monotonic() > deadline:
            break
    return result


def schedule_seconds_to_next_fire(*, now: dt.datetime | None = None) -> float | None:
    """Seconds from ``now`` to the soonest fire time of any unpaused schedule (0 if one
    is due already), None when there is none: the dispatcher wakes for it rather than
    at its next ``--schedule-every`` pass. One read of the ``schedules_due`` index."""
    soonest = (Schedule.objects.filter(paused=False, next_fire_at__isnull=False)
               .order_by("next_fire_at").values_list("next_fire_at", flat=True).first())
    if soonest is None:
        return None
    return max(0.0, (soonest - (now or platform_now())).total_seconds())


def _fire_schedule(schedule_id, now: dt.datetime, result: FirePass) -> None:
    """Fire one schedule under its row lock, in one transaction; add what it did to
    ``result``. A failure is logged and leaves that schedule as it was (its fire time
    stays due); the other schedules go on."""
    outcome = FirePass()
    try:
        with transaction.atomic():
            schedule = (Schedule.objects.select_for_update(skip_locked=True, of=("self",))
                        .select_related("tenant").filter(id=schedule_id).first())
            if schedule is None:  # another dispatcher has it, or it was deleted
                return
            _release_buffered(schedule, now, outcome)
            if not schedule.paused and schedule.next_fire_at and schedule.next_fire_at <= now:
                _fire(schedule, now, outcome)
    except IntegrityError:
        # Only a fire time recorded already (another scheduler that did not take the
        # row lock, e.g. on SQLite) gets here: nothing of this one was kept.
        logger.warning("schedule %s: fire time already recorded; left as it was", schedule_id)
        return
    except Exception:
        logger.exception("schedule %s: could not fire; its fire time stays due", schedule_id)
        return
    result.fired += outcome.fired
    result.skipped += outcome.skipped
    result.buffered += outcome.buffered


def schedule_observe_starts(*, limit: int = 500) -> int:
    """Record each fired job's lateness (fire time to its first start, from the job
    table) on its fire record, once, and tell observers (the lateness histogram);
    fires whose job ended without starting, or is gone, are only marked. Returns how
    many fire records it marked."""
    unobserved = ScheduleFire.objects.filter(outcome=ScheduleFire.Outcome.FIRED, observed=False)
    if not unobserved.exists():
        return 0  # no transaction (on SQLite each one takes the write lock)
    with transaction.atomic():
        fires = list(unobserved.select_for_update(skip_locked=True, of=("self",))
                     .select_related("job").order_by("id")[:limit])
        seen = []
        for fire in fires:
            job = fire.job
            if job is not None and job.started_at is not None:
                fire.lateness = max(0.0, (job.started_at - fire.fire_at).total_seconds())
            elif job is not None and job.status not in Job.FINISHED:
                continue  # not started yet
            fire.observed = True
            seen.append(fire)
        ScheduleFire.objects.bulk_update(seen, ["lateness", "observed"])
        for fire in seen:
            if fire.lateness is not None:
                transaction.on_commit(functools.partial(
                    schedule_event_send, "started", task=fire.job.task, lane=fire.job.lane,
                    tier=fire.job.tier, lateness=fire.lateness))
    return len(seen)


def _fire(schedule: Schedule, now: dt.datetime, outcome: FirePass) -> None:
    """Record every due fire time of ``schedule`` (locked) and move it to the next."""
    due: list[dt.datetime] = []
    instant = schedule.next_fire_at
    while instant is not None and instant <= now and len(due) < MAX_MISSED_RECORDS:
        due.append(instant)
        instant = next_fire_after(schedule, instant)
    if instant is not None and instant <= now:
        # Stopped for more than MAX_MISSED_RECORDS fire times: those between the first
        # MAX_MISSED_RECORDS and the latest are not recorded one by one; the latest is
        # (it is the one catch_up may run), and the schedule goes on after now.
        latest = last_fire_at_or_before(schedule, now)
        logger.warning("schedule %s: more than %d fire times missed; those between %s and "
                       "%s are not recorded", schedule.id, MAX_MISSED_RECORDS, due[-1], latest)
        if latest is not None and latest > due[-1]:
            due.append(latest)
        instant = next_fire_after(schedule, now)
    latest = due[-1]
    on_time = now - latest <= grace()
    runs = on_time or schedule.catch_up == Schedule.CatchUp.RUN_ONCE
    for missed in due[:-1] if runs else due:
        detail = "no dispatcher fired it in time"
        if runs and not on_time:
            detail += f"; the run of {latest.isoformat()} stands for it"
        _skip(schedule, missed, now, Reason.MISSED, detail, outcome)
    if runs:
        _fire_one(schedule, latest, now, outcome)
    schedule.next_fire_at = instant
    schedule.save(update_fields=["next_fire_at"])


def _fire_one(schedule: Schedule, fire_at: dt.datetime, now: dt.datetime,
              outcome: FirePass) -> None:
    """One fire time that may run: overlap, then the job (quota and task permitting)."""
    if schedule.overlap != Schedule.Overlap.ALLOW:
        running = _running_job(schedule)
        if running is not None:
            if schedule.overlap == Schedule.Overlap.SKIP or \
                    schedule.fires.filter(outcome=ScheduleFire.Outcome.BUFFERED).exists():
                why = "one fire already waits for it" \
                    if schedule.overlap == Schedule.Overlap.BUFFER_ONE else ""
                _skip(schedule, fire_at, now, Reason.OVERLAP,
                      f"job {running.id} is still {running.status}" + (f"; {why}" if why else ""),
                      outcome)
                return
            ScheduleFire.objects.create(schedule=schedule, fire_at=fire_at,
                                        outcome=ScheduleFire.Outcome.BUFFERED,
                                        detail=f"waits for job {running.id}", recorded_at=now)
            outcome.buffered += 1
            return
    _submit(schedule, fire_at, now, outcome)


def _release_buffered(schedule: Schedule, now: dt.datetime, outcome: FirePass) -> None:
    """Submit the job of a buffered fire once the schedule has no run unfinished."""
    fire = schedule.fires.filter(outcome=ScheduleFire.Outcome.BUFFERED).first()
    if fire is None or _running_job(schedule) is not None:
        return
    if schedule.paused:
        return
    fire.delete()  # recorded again, with its outcome, under the same fire time
    _submit(schedule, fire.fire_at, now, outcome)


def _submit(schedule: Schedule, fire_at: dt.datetime, now: dt.datetime,
            outcome: FirePass) -> None:
    try:
        with transaction.atomic():  # a refused job leaves the fire's skip to record
            job = schedule_job(schedule, fire_at, now, jitter=True)
    except QuotaExceeded as exc:
        _skip(schedule, fire_at, now, Reason.QUOTA, str(exc), outcome)
        return
    except (UnknownTask, InvalidParams, InvalidSubmission) as exc:
        _skip(schedule, fire_at, now, Reason.INVALID, str(exc), outcome)
        return
    ScheduleFire.objects.create(schedule=schedule, fire_at=fire_at, job=job,
                                outcome=ScheduleFire.Outcome.FIRED, recorded_at=now)
    outcome.fired += 1
    transaction.on_commit(lambda: schedule_event_send("fired", task=schedule.task))


def _skip(schedule: Schedule, fire_at: dt.datetime, now: dt.datetime, reason: str,
          detail: str, outcome: FirePass) -> None:
    ScheduleFire.objects.create(schedule=schedule, fire_at=fire_at, reason=reason,
                                outcome=ScheduleFire.Outcome.SKIPPED, detail=detail,
                                recorded_at=now)
    outcome.skipped += 1
    transaction.on_commit(lambda: schedule_event_send("skipped", task=schedule.task,
                                                      reason=reason))


def _running_job(schedule: Schedule) -> Job | None:
    """The schedule's latest job that has not finished, if any."""
    return (Job.objects.filter(schedule_fire__schedule=schedule, status__in=RUNNING)
            .only("id", "status").order_by("-submitted_at").first())


def schedule_job(schedule: Schedule, fire_at: dt.datetime, now: dt.datetime, *,
             jitter: bool) -> Job:
    """Write the job of one fire time, due at ``fire_at`` (plus jitter): the
    dispatcher's publish pass publishes it. Raises ``QuotaExceeded``, ``UnknownTask``,
    ``InvalidParams``."""
    tenant = schedule.tenant
    if not tenant.is_active:  # the API refuses its requests; its schedules stop too
        raise InvalidSubmission("tenant", f"tenant {tenant.name} is inactive")
    entry = catalogue_task(schedule.task)
    if entry is None:  # the task left this deployment after the schedule was made
        raise UnknownTask(unknown_task_message(schedule.task))
    validate_params(entry, schedule.params, tenant=tenant)
    options = options_of(schedule)
    job = new_job(tenant=tenant, task=schedule.task, params=schedule.params,
                  priority=options.priority, now=now)
    job.run_at = fire_at + (jitter_offset(schedule, fire_at) if jitter else dt.timedelta(0))
    if options.expires is not None:
        job.expires_at = max(job.run_at, now) + dt.timedelta(seconds=float(options.expires))
    apply_run_options(job, options)
    check_quotas(tenant, now)
    job.save(force_insert=True)
    transaction.on_commit(lambda: job_events_for("submitted", [job]))
    return job

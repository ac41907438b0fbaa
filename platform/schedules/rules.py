"""What a schedule's rule says: its fire times (UTC) within start_at / end_at, each
job's jitter, its options as stored, and the checks a schedule must pass.

Used by the web (``schedules.services``, ``schedules.api``: validation and the next
fire times shown) and the dispatcher (``schedules.firing``). Cron rules are read by
``schedules.cron``; ``every`` rules are plain UTC arithmetic, untouched by DST.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Mapping
from typing import Any

from django.conf import settings

from jobs.catalogue import InvalidParams, catalogue_task, unknown_task_message, validate_params
from jobs.errors import InvalidSubmission
from jobs.options import MAX_DELAY, Link, RetryPolicy, SubmitOptions
from schedules import cron as cron_rules
from schedules.models import Schedule
from tenants.models import Tenant

#: Shortest ``every`` accepted, in seconds.
MIN_EVERY = 10
#: Longest ``jitter`` accepted, in seconds.
MAX_JITTER = 3600


def grace() -> dt.timedelta:
    """How late a fire time may be seen and still count as on time."""
    return dt.timedelta(seconds=settings.SWITCHYARD_SCHEDULE_GRACE)


def next_fire_after(schedule: Schedule, after: dt.datetime) -> dt.datetime | None:
    """The schedule's first fire time strictly after ``after`` (UTC), within its
    ``start_at`` / ``end_at``; None if there is none."""
    if schedule.start_at and after < schedule.start_at:
        after = schedule.start_at - dt.timedelta(microseconds=1)
    if schedule.cron:
        instant = cron_rules.next_after(cron_rules.parse(schedule.cron),
                                        cron_rules.zone(schedule.timezone), after)
    else:
        # Fires at anchor + k * every (k >= 0): from start_at, else one period after
        # the schedule was created. Plain UTC arithmetic, so DST does not apply.
        every = dt.timedelta(seconds=schedule.every)
        anchor = schedule.start_at or schedule.created_at + every
        if after < anchor:
            instant = anchor
        else:
            instant = anchor + ((after - anchor) // every + 1) * every
    if instant is not None and schedule.end_at and instant > schedule.end_at:
        return None
    return instant


def last_fire_at_or_before(schedule: Schedule, instant: dt.datetime) -> dt.datetime | None:
    """The schedule's last fire time at or before ``instant`` (not before its
    ``start_at``, nor after its ``end_at``); None if there is none."""
    if schedule.end_at and instant > schedule.end_at:
        instant = schedule.end_at
    if schedule.cron:
        found = cron_rules.last_at_or_before(cron_rules.parse(schedule.cron),
                                             cron_rules.zone(schedule.timezone), instant)
    else:
        every = dt.timedelta(seconds=schedule.every)
        anchor = schedule.start_at or schedule.created_at + every
        found = None if instant < anchor else anchor + ((instant - anchor) // every) * every
    if found is not None and schedule.start_at and found < schedule.start_at:
        return None
    return found


def fire_times(schedule: Schedule, *, after: dt.datetime, count: int = 5) -> list[dt.datetime]:
    """The schedule's next ``count`` fire times after ``after`` (fewer if it ends)."""
    times: list[dt.datetime] = []
    instant = after
    while len(times) < count:
        instant = next_fire_after(schedule, instant)
        if instant is None:
            break
        times.append(instant)
    return times


def jitter_offset(schedule: Schedule, fire_at: dt.datetime) -> dt.timedelta:
    """The delay (0..jitter seconds) of this fire time's job: drawn from the schedule
    and the fire time, so a fire retried after a crash gets the same run time."""
    if not schedule.jitter:
        return dt.timedelta(0)
    digest = hashlib.sha256(f"{schedule.id}:{fire_at.isoformat()}".encode()).digest()
    return dt.timedelta(seconds=int.from_bytes(digest[:8], "big") % (schedule.jitter + 1))


def options_of(schedule: Schedule) -> SubmitOptions:
    """The schedule's stored options (``options_stored``) as ``SubmitOptions``."""
    raw = dict(schedule.options or {})
    if raw.get("retry_policy"):
        raw["retry_policy"] = RetryPolicy(**raw["retry_policy"])
    for name in ("link", "link_error"):
        if raw.get(name):
            raw[name] = Link(**raw[name])
    return SubmitOptions(**raw)


def options_stored(options: SubmitOptions) -> dict[str, Any]:
    """``options`` as stored on a schedule (JSON); ``InvalidSubmission`` for an option
    a schedule cannot take: its fire time says when each job runs."""
    if options.countdown is not None or options.eta is not None:
        field = "options.countdown" if options.countdown is not None else "options.eta"
        raise InvalidSubmission(field, "a schedule's fire times say when its jobs run; "
                                "use jitter to spread them")
    if isinstance(options.expires, dt.datetime):
        raise InvalidSubmission("options.expires", "a schedule's jobs expire seconds after "
                                "their run time: give a number of seconds")
    if options.expires is not None and not 0 < options.expires <= MAX_DELAY.total_seconds():
        raise InvalidSubmission("options.expires", "seconds must be between 0 and "
                                f"{int(MAX_DELAY.total_seconds())}")
    return {name: value for name, value in dataclasses.asdict(options).items()
            if value is not None}


def schedule_check(*, task: str, params: Mapping[str, Any], cron: str, timezone: str,
                   every: int | None, jitter: int, start_at: dt.datetime | None,
                   end_at: dt.datetime | None, tenant: Tenant | None = None) -> None:
    """``InvalidSubmission`` naming the field if these cannot make a schedule, or if
    the job API would refuse the task or its params."""
    entry = catalogue_task(task)
    if entry is None:
        raise InvalidSubmission("task", unknown_task_message(task))
    try:
        validate_params(entry, dict(params), tenant=tenant)
    except InvalidParams as exc:
        raise InvalidSubmission(exc.field, exc.message) from None
    if bool(cron) == (every is not None):
        raise InvalidSubmission("cron" if not cron else "every",
                                "give either cron (with timezone) or every, not both")
    try:  # also with every, where it is unused: a wrong name is still a mistake
        cron_rules.zone(timezone)
    except cron_rules.InvalidCron as exc:
        raise InvalidSubmission("timezone", str(exc)) from None
    if cron:
        try:
            rule = cron_rules.parse(cron)
        except cron_rules.InvalidCron as exc:
            raise InvalidSubmission("cron", str(exc)) from None
        if cron_rules.next_after(rule, cron_rules.zone(timezone),
                                 start_at or dt.datetime.now(dt.UTC)) is None:
            raise InvalidSubmission("cron", f"{cron!r} never fires (no such day)")
    elif every < MIN_EVERY:
        raise InvalidSubmission("every", f"at least {MIN_EVERY} seconds")
    if not 0 <= jitter <= MAX_JITTER:
        raise InvalidSubmission("jitter", f"between 0 and {MAX_JITTER} seconds")
    if start_at and end_at and end_at <= start_at:
        raise InvalidSubmission("end_at", "must be after start_at")

"""Schedules' services: create, change, pause, resume, trigger, delete.

Run by the web (``schedules.api``) and the ``manage.py schedules`` tool. Keyword-only;
``now`` defaults to the platform's clock (``switchyard.clock.platform_now``).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from django.db import transaction

from jobs.catalogue import InvalidParams
from jobs.errors import InvalidSubmission, UnknownTask
from jobs.options import SubmitOptions
from schedules.firing import schedule_job
from schedules.models import Schedule, ScheduleFire
from schedules.rules import next_fire_after, options_stored, schedule_check
from schedules.signals import schedule_event_send
from switchyard.clock import platform_now
from tenants.models import Tenant

#: The fields ``schedule_create`` takes beside tenant, task and params, with defaults.
SCHEDULE_FIELDS: dict[str, Any] = {
    "name": "", "options": None, "cron": "", "timezone": "UTC", "every": None,
    "overlap": Schedule.Overlap.SKIP, "catch_up": Schedule.CatchUp.SKIP, "jitter": 0,
    "start_at": None, "end_at": None, "paused": False,
}


def schedule_create(*, tenant: Tenant, task: str, params: Mapping[str, Any] | None = None,
                    now: dt.datetime | None = None, **fields: Any) -> Schedule:
    """Record a schedule of ``task`` for ``tenant`` and compute its first fire time.

    ``fields`` are those of ``SCHEDULE_FIELDS``; ``options`` is a ``SubmitOptions``
    (priority, expires in seconds, retry_policy, link, link_error). Raises
    ``InvalidSubmission`` naming the field."""
    unknown = set(fields) - set(SCHEDULE_FIELDS)
    if unknown:
        raise TypeError(f"unknown schedule fields {sorted(unknown)}")
    values = {**SCHEDULE_FIELDS, **fields}
    options = values.pop("options") or SubmitOptions()
    params = dict(params or {})
    schedule_check(task=task, params=params, cron=values["cron"], timezone=values["timezone"],
                   every=values["every"], jitter=values["jitter"], start_at=values["start_at"],
                   end_at=values["end_at"], tenant=tenant)
    now = now or platform_now()
    schedule = Schedule(tenant=tenant, task=task, params=params,
                        options=options_stored(options), created_at=now, updated_at=now,
                        **values)
    schedule.next_fire_at = next_fire_after(schedule, now)
    schedule.save(force_insert=True)
    return schedule


def schedule_update(*, schedule: Schedule, now: dt.datetime | None = None,
                    **changes: Any) -> Schedule:
    """Change a schedule (``changes`` among task, params and ``SCHEDULE_FIELDS``). A
    change of its rule (cron, timezone, every, start_at, end_at) moves its next fire
    time to the first one after now under the new rule."""
    unknown = set(changes) - set(SCHEDULE_FIELDS) - {"task", "params"}
    if unknown:
        raise TypeError(f"unknown schedule fields {sorted(unknown)}")
    now = now or platform_now()
    with transaction.atomic():
        schedule = Schedule.objects.select_for_update().get(id=schedule.id)
        if "options" in changes:
            changes["options"] = options_stored(changes["options"] or SubmitOptions())
        if "cron" in changes and changes["cron"]:
            changes.setdefault("every", None)
        if changes.get("every") is not None:
            changes.setdefault("cron", "")
        for name, value in changes.items():
            setattr(schedule, name, value)
        schedule_check(task=schedule.task, params=schedule.params, cron=schedule.cron,
                       timezone=schedule.timezone, every=schedule.every,
                       jitter=schedule.jitter, start_at=schedule.start_at,
                       end_at=schedule.end_at, tenant=schedule.tenant)
        if {"cron", "timezone", "every", "start_at", "end_at", "paused"} & set(changes):
            schedule.next_fire_at = next_fire_after(schedule, now)
        schedule.updated_at = now
        schedule.save()
    return schedule


def schedule_pause(*, schedule: Schedule, now: dt.datetime | None = None) -> Schedule:
    """Stop firing: no fire time is recorded while paused."""
    Schedule.objects.filter(id=schedule.id).update(paused=True,
                                                   updated_at=now or platform_now())
    schedule.refresh_from_db()
    return schedule


def schedule_resume(*, schedule: Schedule, now: dt.datetime | None = None) -> Schedule:
    """Fire again from the first fire time after now: the times that passed while it
    was paused are not caught up (it was paused on purpose)."""
    now = now or platform_now()
    with transaction.atomic():
        schedule = Schedule.objects.select_for_update().get(id=schedule.id)
        schedule.paused = False
        schedule.next_fire_at = next_fire_after(schedule, now)
        schedule.updated_at = now
        schedule.save()
    return schedule


def schedule_trigger(*, schedule: Schedule, now: dt.datetime | None = None) -> ScheduleFire:
    """One run now, outside the rule (the next fire time stays as it was), whatever
    ``overlap`` says. Raises ``QuotaExceeded``, ``InvalidSubmission``."""
    now = now or platform_now()
    with transaction.atomic():
        schedule = Schedule.objects.select_related("tenant").get(id=schedule.id)
        try:
            job = schedule_job(schedule, now, now, jitter=False)
        except (UnknownTask, InvalidParams) as exc:
            raise InvalidSubmission("task", str(exc)) from None
        fire = ScheduleFire.objects.create(schedule=schedule, fire_at=now, triggered=True,
                                           outcome=ScheduleFire.Outcome.FIRED, job=job,
                                           recorded_at=now)
    schedule_event_send("fired", task=schedule.task)
    return fire


def schedule_delete(*, schedule: Schedule) -> None:
    """Delete a schedule and its fire records; the jobs it fired stay."""
    schedule.delete()

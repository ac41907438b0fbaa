"""``manage.py schedules list|show|fire|pause|resume``: schedules for the on-call engineer.

Examples::

    python platform/manage.py schedules list --tenant acme
    python platform/manage.py schedules list --overdue
    python platform/manage.py schedules show 5b0c...e1
    python platform/manage.py schedules fire
    python platform/manage.py schedules pause 5b0c...e1
    python platform/manage.py schedules resume 5b0c...e1

``list`` and ``show`` change nothing: ``list`` gives each schedule's rule, state, next
fire time and how overdue it is; ``show`` its next five fire times and its last fire
records (fired, skipped with the reason, buffered) with each job's status and lateness.
``fire`` runs one schedule pass now, as the dispatcher does every second: safe beside
running dispatchers (each fire time gives one job whatever runs the pass). Exit codes:
0 done; 1 not found. Runbook: docs/runbooks/schedule-did-not-fire.md.
"""
from __future__ import annotations

import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from schedules.firing import schedule_fire_due, schedule_observe_starts
from schedules.models import Schedule
from schedules.rules import fire_times
from schedules.selectors import schedule_last_fires
from schedules.services import schedule_pause, schedule_resume
from switchyard.clock import platform_now


class Command(BaseCommand):
    help = "List, inspect, fire, pause or resume tenants' schedules."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        listing = actions.add_parser("list", help="one line per schedule, soonest first")
        listing.add_argument("--tenant", help="only this tenant's")
        listing.add_argument("--overdue", action="store_true",
                             help="only unpaused schedules whose next fire time has passed")
        listing.add_argument("--limit", type=int, default=100)
        listing.add_argument("--json", action="store_true", help="JSON lines")
        show = actions.add_parser("show", help="a schedule, its next fire times, its last fires")
        show.add_argument("schedule_id")
        show.add_argument("--json", action="store_true")
        actions.add_parser("fire", help="one schedule pass now, as the dispatcher runs it")
        for name in ("pause", "resume"):
            action = actions.add_parser(name, help=f"{name} a schedule")
            action.add_argument("schedule_id")

    def handle(self, *args, action: str, **options):
        return getattr(self, f"_{action}")(**options)

    def _list(self, *, tenant: str | None, overdue: bool, limit: int, json: bool = False,
              **_):
        now = platform_now()
        query = Schedule.objects.select_related("tenant").order_by("next_fire_at")
        if tenant:
            query = query.filter(tenant__name=tenant)
        if overdue:
            query = query.filter(paused=False, next_fire_at__lt=now)
        for schedule in query[:limit]:
            late = (now - schedule.next_fire_at).total_seconds() if schedule.next_fire_at \
                else None
            line = {"id": str(schedule.id), "tenant": schedule.tenant.name,
                    "task": schedule.task, "rule": _rule(schedule), "paused": schedule.paused,
                    "next_fire_at": schedule.next_fire_at,
                    "overdue_seconds": round(late) if late and late > 0 else 0}
            state = "paused" if schedule.paused else (
                "ended" if schedule.next_fire_at is None else "active")
            self.stdout.write(_json(line) if json else
                              f"{line['id']}  {line['tenant']:<16} {line['task']:<24} "
                              f"{line['rule']:<32} {state:<6} next {schedule.next_fire_at}"
                              + (f"  OVERDUE {line['overdue_seconds']} s"
                                 if line["overdue_seconds"] and not schedule.paused else ""))

    def _show(self, *, schedule_id: str, json: bool = False, **_):
        schedule = _schedule(schedule_id)
        upcoming = [] if schedule.paused or schedule.next_fire_at is None else [
            schedule.next_fire_at, *fire_times(schedule, after=schedule.next_fire_at, count=4)]
        fires = [{"fire_at": f.fire_at, "outcome": f.outcome, "reason": f.reason,
                  "detail": f.detail, "triggered": f.triggered,
                  "job": str(f.job_id) if f.job_id else None,
                  "job_status": f.job.status if f.job else None, "lateness": f.lateness}
                 for f in schedule_last_fires(schedule=schedule, count=10)]
        summary = {"id": str(schedule.id), "tenant": schedule.tenant.name,
                   "task": schedule.task, "rule": _rule(schedule), "paused": schedule.paused,
                   "overlap": schedule.overlap, "catch_up": schedule.catch_up,
                   "jitter": schedule.jitter, "start_at": schedule.start_at,
                   "end_at": schedule.end_at, "next_fire_times": upcoming}
        if json:
            self.stdout.write(_json({**summary, "last_fires": fires}))
            return
        self.stdout.write(_json(summary))
        for fire in fires:
            why = f" {fire['reason']}: {fire['detail']}" if fire["reason"] else ""
            job = f" job {fire['job']} {fire['job_status']}" if fire["job"] else ""
            late = f" started {fire['lateness']:.1f} s late" if fire["lateness"] is not None \
                else ""
            self.stdout.write(f"  {fire['fire_at']}  {fire['outcome']:<8}{why}{job}{late}"
                              + (" (trigger)" if fire["triggered"] else ""))

    def _fire(self, **_):
        done = schedule_fire_due()
        observed = schedule_observe_starts()
        self.stdout.write(f"{done.fired} fired, {done.skipped} skipped, {done.buffered} "
                          f"buffered; {observed} start(s) observed")

    def _pause(self, *, schedule_id: str, **_):
        schedule = schedule_pause(schedule=_schedule(schedule_id))
        self.stdout.write(f"schedule {schedule.id} paused")

    def _resume(self, *, schedule_id: str, **_):
        schedule = schedule_resume(schedule=_schedule(schedule_id))
        self.stdout.write(f"schedule {schedule.id} resumed; next fire at {schedule.next_fire_at}")


def _rule(schedule: Schedule) -> str:
    return f"{schedule.cron} ({schedule.timezone})" if schedule.cron else \
        f"every {schedule.every} s"


def _schedule(schedule_id: str) -> Schedule:
    try:
        return Schedule.objects.select_related("tenant").get(id=schedule_id)
    except (Schedule.DoesNotExist, ValidationError, ValueError) as exc:
        raise CommandError(f"no schedule {schedule_id}") from exc


def _json(value) -> str:
    return json.dumps(value, default=str, sort_keys=True)

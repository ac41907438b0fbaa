"""``manage.py tenant_work``: pause, resume, cancel or show one tenant's waiting work.

Examples (docs/runbooks/backlog-growing.md)::

    python platform/manage.py tenant_work status acme
    python platform/manage.py tenant_work pause acme --dry-run
    python platform/manage.py tenant_work pause acme --reason "flood on slow"
    python platform/manage.py tenant_work cancel acme --lane slow --older-than 2h --dry-run
    python platform/manage.py tenant_work cancel acme --lane slow --older-than 2h
    python platform/manage.py tenant_work resume acme

``pause`` holds everything of the tenant's that has not started: nothing more is
published, copies already in the broker are acknowledged unrun and their jobs kept,
running jobs finish, new submissions are accepted and held. ``resume`` has the
dispatcher publish all of it again under the usual fair-share rules. ``cancel`` ends
what has not started (workflow steps counted by their workflows). ``--dry-run``, on
each of the three, only counts. See ``jobs.tenant_work``. Exit codes: 0 done; 1 no
such tenant or bad option.
"""
from __future__ import annotations

import datetime as dt

from django.core.management.base import BaseCommand, CommandError

from jobs import tenant_work
from routing import topology
from tenants.selectors import tenant_by_name


def parse_age(text: str) -> dt.timedelta:
    try:
        return tenant_work.parse_age(text)
    except ValueError as exc:
        raise CommandError(f"--{exc}", returncode=1) from None


class Command(BaseCommand):
    help = "Pause, resume, cancel or show a tenant's waiting work (a flood, an incident)."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        status = actions.add_parser("status", help="its unfinished work per lane, and "
                                    "whether it is paused")
        pause = actions.add_parser("pause", help="hold all its waiting work: none published "
                                   "or started until resumed; running jobs finish")
        pause.add_argument("--reason", default="", help="shown in the admin and by status")
        pause.add_argument("--dry-run", action="store_true",
                           help="count what would be held; change nothing")
        resume = actions.add_parser("resume", help="publish its held work again (dispatcher)")
        resume.add_argument("--dry-run", action="store_true",
                            help="count what would be published; change nothing")
        cancel = actions.add_parser("cancel", help="cancel its work not yet started")
        cancel.add_argument("--lane", choices=sorted(topology.LANES_BY_NAME),
                            help="only this lane's jobs")
        cancel.add_argument("--task", help="only jobs of this task (e.g. demo.slow_task)")
        cancel.add_argument("--older-than", type=str, default=None, metavar="AGE",
                            help="only jobs submitted more than AGE ago (90s, 30m, 2h, 1d)")
        cancel.add_argument("--dry-run", action="store_true",
                            help="count what would be cancelled; change nothing")
        for sub in (status, pause, resume, cancel):
            sub.add_argument("tenant_name", metavar="tenant")

    def handle(self, *args, action: str, tenant_name: str, **options):
        tenant = tenant_by_name(name=tenant_name)
        if tenant is None:
            raise CommandError(f"no tenant {tenant_name!r}", returncode=1)
        getattr(self, f"_{action}")(tenant, **options)

    def _status(self, tenant, **_):
        if tenant.paused_at:
            why = f": {tenant.pause_reason}" if tenant.pause_reason else ""
            self.stdout.write(f"{tenant.name}: paused since "
                              f"{tenant.paused_at.isoformat(timespec='seconds')}{why}")
        else:
            self.stdout.write(f"{tenant.name}: not paused")
        self.stdout.write(f"{'lane':<8} {'in broker':>10} {'unpublished':>12} {'blocked':>8} "
                          f"{'started':>8}")
        for row in tenant_work.tenant_work_summary(tenant=tenant):
            self.stdout.write(f"{row.lane:<8} {row.in_broker:>10} {row.unpublished:>12} "
                              f"{row.blocked:>8} {row.started:>8}")

    def _pause(self, tenant, *, reason: str, dry_run: bool, **_):
        if dry_run:
            out = tenant_work.tenant_work_pause(tenant=tenant, dry_run=True)
            already = " (it already is paused)" if out.was_paused else ""
            self.stdout.write(
                f"would pause {tenant.name}{already}: {out.held} waiting job(s) held, "
                f"{out.taken_back} of them taken back from the broker; {out.running} running "
                "job(s) finish; dry run, nothing changed")
            return
        out = tenant_work.tenant_work_pause(tenant=tenant, reason=reason)
        already = " (it already was)" if out.was_paused else ""
        self.stdout.write(
            f"paused {tenant.name}{already}: {out.held} waiting job(s) held, "
            f"{out.taken_back} of them taken back from the broker; running jobs finish; "
            f"new submissions are accepted and held. Resume with "
            f"`python platform/manage.py tenant_work resume {tenant.name}`")

    def _resume(self, tenant, *, dry_run: bool, **_):
        if dry_run:
            out = tenant_work.tenant_work_resume(tenant=tenant, dry_run=True)
            state = "paused" if out.was_paused else "not paused"
            self.stdout.write(f"would resume {tenant.name} ({state}): the dispatcher would "
                              f"publish its {out.to_publish} unpublished job(s); dry run, "
                              "nothing changed")
            return
        out = tenant_work.tenant_work_resume(tenant=tenant)
        if not out.was_paused:
            self.stdout.write(f"{tenant.name} was not paused; {out.to_publish} unpublished "
                              "job(s) wait for the dispatcher as usual")
            return
        self.stdout.write(f"resumed {tenant.name}: the dispatcher publishes its "
                          f"{out.to_publish} held job(s) under the usual fair-share rules")

    def _cancel(self, tenant, *, lane: str | None, task: str | None, older_than: str | None,
                dry_run: bool, **_):
        age = parse_age(older_than) if older_than else None
        count = tenant_work.tenant_work_cancel(tenant=tenant, lane=lane, task=task,
                                               older_than=age, dry_run=dry_run)
        scope = tenant_work.cancel_scope(lane=lane, task=task, older_than=older_than)
        steps = (f"; {count.steps} of them step(s) of {count.workflows} workflow(s), "
                 "counted by their workflows" if count.steps else "")
        if dry_run:
            self.stdout.write(f"would cancel {count.jobs} job(s) of {tenant.name} not yet "
                              f"started{scope}{steps}; dry run, nothing changed")
            return
        cascade = (f"; their workflows cancelled {count.cascaded} more step(s) that "
                   "depended on them" if count.cascaded else "")
        self.stdout.write(f"cancelled {count.jobs} job(s) of {tenant.name} not yet "
                          f"started{scope}{steps}{cascade}")

"""``manage.py flood``: reproduce the head-of-line field report and measure the quick lane.

Example (the report's scenario)::

    python platform/manage.py flood --task demo.slow_task --count 20000 --tier standard \\
        --probe 20

queues 20,000 slow jobs for a standard demo tenant, then submits 20
``demo.quick_task`` jobs one at a time and prints how long each took from
submission to finish while the slow backlog is still there.
"""
from __future__ import annotations

import json
import statistics
import time

from django.core.management.base import BaseCommand, CommandError

from jobs.bulk import BulkJob, job_submit_bulk
from jobs.catalogue import task_lane
from jobs.errors import UnknownTask
from jobs.models import Job
from jobs.options import SubmitOptions
from jobs.submission import job_submit
from tenants.models import Tenant

DEFAULT_PARAMS = {"demo.slow_task": {"seconds": 1.0}, "demo.quick_task": {"x": 1}}


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1))))
    return ordered[k]


class Command(BaseCommand):
    help = "Queue many jobs of one task, then time quick probe jobs submitted behind them."

    def add_arguments(self, parser):
        parser.add_argument("--task", required=True,
                            help="registered task name, e.g. demo.slow_task")
        parser.add_argument("--count", type=int, required=True, help="how many jobs to queue")
        parser.add_argument("--tier", choices=[c.value for c in Tenant.Tier],
                            help="use (creating it if needed) the demo tenant of this tier")
        parser.add_argument("--tenant", help="an existing tenant's name (its own tier applies)")
        parser.add_argument("--params", help="JSON object of the task's keyword arguments")
        parser.add_argument("--priority", type=int, help="relative priority 0..9 inside the tier")
        parser.add_argument("--probe", type=int, default=0,
                            help="then submit this many probe jobs one by one and time them")
        parser.add_argument("--probe-task", default="demo.quick_task")
        parser.add_argument("--probe-timeout", type=float, default=30.0,
                            help="seconds to wait for each probe before giving up")

    def handle(self, *args, **opts):
        tenant = self._tenant(opts)
        try:
            lane = task_lane(opts["task"])
            probe_lane = task_lane(opts["probe_task"]) if opts["probe"] else None
        except UnknownTask as exc:
            raise CommandError(str(exc)) from exc
        if opts["count"] < 0:
            raise CommandError("--count must be 0 or more")
        if opts["priority"] is not None and not 0 <= opts["priority"] <= 9:
            raise CommandError("--priority must be between 0 and 9")
        params = self._params(opts)

        started = time.monotonic()
        job = BulkJob(task=opts["task"], params=params,
                      options=SubmitOptions(priority=opts["priority"]))
        # The operator's own tool: the demo tenant's quotas do not apply.
        outcome = job_submit_bulk(tenant=tenant, jobs=[job] * opts["count"],
                                  enforce_quotas=False)
        sent = outcome.accepted
        took = time.monotonic() - started
        rate = sent / took if took else 0.0
        self.stdout.write(
            f"queued {sent} {opts['task']} jobs on lane {lane.name} for tenant {tenant.name} "
            f"(tier {tenant.tier}) in {took:.1f} s ({rate:,.0f}/s)"
        )
        if opts["probe"]:
            self._probe(tenant, opts, lane.name, probe_lane.name)

    def _tenant(self, opts) -> Tenant:
        if opts["tenant"]:
            tenant = Tenant.objects.filter(name=opts["tenant"], is_active=True).first()
            if tenant is None:
                raise CommandError(f"no active tenant named {opts['tenant']!r}")
            if opts["tier"] and opts["tier"] != tenant.tier:
                raise CommandError(
                    f"tenant {tenant.name!r} is {tenant.tier}; a tier comes from the account, "
                    "drop --tier or pick another tenant"
                )
            return tenant
        if not opts["tier"]:
            raise CommandError("give --tier (a demo tenant of that tier) or --tenant NAME")
        tenant, _ = Tenant.objects.get_or_create(name=f"demo-{opts['tier']}",
                                                 defaults={"tier": opts["tier"]})
        return tenant

    def _params(self, opts) -> dict:
        if opts["params"] is None:
            return DEFAULT_PARAMS.get(opts["task"], {})
        try:
            params = json.loads(opts["params"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--params is not valid JSON: {exc}") from exc
        if not isinstance(params, dict):
            raise CommandError("--params must be a JSON object")
        return params

    def _probe(self, tenant: Tenant, opts, flood_lane: str, probe_lane: str) -> None:
        latencies = []
        for i in range(opts["probe"]):
            job, _ = job_submit(tenant=tenant, task=opts["probe_task"],
                             params=DEFAULT_PARAMS.get(opts["probe_task"], {}))
            deadline = time.monotonic() + opts["probe_timeout"]
            while True:
                done = Job.objects.filter(id=job.id, status__in=Job.FINISHED).values(
                    "status", "submitted_at", "finished_at").first()
                if done:
                    break
                if time.monotonic() > deadline:
                    raise CommandError(
                        f"probe {i + 1} ({job.id}) did not finish within "
                        f"{opts['probe_timeout']:g} s: is a worker serving lane {probe_lane}?")
                time.sleep(0.002)
            if done["status"] != Job.Status.SUCCEEDED:
                raise CommandError(f"probe {job.id} ended {done['status']}")
            latencies.append((done["finished_at"] - done["submitted_at"]).total_seconds() * 1000)
        backlog = Job.objects.filter(lane=flood_lane, status=Job.Status.QUEUED).count()
        self.stdout.write(
            f"{len(latencies)} {opts['probe_task']} probes on lane {probe_lane}, submit to finish: "
            f"p50 {statistics.median(latencies):.1f} ms, p95 {_percentile(latencies, 95):.1f} ms, "
            f"max {max(latencies):.1f} ms; lane {flood_lane} still has {backlog} jobs queued"
        )

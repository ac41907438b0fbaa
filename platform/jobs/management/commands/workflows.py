"""``manage.py workflows list|show|cancel|sweep``: workflows for the on-call engineer.

Examples::

    python platform/manage.py workflows list --stuck
    python platform/manage.py workflows list --tenant acme --status running
    python platform/manage.py workflows show 5b0c...e1
    python platform/manage.py workflows cancel 5b0c...e1
    python platform/manage.py workflows sweep

``list`` and ``show`` change nothing; ``show`` lists every step with its job, status,
what it waits for and how long it has been in its state. ``cancel`` cancels every
step not yet started (the running ones finish). ``sweep`` counts the step ends no path
counted yet, as the dispatcher does on each pass. Exit codes: 0 done; 1 not found or
not cancellable. Runbook: docs/runbooks/workflow-stuck.md.
"""
from __future__ import annotations

import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db.models.functions import Coalesce

from jobs.errors import NotCancellable
from jobs.models import Job, Workflow
from jobs.selectors import stuck_workflows, workflow_health, workflow_progress
from jobs.workflows import workflow_cancel, workflow_sweep
from switchyard.clock import platform_now


class Command(BaseCommand):
    help = "List, inspect, cancel or sweep workflows."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        listing = actions.add_parser("list", help="one line per workflow, oldest first")
        listing.add_argument("--stuck", action="store_true",
                             help="only running workflows none of whose steps waits or runs")
        listing.add_argument("--tenant", help="only this tenant's")
        listing.add_argument("--status", choices=Workflow.Status.values)
        listing.add_argument("--limit", type=int, default=50)
        listing.add_argument("--json", action="store_true", help="JSON lines")
        show = actions.add_parser("show", help="a workflow and every step")
        show.add_argument("workflow_id")
        show.add_argument("--json", action="store_true")
        cancel = actions.add_parser("cancel", help="cancel every step not yet started")
        cancel.add_argument("workflow_id")
        actions.add_parser("sweep", help="count step ends no path counted yet")

    def handle(self, *args, action: str, **options):
        return getattr(self, f"_{action}")(**options)

    def _list(self, *, stuck: bool, tenant: str | None, status: str | None, limit: int,
              json: bool = False, **_):
        if stuck:
            records = list(stuck_workflows(limit=limit))
        else:
            query = Workflow.objects.order_by("submitted_at")
            if tenant:
                query = query.filter(tenant_name=tenant)
            if status:
                query = query.filter(status=status)
            records = list(query[:limit])
        records = [w for w in records if not tenant or w.tenant_name == tenant]
        now = platform_now()
        health = workflow_health(now)
        if not json:
            self.stdout.write(f"{health.running} running, {health.stuck} stuck, oldest running "
                              f"{health.oldest_running_seconds:.0f} s; finished in the last "
                              f"hour: {health.finished_last_hour}")
        for workflow in records:
            age = (now - workflow.submitted_at).total_seconds()
            line = {"id": str(workflow.id), "kind": workflow.kind, "tenant": workflow.tenant_name,
                    "status": workflow.status, "steps": workflow.step_count,
                    "open": workflow.open_steps, "age_seconds": round(age)}
            self.stdout.write(_json(line) if json else
                              f"{line['id']}  {line['kind']:<5} {line['tenant']:<20} "
                              f"{line['status']:<9} {line['open']}/{line['steps']} open  "
                              f"{line['age_seconds']} s")

    def _show(self, *, workflow_id: str, json: bool = False, **_):
        workflow = _workflow(workflow_id)
        now = platform_now()
        steps = []
        for name, depends_on, outcome, job_id, status, since, error in workflow.steps.annotate(
                since=Coalesce("job__started_at", "job__submitted_at")).values_list(
                "name", "depends_on", "outcome", "job_id", "job__status", "since", "job__error"):
            steps.append({"step": name, "job": str(job_id), "status": status,
                          "counted": bool(outcome), "waits_for": depends_on,
                          "seconds_in_state": round((now - since).total_seconds()),
                          "error": error[:200]})
        summary = {"id": str(workflow.id), "kind": workflow.kind, "tenant": workflow.tenant_name,
                   "status": workflow.status, "reason": workflow.reason,
                   "open_steps": workflow.open_steps, "progress": workflow_progress(workflow)}
        if json:
            self.stdout.write(_json({**summary, "steps": steps}))
            return
        self.stdout.write(_json(summary))
        for step in steps:
            flags = "" if step["counted"] or step["status"] not in Job.FINISHED else \
                "  (ended, not yet counted: run `workflows sweep`)"
            self.stdout.write(f"  {step['step']:<24} {step['status']:<9} "
                              f"{step['seconds_in_state']:>7} s  job {step['job']}{flags}"
                              + (f"  {step['error']}" if step["error"] else ""))

    def _cancel(self, *, workflow_id: str, **_):
        try:
            outcome = workflow_cancel(workflow=_workflow(workflow_id))
        except NotCancellable as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"workflow {workflow_id}: {outcome.cancelled} step(s) cancelled; "
                          f"still running, left to finish: {', '.join(outcome.running) or 'none'}")

    def _sweep(self, **_):
        self.stdout.write(f"{workflow_sweep()} step end(s) counted")


def _workflow(workflow_id: str) -> Workflow:
    try:
        return Workflow.objects.get(id=workflow_id)
    except (Workflow.DoesNotExist, ValidationError, ValueError) as exc:
        raise CommandError(f"no workflow {workflow_id}") from exc


def _json(value) -> str:
    return json.dumps(value, default=str, sort_keys=True)

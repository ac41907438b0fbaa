"""Workflows: steps that run in the order their dependencies give, counted exactly once.

Run by the worker (every step's end, ``jobs.outcomes``), the web (cancelling) and the
dispatcher (``workflow_sweep``); ``jobs.workflow_submission`` accepts them.

Every step is a ``Job`` recorded when the workflow is accepted: the roots ``queued``,
the others ``blocked``. A step's end is counted in the transaction that records it,
under the workflow's row lock (``steps_ended``):

* its ``WorkflowStep.outcome`` is written once (a second count of the same step, a
  redelivery or a replay, changes nothing);
* what depends on it has one fewer step to wait for; a step left waiting for none is
  released (``blocked`` -> ``queued``, its ``from`` parameters filled with the results
  of the steps they name) and published after the commit;
* a step that did not succeed, under ``on_failure: fail_workflow``, cancels its
  descendants instead (``cancelled``, with the reason) and the workflow will end
  ``failed``; under ``continue`` its dependents run, with null for its result;
* once every step has ended, the ``on_complete`` step (if any) is released with the
  workflow's summary; once it has ended too, the workflow is finished.

No polling (Celery's ``chord_unlock``): the last step to end releases what waits on
it. An end recorded elsewhere (an expiry seen by the dispatcher or a worker) is counted
by ``workflow_sweep``, under the same lock: never twice, never lost. Lock order: a
step's job row, the workflow row, then what it releases or cancels; ``workflow_cancel``
and ``step_cancel`` lock the workflow first and touch only steps not started, which no
step's end holds: no cycle, no deadlock.

Size: counting, releasing and cancelling share that lock order and the workflow's
counts; one module keeps them where the order can be checked in one reading.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Count, F, Sum
from django.utils.dateparse import parse_datetime

from jobs import fairness
from jobs.catalogue import InvalidParams, catalogue_task, task_lane, validate_params
from jobs.errors import InvalidSubmission, NotCancellable, UnknownTask
from jobs.models import Job, OnFailure, Workflow, WorkflowStep
from jobs.options import SubmitOptions, schedule_of
from jobs.publishing import publish_or_defer
from jobs.signals import job_events_for, workflow_event_send
from routing import topology
from switchyard.clock import platform_now
from switchyard.returning import update_returning

logger = logging.getLogger(__name__)

#: Most steps in one workflow.
MAX_STEPS = 10_000
#: Steps released together beyond this many are left to the dispatcher (due now),
#: which publishes them in bulk under the tenants' windows; fewer are published by
#: the releasing process right after its commit (a chain's next step at once).
PUBLISH_INLINE_MAX = 20
#: Query parameters per ``IN (...)``: bounded whatever a workflow's size.
CHUNK = 2000


def _chunks(values: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), CHUNK):
        yield values[start:start + CHUNK]


def publish_released(jobs: list[Job]) -> None:
    """Publish released jobs due now after the commit, or leave many to the dispatcher."""
    now_jobs = [job for job in jobs if job.run_at is None]
    if len(now_jobs) > PUBLISH_INLINE_MAX:
        for job in now_jobs:
            job.run_at = job.submitted_at  # due now: the dispatcher's next pass
        return
    for job in now_jobs:
        if fairness.must_hold(lane=job.lane, tier=job.tier, tenant=job.tenant):
            job.run_at = job.submitted_at
        else:
            transaction.on_commit(lambda job=job: publish_or_defer(job))


# -- counting ends ----------------------------------------------------------------------

def steps_ended(ended: Iterable[tuple[Any, Any, str]]) -> None:
    """Count ``(job id, workflow id, status)`` of jobs that just reached a final status,
    in the transaction that recorded it (open one around it). Each step counts once."""
    per_workflow: dict[Any, dict[str, str]] = defaultdict(dict)
    for job_id, workflow_id, status in ended:
        if workflow_id is not None:
            per_workflow[workflow_id][str(job_id)] = status
    for workflow_id in sorted(per_workflow, key=str):  # one order: no deadlock between two
        _count(workflow_id, per_workflow[workflow_id])


def step_ended(job: Job, status: str) -> None:
    """``steps_ended`` for one job (a no-op unless it is a workflow step)."""
    steps_ended([(job.id, job.workflow_id, status)])


def _lock(workflow_id) -> Workflow | None:  # held until the transaction ends
    return Workflow.objects.select_for_update().filter(id=workflow_id).first()


def _lock_counting(workflow_id, ending: int) -> tuple[Workflow | None, int]:
    """The workflow's row locked (until the transaction ends) and its ``open_steps`` as
    written, for ``ending`` steps to count. The common case, steps that are not its
    ``on_complete`` ending while others are open, takes the lock and lowers the count in
    one statement (a chord's headers: one statement fewer on the row every header
    updates); otherwise a plain lock, the count unchanged."""
    lowered = update_returning(Workflow.objects.filter(id=workflow_id, open_steps__gte=ending),
                               open_steps=F("open_steps") - ending)
    if lowered:
        workflow = lowered[0]
        written = workflow.open_steps
        workflow.open_steps += ending  # as it was: the loop counts each real end
        return workflow, written
    workflow = _lock(workflow_id)
    return workflow, workflow.open_steps if workflow is not None else 0


def _count(workflow_id, statuses: Mapping[str, str]) -> None:
    workflow, open_steps_written = _lock_counting(workflow_id, len(statuses))
    if workflow is None:
        return
    written = (open_steps_written, workflow.reason, workflow.status, workflow.finished_at)
    now = platform_now()
    pending = dict(statuses)  # job id -> status, still to count
    while pending:
        batch, pending = pending, {}
        steps = []
        by_status: dict[str, list[str]] = defaultdict(list)
        for job_id, status in batch.items():
            by_status[status].append(job_id)
        for status, job_ids in by_status.items():
            for ids in _chunks(job_ids):
                # Written once: a step already counted (a redelivery, a replay) is not here.
                steps += update_returning(WorkflowStep.objects.filter(job_id__in=ids, outcome=""),
                                          outcome=status)
        for step in steps:
            status = step.outcome
            if step.is_on_complete:
                if status != Job.Status.SUCCEEDED and not workflow.reason:
                    workflow.reason = f"the on_complete step {step.name!r} ended {status}"
                continue
            workflow.open_steps -= 1
            if status == Job.Status.SUCCEEDED or step.on_failure == OnFailure.CONTINUE:
                pending.update(_release_dependents(workflow, step, now))
            else:
                if not workflow.reason and not workflow.cancelled_at:
                    error = Job.objects.filter(id=step.job_id).values_list("error", flat=True)
                    workflow.reason = (f"step {step.name!r} ended {status}: "
                                       f"{(error.first() or '')[:500]}")
                workflow.open_steps -= _cancel_descendants(
                    workflow, step, f"not run: step {step.name!r} ended {status}", now)
        if workflow.open_steps == 0 and workflow.status == Workflow.Status.RUNNING:
            pending.update(_complete(workflow, now))
    if (workflow.open_steps, workflow.reason, workflow.status, workflow.finished_at) != written:
        _save_counts(workflow)


def _save_counts(workflow: Workflow) -> None:
    Workflow.objects.filter(id=workflow.id).update(
        open_steps=workflow.open_steps, reason=workflow.reason, status=workflow.status,
        finished_at=workflow.finished_at)


def _release_dependents(workflow: Workflow, step: WorkflowStep,
                        now: dt.datetime) -> dict[str, str]:
    """One fewer step for each dependent to wait for; release those left with none.
    Returns the released steps that ended at once (their params do not fit)."""
    if not step.dependents:
        return {}
    ready: list[Any] = []
    for ids in _chunks(step.dependents):
        # Only the counters come back: a fan-in step's row holds its whole dependency list.
        lowered = update_returning(WorkflowStep.objects.filter(job_id__in=ids, outcome=""),
                                   fields=["waiting_for"], waiting_for=F("waiting_for") - 1)
        ready += [dependent.job_id for dependent in lowered if dependent.waiting_for == 0]
    if not ready:
        return {}
    steps = [dependent for ids in _chunks(ready)
             for dependent in WorkflowStep.objects.filter(job_id__in=ids)]
    return _release(workflow, steps, now)


def _complete(workflow: Workflow, now: dt.datetime) -> dict[str, str]:
    """Every step ended: release the on_complete step, or finish the workflow."""
    if workflow.on_complete_id is not None:
        step = WorkflowStep.objects.filter(job_id=workflow.on_complete_id).first()
        if step is not None and not step.outcome:
            return _release(workflow, [step], now)
    workflow.status = (Workflow.Status.CANCELLED if workflow.cancelled_at
                       else Workflow.Status.FAILED if workflow.reason
                       else Workflow.Status.SUCCEEDED)
    workflow.finished_at = now
    status = workflow.status
    transaction.on_commit(lambda: workflow_event_send("finished", kind=workflow.kind,
                                                      status=status))
    logger.info("workflow %s %s", workflow.id, workflow.status)
    return {}


def workflow_summary(workflow: Workflow) -> dict[str, Any]:
    """What an on_complete step receives: the workflow's id and its steps' outcomes
    (the on_complete step aside); for a batch's, the batch's items too."""
    counts = Counter(dict(
        Job.objects.filter(workflow=workflow).exclude(id=workflow.on_complete_id)
        .order_by().values_list("status").annotate(n=Count("id"))))
    summary: dict[str, Any] = {"workflow": str(workflow.id), "steps": sum(counts.values()),
                               **{status: counts.get(status, 0)
                                  for status in ("succeeded", "failed", "dead", "expired",
                                                 "cancelled")}}
    batch = getattr(workflow, "batch", None) if workflow.kind == Workflow.Kind.BATCH else None
    if batch is not None:
        summary.update(batch=str(batch.id), total_items=batch.total_items,
                       failed_items=batch.chunks.aggregate(n=Sum("failed_items"))["n"] or 0)
    return summary


def _release(workflow: Workflow, steps: Sequence[WorkflowStep],
             now: dt.datetime) -> dict[str, str]:
    """``blocked`` -> ``queued`` for ``steps``, their ``from`` parameters filled in; the
    jobs due now are published after the commit. Returns ``{job id: "dead"}`` for a step
    whose filled-in params do not fit its task (it is dead with the reason, unrun)."""
    if not steps:
        return {}
    jobs = {}
    for ids in _chunks([s.job_id for s in steps]):
        jobs.update({job.id: job for job in Job.objects.select_related("tenant").filter(
            id__in=ids, status=Job.Status.BLOCKED)})
    names = {name for s in steps for source in s.inputs.values()
             for name in (source if isinstance(source, list) else [source])}
    results = _results(workflow, names)
    summary = workflow_summary(workflow) if any(s.summary_param for s in steps) else None
    released, dead = [], {}
    for step in steps:
        job = jobs.get(step.job_id)
        if job is None:
            continue
        params = dict(job.params)
        for param, source in step.inputs.items():
            params[param] = ([results.get(n) for n in source] if isinstance(source, list)
                             else results.get(source))
        if step.summary_param:
            params[step.summary_param] = summary
        problem = _release_problem(job, params, step)
        if problem:
            Job.objects.filter(id=job.id, status=Job.Status.BLOCKED).update(
                status=Job.Status.DEAD, finished_at=now, error=problem[:5000], params=params)
            job.status = Job.Status.DEAD
            transaction.on_commit(lambda job=job: job_events_for("dead", [job]))
            dead[str(job.id)] = Job.Status.DEAD
            continue
        job.params, job.status, job.submitted_at = params, Job.Status.QUEUED, now
        lane = task_lane(job.task, params, tenant=job.tenant)
        job.lane = lane.name
        job.routing_key = topology.routing_key(lane.name, job.tier, job.task)
        options = _options(step)
        try:
            job.run_at, job.expires_at = schedule_of(options, now)
        except InvalidSubmission:  # an eta that passed while it waited: due now
            job.run_at, job.expires_at = None, None
        released.append(job)
    publish_released(released)
    for job in released:
        Job.objects.filter(id=job.id, status=Job.Status.BLOCKED).update(
            status=job.status, params=job.params, submitted_at=now, run_at=job.run_at,
            expires_at=job.expires_at, lane=job.lane, routing_key=job.routing_key)
    return dead


def _release_problem(job: Job, params: dict, step: WorkflowStep) -> str:
    task = catalogue_task(job.task)
    if task is None:
        return f"task {job.task!r} is no longer registered"
    try:
        validate_params(task, params, tenant=job.tenant)
    except InvalidParams as exc:
        return (f"the params filled in from its upstream steps do not fit {job.task}: "
                f"{exc.field}: {exc.message}")
    try:
        task_lane(job.task, params, tenant=job.tenant)
    except UnknownTask as exc:
        return str(exc)
    return ""


def schedule_options(options: SubmitOptions) -> dict[str, Any]:
    """What of a step's options applies at its release, as JSON for ``WorkflowStep.options``:
    ``countdown`` (seconds from the release), ``eta`` and ``expires``."""
    kept: dict[str, Any] = {}
    if options.countdown is not None:
        kept["countdown"] = options.countdown
    for name in ("eta", "expires"):
        value = getattr(options, name)
        if value is not None:
            kept[name] = value.isoformat() if isinstance(value, dt.datetime) else value
    return kept


def _options(step: WorkflowStep) -> SubmitOptions:
    """The step's schedule options (``schedule_options``) back as ``SubmitOptions``."""
    raw = step.options or {}

    def instant(value):
        return parse_datetime(value) if isinstance(value, str) else value

    return SubmitOptions(countdown=raw.get("countdown"), eta=instant(raw.get("eta")),
                         expires=instant(raw.get("expires")))


def _results(workflow: Workflow, names: set[str]) -> dict[str, Any]:
    """Results of the named steps of ``workflow`` that succeeded (others: absent)."""
    found: dict[str, Any] = {}
    for chunk in _chunks(sorted(names)):
        for name, status, result in WorkflowStep.objects.filter(
                workflow=workflow, name__in=chunk).values_list("name", "job__status",
                                                               "job__result"):
            if status == Job.Status.SUCCEEDED:
                found[name] = result
    return found


def _cancel_descendants(workflow: Workflow, step: WorkflowStep, reason: str,
                        now: dt.datetime) -> int:
    """Cancel every step downstream of ``step`` that has not ended; return how many
    (on_complete steps are never among them)."""
    seen: set[str] = set()
    frontier = list(step.dependents)
    while frontier:
        fresh = [job_id for job_id in frontier if job_id not in seen]
        seen.update(fresh)
        frontier = []
        for ids in _chunks(fresh):
            for dependents in WorkflowStep.objects.filter(
                    job_id__in=ids, outcome="").values_list("dependents", flat=True):
                frontier += dependents
    return _cancel_steps(workflow, sorted(seen), reason, now)[1]


def _cancel_steps(workflow: Workflow, job_ids: Sequence[Any], reason: str,
                  now: dt.datetime) -> tuple[int, int]:
    """Cancel those of ``job_ids`` that have not started and whose step has not ended,
    counting their steps ended. Returns (jobs cancelled, steps counted: on_complete
    aside). ``FOR UPDATE`` (the locks the UPDATE takes anyway) re-reads a job a worker
    is starting: one that started is left to count its own end, never marked cancelled
    while it runs."""
    cancelled, counted = [], 0
    for ids in _chunks(list(job_ids)):
        open_ids = WorkflowStep.objects.filter(job_id__in=ids, outcome="").values("job_id")
        jobs = list(Job.objects.select_for_update(of=("self",)).filter(
            id__in=open_ids, status__in=Job.NOT_STARTED).only("id", "lane", "tier", "task"))
        locked_ids = [j.id for j in jobs]
        Job.objects.filter(id__in=locked_ids).update(
            status=Job.Status.CANCELLED, finished_at=now, error=reason[:5000])
        rows = WorkflowStep.objects.filter(job_id__in=locked_ids, outcome="")
        counted += rows.filter(is_on_complete=False).count()
        rows.update(outcome=Job.Status.CANCELLED)
        cancelled += jobs
    if cancelled:
        transaction.on_commit(lambda: job_events_for("cancelled", cancelled))
    return len(cancelled), counted


# -- cancelling -------------------------------------------------------------------------

@dataclass
class CancelOutcome:  # what POST /api/v1/workflows/{id}/cancel answers
    workflow: Workflow
    cancelled: int
    running: list[str]  # names of the steps already running, which finish


def workflow_cancel(*, workflow: Workflow) -> CancelOutcome:
    """Cancel every step of ``workflow`` not yet started (the on_complete step too); the
    running ones finish, and nothing else starts. ``NotCancellable`` once finished."""
    with transaction.atomic():
        locked = _lock(workflow.id)
        if locked is None or locked.status != Workflow.Status.RUNNING:
            raise NotCancellable(f"workflow {workflow.id} is "
                                 f"{locked.status if locked else 'gone'}; nothing to cancel")
        now = locked.cancelled_at = platform_now()
        locked.reason = locked.reason or "cancelled by its caller"
        ids = Job.objects.filter(workflow=locked, status__in=Job.NOT_STARTED).values_list(
            "id", flat=True)
        cancelled, counted = _cancel_steps(locked, ids, "workflow cancelled by its caller", now)
        locked.open_steps -= counted
        running = list(WorkflowStep.objects.filter(
            workflow=locked, outcome="", job__status=Job.Status.STARTED)
            .values_list("name", flat=True))
        Workflow.objects.filter(id=locked.id).update(cancelled_at=now)
        if locked.open_steps == 0:
            _complete(locked, now)
        _save_counts(locked)
    return CancelOutcome(workflow=locked, cancelled=cancelled, running=running)


def step_cancel(*, job: Job) -> Job:
    """Cancel one step that has not started (``POST /api/v1/jobs/{id}/cancel``): counted
    like any end, so its ``on_failure`` decides what its dependents do."""
    with transaction.atomic():
        if _lock(job.workflow_id) is None:
            raise NotCancellable(f"job {job.id}: its workflow is gone")
        updated = Job.objects.filter(id=job.id, status__in=Job.NOT_STARTED).update(
            status=Job.Status.CANCELLED, finished_at=platform_now(),
            error="cancelled by its caller")
        job.refresh_from_db()
        if not updated:
            raise NotCancellable(f"job {job.id} is {job.status}; only a job that has not "
                                 "started can be cancelled")
        steps_ended([(job.id, job.workflow_id, Job.Status.CANCELLED)])
    job_events_for("cancelled", [job])
    return job


# -- the dispatcher's sweep -------------------------------------------------------------

def workflow_sweep(*, limit: int = 500) -> int:
    """Count the ends that no path counted yet (an expiry, a chunk's cancel): steps of
    running workflows whose job is finished but whose outcome is empty. Returns how many."""
    rows = list(WorkflowStep.objects.filter(
        outcome="", workflow__status=Workflow.Status.RUNNING, job__status__in=Job.FINISHED)
        .values_list("job_id", "workflow_id", "job__status")[:limit])
    if rows:
        with transaction.atomic():
            steps_ended(rows)
        logger.info("%d workflow step end(s) counted by the sweep", len(rows))
    return len(rows)


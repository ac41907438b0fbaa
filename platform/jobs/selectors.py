"""Reads on jobs and batches. A tenant only ever sees its own.

Used by the web (the API's reads) and the platform's tools. A batch's progress
and its failed items are read from its chunks' records, never from a counter.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Count, Exists, F, Max, Min, OuterRef, Q, QuerySet, Sum

from jobs.models import Batch, Job, Workflow
from switchyard.clock import platform_now
from tenants.models import Tenant

#: Chunk states whose items all count as failed.
CHUNK_FAILED = (Job.Status.FAILED, Job.Status.DEAD, Job.Status.EXPIRED)


def job_list(*, tenant: Tenant, status: str | None = None, task: str | None = None,
             lane: str | None = None, batch=None) -> QuerySet[Job]:
    jobs = Job.objects.filter(tenant=tenant)
    if batch:
        jobs = jobs.filter(batch_id=batch)
    if status:
        jobs = jobs.filter(status=status)
    if task:
        jobs = jobs.filter(task=task)
    if lane:
        jobs = jobs.filter(lane=lane)
    return jobs


def job_get(*, tenant: Tenant, job_id) -> Job | None:
    """The tenant's job, or None (another tenant's job is as good as missing)."""
    return Job.objects.filter(tenant=tenant, id=job_id).first()


def batch_list(*, tenant: Tenant) -> QuerySet[Batch]:
    return Batch.objects.filter(tenant=tenant)


def batch_get(*, tenant: Tenant, batch_id) -> Batch | None:
    """The tenant's batch, or None (another tenant's batch is as good as missing)."""
    return Batch.objects.filter(tenant=tenant, id=batch_id).first()


def batch_chunks(*, batch: Batch, status: str | None = None) -> QuerySet[Job]:
    """The batch's chunks (without their items and results), in any ``status``."""
    chunks = Job.objects.filter(batch=batch).defer("params", "result")
    return chunks.filter(status=status) if status else chunks


@dataclass(frozen=True)
class Progress:
    status: str
    total: int
    done: int
    failed: int
    cancelled: int
    pending: int
    percent: float
    chunks: dict[str, int]
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    estimated_completion_at: dt.datetime | None


def batch_progress(batch: Batch, *, now: dt.datetime | None = None) -> Progress:
    """Where ``batch`` stands, read from its chunks in one aggregate query."""
    now = now or platform_now()
    rows = (Job.objects.filter(batch=batch).order_by().values("status")
            .annotate(chunks=Count("id"), items=Sum("item_count"),
                      failed_items=Sum("failed_items"), first_start=Min("started_at"),
                      last_finish=Max("finished_at")))
    chunks = {status: 0 for status in Job.Status.values}
    done = failed = cancelled = pending = 0
    starts, finishes = [], []
    for row in rows:
        status, items = row["status"], row["items"] or 0
        chunks[status] = row["chunks"]
        if status == Job.Status.SUCCEEDED:
            failed += row["failed_items"] or 0
            done += items - (row["failed_items"] or 0)
        elif status in CHUNK_FAILED:
            failed += items
        elif status == Job.Status.CANCELLED:
            cancelled += items
        else:
            pending += items
        if row["first_start"]:
            starts.append(row["first_start"])
        if row["last_finish"] and status not in Job.UNFINISHED:
            finishes.append(row["last_finish"])
    total = batch.total_items
    processed = done + failed + cancelled
    started_at = min(starts) if starts else None
    finished = pending == 0
    if not finished:
        status = "running" if started_at or processed else "queued"
    elif batch.cancelled_at:
        status = "cancelled"
    elif failed == 0:
        status = "succeeded"
    elif done == 0:
        status = "failed"
    else:
        status = "completed_with_failures"
    estimate = None
    if not finished and started_at and processed:
        rate = processed / max((now - started_at).total_seconds(), 0.001)
        estimate = now + dt.timedelta(seconds=pending / rate)
    return Progress(status=status, total=total, done=done, failed=failed, cancelled=cancelled,
                    pending=pending, percent=round(100.0 * processed / total, 2) if total else 100,
                    chunks=chunks, started_at=started_at,
                    finished_at=max(finishes) if finished and finishes else None,
                    estimated_completion_at=estimate)


def batch_failures(batch: Batch, *, after: int = -1, limit: int = 100
                   ) -> tuple[list[dict], int | None]:
    """Failed items in index order after index ``after``: ``[{index, item, error}]``
    and the ``after`` of the next page (None at the end)."""
    chunks = (Job.objects.filter(batch=batch)
              .filter(Q(status=Job.Status.SUCCEEDED, failed_items__gt=0)
                      | Q(status__in=CHUNK_FAILED))
              .alias(end=F("item_offset") + F("item_count")).filter(end__gt=after + 1)
              .order_by("chunk_index")
              .only("status", "params", "result", "error", "item_offset"))
    found: list[dict] = []
    for chunk in chunks.iterator(chunk_size=50):
        items = chunk.params.get("items", [])
        if chunk.status == Job.Status.SUCCEEDED:
            failures = [(f["index"], f["error"]) for f in (chunk.result or {}).get("failed", [])]
        else:
            reason = f"chunk {chunk.status}: {chunk.error}" if chunk.error else chunk.status
            failures = [(i, reason) for i in range(len(items))]
        for local, error in failures:
            index = chunk.item_offset + local
            if index <= after:
                continue
            if len(found) == limit:
                return found, found[-1]["index"]
            found.append({"index": index,
                          "item": items[local] if local < len(items) else None,
                          "error": error})
    return found, None


def workflow_list(*, tenant: Tenant, status: str | None = None) -> QuerySet[Workflow]:
    workflows = Workflow.objects.filter(tenant=tenant)
    return workflows.filter(status=status) if status else workflows


def workflow_get(*, tenant: Tenant, workflow_id) -> Workflow | None:
    """The tenant's workflow, or None (another tenant's is as good as missing)."""
    return Workflow.objects.filter(tenant=tenant, id=workflow_id).first()


def workflow_progress(workflow: Workflow) -> dict:
    """``{"steps", "ended", <status>: count...}`` over every step's job (one aggregate)."""
    counts = dict(Job.objects.filter(workflow=workflow).order_by().values_list("status")
                  .annotate(n=Count("id")))
    total = sum(counts.values())
    return {"steps": total, "ended": sum(counts.get(s, 0) for s in Job.FINISHED), **counts}


def workflow_steps(workflow: Workflow):
    """Every step of ``workflow`` in request order, with its job's task and status."""
    return (workflow.steps.order_by("index")
            .values("name", "job_id", "job__task", "job__status", "depends_on",
                    "is_on_complete"))


@dataclass(frozen=True)
class WorkflowHealth:
    """Running workflows at a glance, for the dashboard, ``/metrics`` and
    ``manage.py workflows``."""

    running: int
    stuck: int
    oldest_running_seconds: float
    finished_last_hour: dict


def stuck_workflows(*, limit: int = 20) -> QuerySet[Workflow]:
    """Running workflows that cannot move on by themselves: none of their steps waits in
    a lane or runs, so nothing left will end and release the rest (a chord header whose
    message never arrived, a step ended on a path the sweep has not counted yet).
    Oldest first; ``docs/runbooks/workflow-stuck.md`` says what to do."""
    moving = Job.objects.filter(workflow=OuterRef("pk"), status__in=Job.UNFINISHED)
    return (Workflow.objects.filter(status=Workflow.Status.RUNNING)
            .annotate(moving=Exists(moving)).filter(moving=False)
            .order_by("submitted_at")[:limit])


def workflow_health(now: dt.datetime | None = None) -> WorkflowHealth:
    now = now or platform_now()
    running = Workflow.objects.filter(status=Workflow.Status.RUNNING)
    oldest = running.aggregate(t=Min("submitted_at"))["t"]
    finished = dict(Workflow.objects.filter(finished_at__gte=now - dt.timedelta(hours=1))
                    .order_by().values_list("status").annotate(n=Count("id")))
    return WorkflowHealth(
        running=running.count(), stuck=len(stuck_workflows(limit=1000)),
        oldest_running_seconds=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
        finished_last_hour={status: finished.get(status, 0)
                            for status in Workflow.Status.values if status != "running"})

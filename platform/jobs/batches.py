"""Batches: many items of one task, run as chunks; submitting and cancelling them.

Run by the web (``POST /api/v1/batches``, ``POST /api/v1/media/operations``).
Progress and failed items are read from the chunks (``jobs.selectors``).

A batch is accepted in one transaction: the ``Batch`` row and one ``Job`` per
chunk (``params = {"items": [...]}``). No chunk is published by the request:
each chunk is due at once (or at its countdown/eta) and the dispatcher
publishes it, so accepting 100,000 items costs a few bulk INSERTs, never
thousands of broker round trips inside a request.

Progress is never counted separately: it is read from the chunks (one
aggregate query), so there is no chord, no ``chord_unlock`` polling and no
counter that a lost update could leave wrong.
"""
from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from jobs.errors import InvalidSubmission, NotCancellable
from jobs.models import Batch, Job, Workflow
from jobs.options import SubmitOptions, apply_run_options, fingerprint, schedule_of
from jobs.quotas import check_quotas
from jobs.signals import job_event_send
from jobs.submission import idempotent_replay, new_job
from jobs.workflow_submission import StepSpec, batch_workflow, save_batch_steps
from jobs.workflows import steps_ended
from routing import topology
from switchyard.celery import app
from switchyard.clock import platform_now
from tenants.models import Tenant

DEFAULT_CHUNK_SIZE = 100
MAX_CHUNK_SIZE = 10_000
#: A batch is at most this many chunks (jobs): chunk_size must grow with the items.
MAX_CHUNKS = 10_000

#: ``Batch.lane`` of a batch whose chunks went to different lanes.
MIXED_LANES = "mixed"


def max_items() -> int:
    return settings.SWITCHYARD_MAX_BATCH_ITEMS


def batch_submit(*, tenant: Tenant, task: str, items: Sequence[Any],
                 chunk_size: int | None = None, options: SubmitOptions | None = None,
                 idempotency_key: str = "", on_complete: StepSpec | None = None,
                 ) -> tuple[Batch, bool]:
    """Record a batch and its chunks; the dispatcher publishes the chunks. With
    ``on_complete``, that task runs once every chunk has ended, with the batch's counts
    (``jobs.workflows.batch_workflow``).

    Items must already be valid for the task (``catalogue.validate_items``).
    Returns ``(batch, created)`` like ``job_submit``; raises
    ``InvalidSubmission``, ``QuotaExceeded``, ``IdempotencyConflict``.
    """
    options = options or SubmitOptions()
    if options.link or options.link_error:
        raise InvalidSubmission("options.link" if options.link else "options.link_error",
                                "not available for batches")
    total = len(items)
    if not 1 <= total <= max_items():
        raise InvalidSubmission("items", f"give between 1 and {max_items()} items, got {total}")
    size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    if not 1 <= size <= MAX_CHUNK_SIZE:
        raise InvalidSubmission("chunk_size", f"must be between 1 and {MAX_CHUNK_SIZE}, "
                                f"got {size}")
    if chunk_size is None:
        size = max(size, math.ceil(total / MAX_CHUNKS))
    count = math.ceil(total / size)
    if count > MAX_CHUNKS:
        raise InvalidSubmission("chunk_size", f"{total} items in chunks of {size} make {count} "
                                f"chunks, more than {MAX_CHUNKS}; use a chunk_size of at least "
                                f"{math.ceil(total / MAX_CHUNKS)}")
    now = platform_now()
    run_at, expires_at = schedule_of(options, now)
    template = new_job(tenant=tenant, task=task, params={}, priority=options.priority, now=now)
    apply_run_options(template, options)
    offsets = range(0, total, size)
    # Each chunk goes to the lane its items call for (SwitchyardTask.chunk_lanes):
    # a chunk of 10 MB images to slow, a chunk of renames to quick.
    lanes = chunk_lanes(task, [items[offset:offset + size] for offset in offsets],
                        tenant=tenant)
    batch = Batch(tenant=tenant, tenant_name=tenant.name, task=task,
                  lane=lanes[0] if len(set(lanes)) == 1 else MIXED_LANES,
                  tier=template.tier, priority=template.priority, total_items=total,
                  chunk_size=size, chunk_count=count, submitted_at=now,
                  options=_jsonable_options(options))
    if idempotency_key:
        batch.idempotency_key = idempotency_key
        batch.request_fingerprint = fingerprint(
            task, items, size, asdict(options), asdict(on_complete) if on_complete else None)
        existing = idempotent_replay(tenant.batches.all(), idempotency_key,
                                     batch.request_fingerprint)
        if existing:
            return existing, False
    chunks = [
        Job(tenant=tenant, tenant_name=tenant.name, task=task, lane=lanes[index],
            tier=template.tier, priority=template.priority,
            routing_key=topology.routing_key(lanes[index], template.tier, task),
            params={"items": list(items[offset:offset + size])}, submitted_at=now,
            run_at=run_at or now, expires_at=expires_at, retry_policy=template.retry_policy,
            max_attempts=template.max_attempts, batch=batch, chunk_index=index,
            item_offset=offset, item_count=min(size, total - offset))
        for index, offset in enumerate(offsets)
    ]
    try:
        with transaction.atomic():
            check_quotas(tenant, now, adding=count)
            if on_complete is not None:
                batch.workflow = batch_workflow(tenant=tenant, chunks=chunks,
                                                on_complete=on_complete, now=now)
            batch.save(force_insert=True)
            Job.objects.bulk_create(chunks, batch_size=2000)
            if batch.workflow is not None:
                save_batch_steps(batch.workflow, chunks)
            transaction.on_commit(lambda: _count_chunks("submitted", batch, lanes))
    except IntegrityError:
        existing = idempotent_replay(tenant.batches.all(), idempotency_key,
                                     batch.request_fingerprint)
        if existing is None:
            raise
        return existing, False
    return batch, True


def chunk_lanes(task: str, chunks: list[Sequence[Any]], *, tenant: Tenant) -> list[str]:
    """The lane of each chunk of ``task``, checked against the topology."""
    lanes = app.tasks[task].chunk_lanes(chunks, tenant=tenant)
    if len(lanes) != len(chunks):
        raise RuntimeError(f"{task}.chunk_lanes answered {len(lanes)} lanes for "
                           f"{len(chunks)} chunks")
    return [topology.lane(name).name for name in lanes]


def _jsonable_options(options: SubmitOptions) -> dict:
    out = {}
    for key, value in asdict(options).items():
        if value is None:
            continue
        out[key] = value.isoformat() if isinstance(value, dt.datetime) else value
    return out


def batch_cancel(*, batch: Batch) -> int:
    """Cancel every chunk not started yet; return how many. Started chunks finish.
    ``NotCancellable`` if nothing was left to cancel."""
    now = platform_now()
    with transaction.atomic():
        if batch.workflow_id is not None:
            # Its on_complete runs once the chunks have ended: counted here, under the
            # workflow's lock, taken first (jobs.workflows' lock order).
            Workflow.objects.select_for_update().filter(id=batch.workflow_id).first()
        cancelled = Job.objects.filter(batch=batch, status__in=Job.WAITING).update(
            status=Job.Status.CANCELLED, finished_at=now, error="batch cancelled by its caller")
        if batch.workflow_id is not None and cancelled:
            cancelled_ids = Job.objects.filter(batch=batch, status=Job.Status.CANCELLED,
                                               finished_at=now).values_list("id", flat=True)
            steps_ended([(job_id, batch.workflow_id, Job.Status.CANCELLED)
                         for job_id in cancelled_ids])
        if not cancelled:
            raise NotCancellable(f"batch {batch.id} has no chunk left that has not started")
        Batch.objects.filter(id=batch.id).update(cancelled_at=now)
        batch.cancelled_at = now
        if batch.lane == MIXED_LANES:
            per_lane = Counter(Job.objects.filter(
                batch=batch, status=Job.Status.CANCELLED, finished_at=now,
            ).values_list("lane", flat=True))
        else:
            per_lane = Counter({batch.lane: cancelled})
        transaction.on_commit(lambda: _count_chunks("cancelled", batch, per_lane.elements()))
    return cancelled


def _count_chunks(event: str, batch: Batch, lanes) -> None:
    """Count a batch's chunks in the metrics under each chunk's own lane."""
    for lane, count in Counter(lanes).items():
        job_event_send(event, lane=lane, tier=batch.tier, task=batch.task, count=count)

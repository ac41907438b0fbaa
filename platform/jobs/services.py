"""Writes on jobs: submitting work and recording what workers did with it.

Submission writes the job record first and publishes after the transaction
commits, so a rolled-back request never leaves a task behind.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from django.db import transaction
from django.utils import timezone

import routing.celery_config as routing_celery
from jobs.models import Job
from routing import priorities, topology
from switchyard.celery import app
from tenants.models import Tenant


class UnknownTask(LookupError):
    """The task is not registered, or declares no lane."""


def task_lane(task: str) -> topology.Lane:
    """The lane ``task`` declared; ``UnknownTask`` if it is not a routable task."""
    registered = app.tasks.get(task)
    lane_name = getattr(registered, "lane", None)
    if registered is None or lane_name is None:
        raise UnknownTask(f"unknown task {task!r}")
    return topology.lane(lane_name)


def _new_job(*, tenant: Tenant | None, task: str, params: Mapping[str, Any],
             priority: int | None, now: dt.datetime) -> Job:
    ln = task_lane(task)
    tier = priorities.tier(tenant.tier) if tenant else priorities.DEFAULT_TIER
    return Job(
        tenant=tenant,
        tenant_name=tenant.name if tenant else routing_celery.SYSTEM_TENANT,
        task=task,
        lane=ln.name,
        tier=tier.name,
        priority=tier.place(priority),
        routing_key=topology.routing_key(ln.name, tier.name, task),
        params=dict(params),
        submitted_at=now,
    )


def _publish(job: Job, producer=None) -> None:
    app.send_task(
        job.task,
        kwargs=job.params,
        task_id=str(job.id),
        priority=job.priority,
        headers={routing_celery.TENANT_HEADER: job.tenant_name,
                 routing_celery.TIER_HEADER: job.tier},
        producer=producer,
    )


def _mark_published(job_ids: list) -> None:
    Job.objects.filter(id__in=job_ids, published_at__isnull=True).update(
        published_at=timezone.now()
    )


def job_submit(*, tenant: Tenant | None, task: str, params: Mapping[str, Any] | None = None,
               priority: int | None = None) -> Job:
    """Record a job and publish it once the surrounding transaction commits.

    ``priority`` is relative (0..9, None for the default) and is placed inside
    the tenant's tier band: the tier comes from the tenant record, never the caller.
    """
    job = _new_job(tenant=tenant, task=task, params=params or {}, priority=priority,
                   now=timezone.now())
    with transaction.atomic():
        job.save(force_insert=True)

        def publish() -> None:
            _publish(job)
            _mark_published([job.id])

        transaction.on_commit(publish)
    return job


def job_submit_many(*, tenant: Tenant | None, task: str, params_list: Iterable[Mapping[str, Any]],
                    priority: int | None = None, chunk: int = 2000) -> int:
    """Record and publish many jobs of one task for one tenant; return how many.

    Rows are inserted in chunks and each chunk is published after its commit
    over one producer connection, with publisher confirms.
    """
    total = 0
    batch: list[Job] = []

    def flush() -> None:
        nonlocal total
        if not batch:
            return
        with transaction.atomic():
            Job.objects.bulk_create(batch)
        with app.producer_or_acquire() as producer:
            for job in batch:
                _publish(job, producer=producer)
        _mark_published([job.id for job in batch])
        total += len(batch)
        batch.clear()

    for params in params_list:
        batch.append(_new_job(tenant=tenant, task=task, params=params, priority=priority,
                              now=timezone.now()))
        if len(batch) >= chunk:
            flush()
    flush()
    return total


def job_prune_finished(*, older_than: dt.timedelta) -> int:
    """Delete finished jobs whose end is older than ``older_than``; return how many."""
    cutoff = timezone.now() - older_than
    deleted, _ = Job.objects.filter(status__in=Job.FINISHED, finished_at__lt=cutoff).delete()
    return deleted

"""Retention: finished jobs and batches are deleted after ``SWITCHYARD_JOB_RETENTION_DAYS``.

Run by a worker of the quick lane, for beat's ``jobs.prune_finished`` (``jobs.tasks``).
Ages are read on the platform's clock, which wrote the finish times.
"""
from __future__ import annotations

import datetime as dt

from django.db.models import Count, Max, Q

from jobs.models import Batch, Job, Workflow
from switchyard.clock import platform_now


def job_prune_finished(*, older_than: dt.timedelta) -> int:
    """Delete finished jobs whose end is older than ``older_than``; return how many.
    Batch chunks go with their batch (``batch_prune_finished``)."""
    cutoff = platform_now() - older_than
    deleted, _ = Job.objects.filter(status__in=Job.FINISHED, finished_at__lt=cutoff,
                                    batch__isnull=True, workflow__isnull=True).delete()
    return deleted


def workflow_prune_finished(*, older_than: dt.timedelta) -> int:
    """Delete workflows finished before ``older_than`` ago, with their steps' jobs (a
    batch's chunks stay with their batch), at most 1,000 a call; return how many."""
    cutoff = platform_now() - older_than
    ids = list(Workflow.objects.filter(status__in=[Workflow.Status.SUCCEEDED,
                                                   Workflow.Status.FAILED,
                                                   Workflow.Status.CANCELLED],
                                       finished_at__lt=cutoff).values_list("id", flat=True)[:1000])
    Job.objects.filter(workflow_id__in=ids, batch__isnull=True).delete()
    Workflow.objects.filter(id__in=ids).delete()
    return len(ids)


def batch_prune_finished(*, older_than: dt.timedelta) -> int:
    """Delete batches (with their chunks) finished before ``older_than`` ago, at most
    1,000 a call; return how many."""
    cutoff = platform_now() - older_than
    ids = list(Batch.objects.annotate(
        unfinished=Count("chunks", filter=Q(chunks__status__in=Job.UNFINISHED)),
        last_finish=Max("chunks__finished_at"),
    ).filter(unfinished=0, last_finish__lt=cutoff).values_list("id", flat=True)[:1000])
    Batch.objects.filter(id__in=ids).delete()
    return len(ids)

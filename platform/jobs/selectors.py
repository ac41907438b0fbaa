"""Reads on jobs. A tenant only ever sees its own jobs."""
from __future__ import annotations

from django.db.models import QuerySet

from jobs.models import Job
from tenants.models import Tenant


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

"""Periodic housekeeping on job records (run by beat)."""
from __future__ import annotations

import datetime as dt

from django.conf import settings

from jobs.retention import batch_prune_finished, job_prune_finished, workflow_prune_finished
from switchyard.celery import app


@app.task(name="jobs.prune_finished", lane="quick", public=False)
def prune_finished() -> dict:
    """Delete finished jobs, workflows and batches older than
    SWITCHYARD_JOB_RETENTION_DAYS."""
    age = dt.timedelta(days=settings.SWITCHYARD_JOB_RETENTION_DAYS)
    return {"jobs": job_prune_finished(older_than=age),
            "workflows": workflow_prune_finished(older_than=age),
            "batches": batch_prune_finished(older_than=age)}

"""Periodic housekeeping on job records (run by beat)."""
from __future__ import annotations

import datetime as dt

from django.conf import settings

from jobs.services import job_prune_finished
from switchyard.celery import app


@app.task(name="jobs.prune_finished", lane="quick", public=False)
def prune_finished() -> int:
    """Delete finished job records older than SWITCHYARD_JOB_RETENTION_DAYS."""
    return job_prune_finished(older_than=dt.timedelta(days=settings.SWITCHYARD_JOB_RETENTION_DAYS))

"""Periodic housekeeping on schedules' fire records (run by beat)."""
from __future__ import annotations

import datetime as dt

from django.conf import settings

from schedules.retention import schedule_fire_prune
from switchyard.celery import app


@app.task(name="schedules.prune_fires", lane="quick", public=False)
def prune_fires() -> dict:
    """Delete fire records older than SWITCHYARD_JOB_RETENTION_DAYS."""
    age = dt.timedelta(days=settings.SWITCHYARD_JOB_RETENTION_DAYS)
    return {"fires": schedule_fire_prune(older_than=age)}

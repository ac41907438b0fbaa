"""A tenant's quotas: how many of its jobs may wait, and how many submissions a minute.

Checked by the web in the transaction that accepts work (``jobs.submission``,
``jobs.bulk``, ``jobs.batches``). Counting a tenant's backlog costs a scan of its
index entries (about 60 ms for 300,000 waiting jobs, measured), paid by every
submission: within ``SWITCHYARD_QUOTA_COUNT_TTL`` seconds a process reuses its
last counts, plus what it added since.
"""
from __future__ import annotations

import datetime as dt
import time
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Min

from jobs.errors import QuotaExceeded
from jobs.models import Job, states_sql
from tenants.models import Tenant

_QUOTA_COUNTS = f"""
SELECT (SELECT count(*) FROM jobs_job WHERE tenant_id = %(tenant)s
          AND status IN ({states_sql(Job.WAITING)})),
       (SELECT count(*) FROM jobs_job WHERE tenant_id = %(tenant)s
          AND submitted_at > %(window)s AND batch_id IS NULL)
     + (SELECT count(*) FROM jobs_batch WHERE tenant_id = %(tenant)s
          AND submitted_at > %(window)s)
"""

#: Per process: tenant id -> (when read, waiting, recent).
_quota_cache: dict[Any, tuple[float, int, int]] = {}


def _quota_counts(tenant: Tenant, window: dt.datetime) -> tuple[int, int]:
    ttl = settings.SWITCHYARD_QUOTA_COUNT_TTL
    cached = _quota_cache.get(tenant.id)
    if ttl > 0 and cached and time.monotonic() - cached[0] < ttl:
        return cached[1], cached[2]
    with connection.cursor() as cursor:
        cursor.execute(_QUOTA_COUNTS, {"tenant": tenant.id, "window": window})
        waiting, recent = cursor.fetchone()
    if ttl > 0:
        _quota_cache[tenant.id] = (time.monotonic(), waiting, recent)
    return waiting, recent


def _quota_counted(tenant: Tenant, adding: int, submissions: int) -> None:
    """Count a submission that passed into the cached counts (an over-count if
    its transaction then rolls back: the safe side, for at most the TTL)."""
    cached = _quota_cache.get(tenant.id)
    if cached:
        _quota_cache[tenant.id] = (cached[0], cached[1] + adding, cached[2] + submissions)


def check_quotas(tenant: Tenant, now: dt.datetime, *, adding: int = 1,
                 submissions: int = 1) -> None:
    """Raise ``QuotaExceeded`` if ``adding`` more waiting jobs, counting as
    ``submissions`` toward the rate quota, would break the tenant's quotas. A
    batch is one submission of many jobs; a bulk submission of n jobs is n.
    Both counts are read in one round trip (each on its own index)."""
    window = now - dt.timedelta(seconds=60)
    waiting, recent = _quota_counts(tenant, window)
    if waiting + adding > tenant.max_queued_jobs:
        raise QuotaExceeded(f"{waiting} jobs are waiting and this adds {adding}; the quota is "
                            f"{tenant.max_queued_jobs}", retry_after=30)
    if submissions > tenant.submissions_per_minute:
        raise QuotaExceeded(f"{submissions} jobs in one submission is more than the "
                            f"{tenant.submissions_per_minute} submissions a minute allowed; "
                            "send them in smaller parts, or as a batch", retry_after=60)
    if recent + submissions > tenant.submissions_per_minute:
        recent_jobs = Job.objects.filter(tenant=tenant, submitted_at__gt=window,
                                         batch__isnull=True)
        recent_batches = tenant.batches.filter(submitted_at__gt=window)
        oldest = min(t for t in (recent_jobs.aggregate(t=Min("submitted_at"))["t"],
                                 recent_batches.aggregate(t=Min("submitted_at"))["t"]) if t)
        retry_after = max(1, int((oldest + dt.timedelta(seconds=60) - now).total_seconds()) + 1)
        raise QuotaExceeded(f"more than {tenant.submissions_per_minute} submissions in 60 s",
                            retry_after=retry_after)
    _quota_counted(tenant, adding, submissions)

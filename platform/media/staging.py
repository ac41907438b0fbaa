"""Staged uploads whose job will never read them: found and deleted (``staging_sweep``).

The web stages an upload's bytes before its ``media.upload`` job is accepted
(``media.submission``), and the upload task deletes them once the file is made.
A job that never runs (cancelled, expired, dead, failed before reading them, or a
web process killed between staging and commit) would leave them on the shared
volume for ever: they count against the tenant's storage quota meanwhile
(``media.selectors.storage_used``), and beat's hourly sweep removes them.
"""
from __future__ import annotations

import datetime as dt
import time

from jobs.models import Job
from media import storage
from tenants.models import Tenant


def _referenced(tenant: Tenant) -> set[str]:
    """Staging tokens named by the tenant's upload jobs that may still run."""
    tokens: set[str] = set()
    params = (Job.objects.filter(tenant=tenant, task="media.upload", status__in=Job.UNFINISHED)
              .values_list("params", flat=True))
    for value in params.iterator(chunk_size=2000):
        for item in (value or {}).get("items") or ():
            if isinstance(item, dict) and storage.is_staging_token(item.get("staged")):
                tokens.add(item["staged"])
    return tokens


def staging_sweep(*, older_than: dt.timedelta) -> int:
    """Delete staged uploads older than ``older_than`` that no unfinished upload job
    names; return how many. The age spares an upload staged and not yet committed."""
    cutoff = time.time() - older_than.total_seconds()
    removed = 0
    for tenant in Tenant.objects.all().iterator():
        staged = []
        for token in storage.staged_tokens(tenant.name):
            modified = storage.modified_at(storage.staging_key(tenant.name, token))
            if modified is not None and modified < cutoff:
                staged.append(token)
        if not staged:
            continue
        keep = _referenced(tenant)
        for token in staged:
            if token not in keep:
                storage.delete_key(storage.staging_key(tenant.name, token))
                removed += 1
    return removed

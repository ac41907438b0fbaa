"""Retention: fire records older than ``SWITCHYARD_JOB_RETENTION_DAYS`` are deleted.

Run by a worker of the quick lane, for beat's ``schedules.prune_fires``
(``schedules.tasks``). A schedule every 10 s writes 8,640 records a day; they are kept
as long as the jobs they fired. Buffered fires (still waiting to run) are kept.
"""
from __future__ import annotations

import datetime as dt

from schedules.models import ScheduleFire
from switchyard.clock import platform_now

#: Most records deleted by one call (one statement each), so a long backlog is pruned in
#: hourly steps instead of one long transaction.
PRUNE_LIMIT = 50_000


def schedule_fire_prune(*, older_than: dt.timedelta) -> int:
    """Delete fire records whose fire time is older than ``older_than``; return how many."""
    cutoff = platform_now() - older_than
    ids = list(ScheduleFire.objects.filter(fire_at__lt=cutoff)
               .exclude(outcome=ScheduleFire.Outcome.BUFFERED)
               .values_list("id", flat=True)[:PRUNE_LIMIT])
    deleted, _ = ScheduleFire.objects.filter(id__in=ids).delete()
    return deleted

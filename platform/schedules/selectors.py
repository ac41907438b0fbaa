"""Reading schedules: a tenant's own, and what their fire times gave.

Run by the web (``schedules.api``), the admin and ``manage.py schedules``.
"""
from __future__ import annotations

from django.db.models import QuerySet

from schedules.models import Schedule, ScheduleFire
from tenants.models import Tenant


def schedule_list(*, tenant: Tenant) -> QuerySet[Schedule]:
    """The tenant's schedules."""
    return Schedule.objects.filter(tenant=tenant)


def schedule_get(*, tenant: Tenant, schedule_id) -> Schedule | None:
    """The tenant's schedule ``schedule_id``, or None (also when it is another's)."""
    return Schedule.objects.filter(tenant=tenant, id=schedule_id).first()


def schedule_last_fires(*, schedule: Schedule, count: int = 10) -> list[ScheduleFire]:
    """The schedule's last ``count`` fire records, newest first, with their jobs."""
    return list(schedule.fires.select_related("job").order_by("-fire_at")[:count])

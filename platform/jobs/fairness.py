"""Fair sharing between tenants inside a lane, and the standard tier's starvation bound.

Two rules, both applied to the job table (the system of record), never to
state held by one process:

* **Tenant windows.** In a lane with a window (``SWITCHYARD_FAIR_WINDOW``), at
  most ``W = max(1, round(window x weight))`` of a tenant's jobs of one tier
  are *in the broker* (published, not started). The rest are *held*: recorded,
  unpublished, due. (That is the one meaning of "held" in Switchyard; a job
  waiting for its countdown or backoff is *scheduled*, and both are
  *unpublished*.) A *paused* tenant (``Tenant.paused_at``, ``jobs.tenant_work``)
  has a window of none: all its due work is held until it is resumed. With FIFO
  inside a priority band and every backlogged tenant keeping ``W_t`` messages
  queued, tenant ``t`` gets ``W_t / sum(W)`` of its band's starts (weighted fair
  share), and a newcomer's first job waits
  behind at most ``sum(W)`` messages of the others. ``release_plan`` says who
  gets the free places first: the tenant whose window is least full relative
  to its size.
* **Starvation bound.** Strict priority serves the standard band only when the
  premium band is empty. Per lane, if standard work got less than
  ``SWITCHYARD_STANDARD_MIN_SHARE`` of the starts over the last
  ``SWITCHYARD_FAIR_SHARE_WINDOW`` seconds while some of it waits in the
  broker, or a standard job in its tenant's window has waited nearly
  ``SWITCHYARD_STANDARD_MAX_WAIT``, the dispatcher *promotes* it: publishes it
  again at the top priority with a higher publication number (the old copy
  becomes stale and is acknowledged unrun). ``promotions_needed`` is the rule.

The pure functions here are the scheduling rule (tested with hypothesis); the
queries below them read what the rule needs. The dispatcher applies them
(``jobs.dispatch.job_publish_due``, ``jobs.dispatch.job_promote_starved``); the
web asks ``must_hold`` of each job it accepts.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from django.conf import settings
from django.db import connection
from django.db.models import Count, Exists, OuterRef, Q, QuerySet

from jobs.models import Job, states_sql
from routing import priorities
from tenants.models import Tenant

# The rule --------------------------------------------------------------------

def window_size(base: int, weight: int) -> int | None:
    """A tenant's window in a lane whose base window is ``base``: ``None`` (no
    limit) when ``base`` is 0, else ``max(1, round(base x weight))``."""
    if base <= 0:
        return None
    return max(1, round(base * max(1, weight)))


@dataclass(frozen=True)
class Group:
    """A tenant's work of one tier in one lane: ``unpublished`` jobs waiting in the
    table (or an upper bound of them), ``in_broker`` published and not started,
    ``window`` (None: no limit)."""

    key: Hashable
    unpublished: int
    in_broker: int
    window: int | None

    @property
    def room(self) -> int:
        """How many of its unpublished jobs may enter the broker now."""
        if self.window is None:
            return self.unpublished
        return max(0, min(self.unpublished, self.window - self.in_broker))

    @property
    def fill(self) -> float:
        return 0.0 if self.window is None else self.in_broker / self.window


def release_plan(groups: Iterable[Group], limit: int) -> list[tuple[Hashable, int]]:
    """How many held jobs of each group to publish now, at most ``limit`` in all.

    Groups whose window is least full (relative to its size) come first, so
    when ``limit`` cuts a pass short the tenants furthest below their share are
    served; no group goes past its window or its unpublished jobs.
    """
    plan = []
    left = limit
    for group in sorted(groups, key=lambda g: (g.fill, -(g.window or 0), str(g.key))):
        if left <= 0:
            break
        take = min(group.room, left)
        if take > 0:
            plan.append((group.key, take))
            left -= take
    return plan


def promotions_needed(*, starts_total: int, starts_standard: int, min_share: float,
                      promoted_waiting: int, standard_waiting: int) -> int:
    """Standard jobs to promote now so the standard tier keeps ``min_share`` of
    the lane's starts: the shortfall over the measured window, less the
    promotions already waiting to start, at most the standard jobs waiting."""
    if min_share <= 0 or starts_total <= 0 or standard_waiting <= 0:
        return 0
    shortfall = math.ceil(min_share * starts_total - starts_standard - 1e-9)
    return max(0, min(standard_waiting, shortfall - promoted_waiting))


#: Priority of a promoted copy: above every band.
PROMOTED_PRIORITY = priorities.MAX_PRIORITY


# Reading what the rule needs -------------------------------------------------

def base_window(lane: str) -> int:
    return int(settings.SWITCHYARD_FAIR_WINDOW.get(lane, 0) or 0)


def tenant_window(lane: str, weight: int) -> int | None:
    return window_size(base_window(lane), weight)


def in_broker(lane: str, tier: str, tenant_id) -> QuerySet:
    """A tenant's jobs of one tier published to ``lane`` and not started (the
    ``jobs_in_broker`` partial index: only what sits in the broker)."""
    return Job.objects.filter(lane=lane, tier=tier, tenant_id=tenant_id,
                              published_at__isnull=False, status__in=Job.WAITING)


def unpublished(lane: str, tier: str, tenant_id) -> QuerySet:
    """A tenant's jobs of one tier waiting unpublished for ``lane``, held or
    scheduled (the ``jobs_held`` partial index)."""
    return Job.objects.filter(tenant_id=tenant_id, lane=lane, tier=tier,
                              published_at__isnull=True, status__in=Job.WAITING)


def in_broker_counts(lanes: Iterable[str]) -> dict[tuple[str, str, object], int]:
    """``(lane, tier, tenant id) -> jobs in the broker`` for the windowed ``lanes``."""
    lanes = list(lanes)
    if not lanes:
        return {}
    rows = (Job.objects.filter(lane__in=lanes, published_at__isnull=False,
                               status__in=Job.WAITING)
            .order_by().values("lane", "tier", "tenant_id").annotate(n=Count("id")))
    return {(r["lane"], r["tier"], r["tenant_id"]): r["n"] for r in rows}


_WAITING_SQL = f"published_at IS NULL AND status IN ({states_sql(Job.WAITING)})"
#: The (tenant, lane, tier) keys that have unpublished waiting jobs, by a loose
#: index scan of ``jobs_held``: one index probe per key, however many rows each
#: key has (a GROUP BY would read every unpublished row on every pass).
_HELD_KEYS = f"""
WITH RECURSIVE keys AS (
  (SELECT tenant_id, lane, tier FROM jobs_job
   WHERE {_WAITING_SQL} AND tenant_id IS NOT NULL
   ORDER BY tenant_id, lane, tier LIMIT 1)
  UNION ALL
  SELECT n.tenant_id, n.lane, n.tier FROM keys k, LATERAL (
    SELECT tenant_id, lane, tier FROM jobs_job
    WHERE {_WAITING_SQL} AND tenant_id IS NOT NULL
      AND (tenant_id, lane, tier) > (k.tenant_id, k.lane, k.tier)
    ORDER BY tenant_id, lane, tier LIMIT 1) n
)
SELECT tenant_id, lane, tier FROM keys
UNION ALL
SELECT DISTINCT tenant_id, lane, tier FROM jobs_job WHERE {_WAITING_SQL} AND tenant_id IS NULL
"""


def unpublished_keys() -> list[tuple[str, str, object]]:
    """``(lane, tier, tenant id)`` of every group with unpublished waiting jobs
    (due or not: the release itself filters what is due)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_HELD_KEYS)
            return [(lane, tier, tenant_id) for tenant_id, lane, tier in cursor.fetchall()]
    rows = (Job.objects.filter(published_at__isnull=True, status__in=Job.WAITING).order_by()
            .values_list("lane", "tier", "tenant_id").distinct())
    return list(rows)


def paused_tenant(tenant) -> QuerySet:
    """The tenant ``tenant`` (an id or an ``OuterRef``) if it is paused: what
    ``tenant_not_paused`` and a first sight's conditional insert (``jobs.admission``)
    both ask of the tenant's row, inside their one statement."""
    return Tenant.objects.filter(id=tenant, paused_at__isnull=False)


def tenant_not_paused() -> Q:
    """Jobs whose tenant is not paused (or that have none), as a filter: a correlated
    ``NOT EXISTS`` probing the tenant's primary key inside the same statement, so a
    job's start stays one UPDATE (``jobs.task``) and a release one SELECT."""
    return ~Exists(paused_tenant(OuterRef("tenant_id")))


def must_hold(*, lane: str, tier: str, tenant) -> bool:
    """Should a new job of ``tenant`` for ``lane`` wait in the table rather than
    be published now? Yes when the tenant is paused, its window is full, or older
    jobs of its are already held (they go first). Two indexed reads, each stopping
    at the window's size; no read at all in a lane without a window (the pause is
    read from the tenant object at hand)."""
    return room_for(lane=lane, tier=tier, tenant=tenant) == 0


def room_for(*, lane: str, tier: str, tenant) -> int | None:
    """Places free in ``tenant``'s window for ``lane`` (None: no limit; 0 while the
    tenant is paused)."""
    if tenant is None:
        return None
    if tenant.paused_at is not None:
        return 0
    window = tenant_window(lane, tenant.weight)
    if window is None:
        return None
    if unpublished(lane, tier, tenant.id).exists():
        return 0
    published = len(in_broker(lane, tier, tenant.id).values_list("id", flat=True)[:window])
    return max(0, window - published)

"""Reads behind every queue view: per lane and tier, what waits, how fast work
goes through, and how long it waited.

Two sources, each for what only it knows:

* the RabbitMQ management API, per lane queue: messages ready and unacked,
  consumers, dead letters, publish and deliver rates;
* the job table (the system of record), per lane *and tier* (the broker cannot
  tell tiers apart inside a priority queue): jobs waiting and the oldest one's
  age, jobs running, jobs finished in the last minute and window, wait
  percentiles; per lane, the top tenants' share of the runs started in the
  window (fair sharing, ``jobs.fairness``). Each query uses an existing index: waiting jobs by
  ``(lane, status)``, finished jobs by ``(status, finished_at)``, running jobs
  by the partial ``jobs_started`` index.

Used by the dashboard's JSON, ``manage.py queues``, Flower's Queues page and the
``/metrics`` gauges, so all of them agree.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass, field

from django.conf import settings
from django.db import connection
from django.db.models import Count, Min, Q
from django.db.models.functions import Coalesce, TruncMinute
from django.utils import timezone

from jobs.models import Job
from jobs.selectors import stuck_workflows, workflow_health
from routing import priorities, topology
from routing.management import Management, ManagementError, vhost_of
from tenants.models import Tenant

logger = logging.getLogger(__name__)

#: Outcomes of a run: what "throughput" counts.
RAN = (Job.Status.SUCCEEDED, Job.Status.FAILED)
PERCENTILES = (50, 95, 99)
#: Most wait samples read per lane and tier where the database cannot compute
#: percentiles itself (SQLite); PostgreSQL computes them in the query.
MAX_SAMPLES = 20_000


@dataclass
class TierStats:
    tier: str
    waiting: int = 0
    oldest_waiting_seconds: float = 0.0
    running: int = 0
    done_1m: int = 0
    done_window: int = 0
    failed_window: int = 0
    throughput_1m: float = 0.0
    throughput_window: float = 0.0
    wait_samples: int = 0
    wait_p50: float | None = None
    wait_p95: float | None = None
    wait_p99: float | None = None
    series: list[int] = field(default_factory=list)


@dataclass
class TenantShare:
    """One of a lane's top tenants by runs started in the window; ``tenant`` is
    ``(others)`` for the rest together."""

    tenant: str
    tier: str
    started: int
    share: float
    weight: int | None = None
    waiting: int = 0
    held: int = 0


#: Tenants shown per lane (dashboard, ``/metrics``); the rest are summed as ``(others)``.
TOP_TENANTS = 5
OTHERS = "(others)"


@dataclass
class LaneStats:
    lane: str
    ready: int | None = None
    unacked: int | None = None
    consumers: int | None = None
    dead_letters: int | None = None
    publish_rate: float | None = None
    deliver_rate: float | None = None
    tiers: list[TierStats] = field(default_factory=list)
    tenants: list[TenantShare] = field(default_factory=list)

    def tier(self, name: str) -> TierStats:
        return next(t for t in self.tiers if t.tier == name)


@dataclass
class Snapshot:
    generated_at: str
    window_seconds: int
    series_minutes: list[str]
    broker_available: bool
    broker_error: str
    lanes: list[LaneStats]
    #: ``jobs.selectors.WorkflowHealth``, and the oldest stuck workflows.
    workflows: dict = field(default_factory=dict)

    def lane(self, name: str) -> LaneStats:
        return next(stats for stats in self.lanes if stats.lane == name)

    def as_dict(self) -> dict:
        return asdict(self)


def management() -> Management:
    return Management.for_broker(settings.CELERY_BROKER_URL, timeout=2.0)


def broker_queues(api: Management | None = None) -> dict[str, dict]:
    """The lane and dead-letter queues of the broker's vhost, by name
    (``ManagementError`` if the management API does not answer)."""
    api = api or management()
    vhost = vhost_of(settings.CELERY_BROKER_URL)
    wanted = {spec.name for spec in topology.queue_specs()}
    return {q["name"]: q for q in api.queues(vhost) if q.get("name") in wanted}


def _rate(queue: dict, stat: str) -> float:
    return float(((queue.get("message_stats") or {}).get(f"{stat}_details") or {})
                 .get("rate", 0.0))


def _due(now: dt.datetime) -> Q:
    """Waiting jobs that are due: not scheduled for later (a countdown, eta or backoff)."""
    return Q(run_at__isnull=True) | Q(run_at__lte=now)


def waiting_by_lane_tier(now: dt.datetime) -> dict[tuple[str, str], tuple[int, dt.datetime]]:
    """``(lane, tier) -> (jobs waiting and due, the oldest one's due time)``."""
    rows = (Job.objects.filter(status__in=Job.WAITING).filter(_due(now))
            .order_by().values("lane", "tier")
            .annotate(n=Count("id"), oldest=Min(Coalesce("run_at", "submitted_at"))))
    return {(r["lane"], r["tier"]): (r["n"], r["oldest"]) for r in rows}


def running_by_lane_tier() -> dict[tuple[str, str], int]:
    rows = (Job.objects.filter(status=Job.Status.STARTED).order_by()
            .values("lane", "tier").annotate(n=Count("id")))
    return {(r["lane"], r["tier"]): r["n"] for r in rows}


def _finished_counts(since: dt.datetime) -> dict[tuple[str, str, str], int]:
    rows = (Job.objects.filter(status__in=RAN, finished_at__gte=since).order_by()
            .values("lane", "tier", "status").annotate(n=Count("id")))
    return {(r["lane"], r["tier"], r["status"]): r["n"] for r in rows}


_PG_WAIT_PERCENTILES = """
SELECT lane, tier, count(*),
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
         ORDER BY EXTRACT(EPOCH FROM started_at - COALESCE(run_at, submitted_at)))
FROM jobs_job
WHERE started_at >= %(since)s
  AND (status = 'started' OR (status IN ('succeeded', 'failed') AND finished_at >= %(since)s))
GROUP BY lane, tier
"""


def wait_percentiles(since: dt.datetime) -> dict[tuple[str, str], tuple[int, list[float]]]:
    """``(lane, tier) -> (runs, [p50, p95, p99] seconds)`` of the waits (due → started)
    of runs that started since ``since``."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_PG_WAIT_PERCENTILES, {"since": since})
            return {(lane, tier): (n, [max(0.0, float(v)) for v in pcts])
                    for lane, tier, n, pcts in cursor.fetchall()}
    out: dict[tuple[str, str], tuple[int, list[float]]] = {}
    recent = (Job.objects.filter(started_at__gte=since)
              .filter(Q(status=Job.Status.STARTED) | Q(status__in=RAN, finished_at__gte=since)))
    for lane in topology.LANES:
        for tier in priorities.TIERS:
            rows = (recent.filter(lane=lane.name, tier=tier.name).order_by("-started_at")
                    .values_list("started_at", "run_at", "submitted_at")[:MAX_SAMPLES])
            waits = sorted(max(0.0, (s - (r or sub)).total_seconds()) for s, r, sub in rows)
            if waits:
                out[(lane.name, tier.name)] = (len(waits), [percentile(waits, p)
                                                          for p in PERCENTILES])
    return out


def percentile(ordered: list[float], pct: float) -> float:
    """Linear interpolation between closest ranks (PostgreSQL's ``percentile_cont``)."""
    if len(ordered) == 1:
        return ordered[0]
    rank = pct / 100 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def throughput_series(now: dt.datetime, minutes: int
                      ) -> tuple[list[dt.datetime], dict[tuple[str, str], list[int]]]:
    """Runs finished per minute, per lane and tier, for the last ``minutes`` minutes
    (the current, incomplete minute last)."""
    start = now.replace(second=0, microsecond=0) - dt.timedelta(minutes=minutes - 1)
    slots = [start + dt.timedelta(minutes=i) for i in range(minutes)]
    index = {slot: i for i, slot in enumerate(slots)}
    series: dict[tuple[str, str], list[int]] = {}
    rows = (Job.objects.filter(status__in=RAN, finished_at__gte=start).order_by()
            .annotate(minute=TruncMinute("finished_at")).values("lane", "tier", "minute")
            .annotate(n=Count("id")))
    for r in rows:
        i = index.get(r["minute"])
        if i is not None:
            series.setdefault((r["lane"], r["tier"]), [0] * minutes)[i] = r["n"]
    return slots, series


def tenant_shares(since: dt.datetime, now: dt.datetime, top: int = TOP_TENANTS,
                  ) -> dict[str, list[TenantShare]]:
    """Per lane: the ``top`` tenants by runs started since ``since`` with their share
    of the lane's starts, weight and jobs waiting (``held`` of them: due but kept in
    the job table, past their fair-share window), then ``(others)`` for the rest.
    Starts are read on the ``jobs_lane_started`` index, waiting jobs on
    ``(tenant, status)``."""
    rows = (Job.objects.filter(started_at__gte=since).order_by()
            .values("lane", "tenant_name", "tenant_id", "tier").annotate(n=Count("id")))
    by_lane: dict[str, list[dict]] = {}
    for r in rows:
        by_lane.setdefault(r["lane"], []).append(r)
    out: dict[str, list[TenantShare]] = {}
    for lane_name, entries in by_lane.items():
        total = sum(e["n"] for e in entries)
        entries.sort(key=lambda e: (-e["n"], e["tenant_name"]))
        shown, rest = entries[:top], entries[top:]
        ids = [e["tenant_id"] for e in shown if e["tenant_id"] is not None]
        weights = dict(Tenant.objects.filter(id__in=ids).values_list("id", "weight"))
        waiting = {(r["tenant_id"], r["tier"]): (r["n"], r["held"]) for r in
                   Job.objects.filter(lane=lane_name, tenant_id__in=ids, status__in=Job.WAITING)
                   .order_by().values("tenant_id", "tier")
                   .annotate(n=Count("id"), held=Count("id", filter=Q(published_at__isnull=True)
                                                        & _due(now)))}
        shares = []
        for e in shown:
            n_waiting, n_held = waiting.get((e["tenant_id"], e["tier"]), (0, 0))
            shares.append(TenantShare(tenant=e["tenant_name"], tier=e["tier"], started=e["n"],
                                      share=round(e["n"] / total, 4),
                                      weight=weights.get(e["tenant_id"]),
                                      waiting=n_waiting, held=n_held))
        if rest:
            started = sum(e["n"] for e in rest)
            shares.append(TenantShare(tenant=OTHERS, tier="", started=started,
                                      share=round(started / total, 4)))
        out[lane_name] = shares
    return out


def queue_snapshot(*, window: int = 300, series_minutes: int = 15,
                   now: dt.datetime | None = None, api: Management | None = None) -> Snapshot:
    """Everything a queue view shows, per lane (broker) and per lane and tier (job table).

    ``window`` (seconds) is the span of ``throughput_window``, ``failed_window``
    and the wait percentiles; ``throughput_1m`` always covers the last 60 s.
    """
    now = now or timezone.now()
    since = now - dt.timedelta(seconds=window)
    broker_error = ""
    try:
        queues = broker_queues(api)
    except ManagementError as exc:
        queues, broker_error = {}, str(exc)
    waiting = waiting_by_lane_tier(now)
    running = running_by_lane_tier()
    done_1m = _finished_counts(now - dt.timedelta(seconds=60))
    done_window = _finished_counts(since)
    waits = wait_percentiles(since)
    slots, series = throughput_series(now, series_minutes)
    shares = tenant_shares(since, now)

    lanes = []
    for lane in topology.LANES:
        q, dead = queues.get(lane.queue), queues.get(lane.dead_queue)
        lane_stats = LaneStats(lane=lane.name, tenants=shares.get(lane.name, []))
        if q is not None:
            lane_stats.ready = int(q.get("messages_ready", 0))
            lane_stats.unacked = int(q.get("messages_unacknowledged", 0))
            lane_stats.consumers = int(q.get("consumers", 0))
            lane_stats.publish_rate = _rate(q, "publish")
            lane_stats.deliver_rate = _rate(q, "deliver_get")
        if dead is not None:
            lane_stats.dead_letters = int(dead.get("messages", 0))
        for tier in reversed(priorities.TIERS):  # premium first: served first
            key = (lane.name, tier.name)
            stats = TierStats(tier=tier.name)
            count, oldest = waiting.get(key, (0, None))
            stats.waiting = count
            if oldest is not None:
                stats.oldest_waiting_seconds = max(0.0, (now - oldest).total_seconds())
            stats.running = running.get(key, 0)
            stats.done_1m = sum(done_1m.get((*key, s), 0) for s in RAN)
            stats.done_window = sum(done_window.get((*key, s), 0) for s in RAN)
            stats.failed_window = done_window.get((*key, Job.Status.FAILED), 0)
            stats.throughput_1m = round(stats.done_1m / 60, 3)
            stats.throughput_window = round(stats.done_window / window, 3)
            if key in waits:
                stats.wait_samples, (p50, p95, p99) = waits[key]
                stats.wait_p50, stats.wait_p95, stats.wait_p99 = (
                    round(p50, 4), round(p95, 4), round(p99, 4))
            stats.series = series.get(key, [0] * series_minutes)
            lane_stats.tiers.append(stats)
        lanes.append(lane_stats)
    return Snapshot(
        generated_at=now.isoformat(),
        window_seconds=window,
        series_minutes=[slot.isoformat() for slot in slots],
        broker_available=not broker_error,
        broker_error=broker_error,
        lanes=lanes,
        workflows=workflows_view(now),
    )


#: Stuck workflows the dashboard lists (the oldest first).
SHOWN_STUCK = 10


def workflows_view(now: dt.datetime) -> dict:
    """Running and stuck workflows for the dashboard (no tenant's data but its name,
    which only staff see)."""
    view = asdict(workflow_health(now))
    view["stuck_oldest"] = [
        {"id": str(w.id), "kind": w.kind, "tenant": w.tenant_name, "open_steps": w.open_steps,
         "age_seconds": round((now - w.submitted_at).total_seconds())}
        for w in stuck_workflows(limit=SHOWN_STUCK)]
    return view

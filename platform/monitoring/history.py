"""The last hour per lane and tier, minute by minute: runs finished and their wait.

Run by Flower (``monitoring.flower``: the charts of its Queues page).

Where the history comes from, and why: the **job table**, aggregated by minute, not a
ring buffer of snapshots kept in Flower.

* The job table already holds every run's finish, start and due time: the last hour
  is there the moment Flower starts, and a Flower restart (a deploy, a crash) leaves
  no hole, where a ring buffer would start empty and forget the hour at each restart.
* A ring buffer filled by polling would sample: counts between two polls, waits only
  as the snapshot's window percentiles. Grouping the rows by minute counts every run
  once, in the minute it finished, and takes each minute's wait percentiles from the
  runs that started in it.
* Each lane and tier's wait is measured from when the job was due (its submission,
  countdown or retry time) to its start, as everywhere else (``switchyard_job_queue_wait_seconds``).

It stays cheap: a minute that has closed does not change, so it is read once and kept
(at most ``MINUTES`` + ``RECHECK`` minutes per lane and tier: a few kilobytes whatever the
load). A refresh re-reads only the current minute and the ``RECHECK`` minutes before it
(a run whose transaction commits just after its minute closed still lands there), and
the first read after Flower starts reads the hour once. Both queries read an index
range: finished runs on ``(status, finished_at)``, started runs on the partial
``jobs_lane_started`` index ``(lane, started_at)``; PostgreSQL computes the percentiles in
the query, SQLite's rows are read (at most ``MAX_ROWS`` a read) and computed here.
"""
from __future__ import annotations

import datetime as dt
import threading
from collections import defaultdict
from dataclasses import dataclass, field

from django.db import connection
from django.db.models import Count, Q
from django.db.models.functions import TruncMinute
from django.utils import timezone

from jobs.models import Job
from monitoring.snapshot import RAN, percentile
from routing import priorities, topology

#: Minutes shown, the current (incomplete) one last.
MINUTES = 60
#: Closed minutes read again on each refresh (late commits).
RECHECK = 2
#: Most started runs read per refresh on SQLite (PostgreSQL reads none: it aggregates).
MAX_ROWS = 50_000
MINUTE = dt.timedelta(minutes=1)

LaneTier = tuple[str, str]


@dataclass
class MinutePoint:
    """One lane and tier's minute: runs finished (and failed of them), runs started, and
    the wait percentiles (seconds) of those started (``None`` when none started)."""

    done: int = 0
    failed: int = 0
    started: int = 0
    wait_p50: float | None = None
    wait_p95: float | None = None


@dataclass
class LaneTierSeries:
    lane: str
    tier: str
    done: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    started: list[int] = field(default_factory=list)
    wait_p50: list[float | None] = field(default_factory=list)
    wait_p95: list[float | None] = field(default_factory=list)


def floor_minute(moment: dt.datetime) -> dt.datetime:
    return moment.replace(second=0, microsecond=0)


def _finished_by_minute(since: dt.datetime, until: dt.datetime,
                        points: dict[dt.datetime, dict[LaneTier, MinutePoint]]) -> None:
    rows = (Job.objects.filter(status__in=RAN, finished_at__gte=since, finished_at__lt=until)
            .order_by().annotate(minute=TruncMinute("finished_at"))
            .values("lane", "tier", "minute")
            .annotate(done=Count("id"), failed=Count("id", filter=Q(status=Job.Status.FAILED))))
    for r in rows:
        point = points[r["minute"]].setdefault((r["lane"], r["tier"]), MinutePoint())
        point.done, point.failed = r["done"], r["failed"]


_PG_WAITS_BY_MINUTE = """
SELECT lane, tier, date_trunc('minute', started_at) AS minute, count(*),
       percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (
         ORDER BY EXTRACT(EPOCH FROM started_at - COALESCE(run_at, submitted_at)))
FROM jobs_job
WHERE lane = ANY(%(lanes)s) AND started_at >= %(since)s AND started_at < %(until)s
GROUP BY 1, 2, 3
"""


def _waits_by_minute(since: dt.datetime, until: dt.datetime,
                     points: dict[dt.datetime, dict[LaneTier, MinutePoint]]) -> None:
    """Runs started in each minute and their wait percentiles (due → started)."""
    lanes = [lane.name for lane in topology.LANES]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_PG_WAITS_BY_MINUTE, {"lanes": lanes, "since": since,
                                                 "until": until})
            for lane, tier, minute, n, (p50, p95) in cursor.fetchall():
                point = points[minute].setdefault((lane, tier), MinutePoint())
                point.started = n
                point.wait_p50, point.wait_p95 = (round(max(0.0, float(p50)), 4),
                                                  round(max(0.0, float(p95)), 4))
        return
    waits: dict[tuple[dt.datetime, str, str], list[float]] = defaultdict(list)
    rows = (Job.objects.filter(lane__in=lanes, started_at__gte=since, started_at__lt=until)
            .order_by("-started_at")
            .values_list("lane", "tier", "started_at", "run_at", "submitted_at")[:MAX_ROWS])
    for lane, tier, started, run_at, submitted in rows:
        waits[(floor_minute(started), lane, tier)].append(
            max(0.0, (started - (run_at or submitted)).total_seconds()))
    for (minute, lane, tier), values in waits.items():
        values.sort()
        point = points[minute].setdefault((lane, tier), MinutePoint())
        point.started = len(values)
        point.wait_p50 = round(percentile(values, 50), 4)
        point.wait_p95 = round(percentile(values, 95), 4)


def minute_points(since: dt.datetime, until: dt.datetime
                  ) -> dict[dt.datetime, dict[LaneTier, MinutePoint]]:
    """``minute -> (lane, tier) -> MinutePoint`` for the minutes in ``[since, until)``
    (both on a minute boundary); a minute or lane and tier with no run is absent."""
    points: dict[dt.datetime, dict[LaneTier, MinutePoint]] = defaultdict(dict)
    _finished_by_minute(since, until, points)
    _waits_by_minute(since, until, points)
    return points


class LaneTierHistory:
    """Per-minute points of the last ``minutes`` minutes, closed minutes kept in memory.

    One per Flower process, shared by every request (thread-safe: the ORM runs on
    Flower's executor threads).
    """

    def __init__(self, minutes: int = MINUTES, recheck: int = RECHECK) -> None:
        self.minutes = minutes
        self.recheck = recheck
        self._closed: dict[dt.datetime, dict[LaneTier, MinutePoint]] = {}
        self._lock = threading.Lock()
        #: Minutes read from the job table by the last ``read`` (for tests and logs).
        self.last_read_minutes = 0

    def read(self, now: dt.datetime | None = None) -> dict:
        """The series as JSON-ready data: ``minutes`` (ISO start of each minute, oldest
        first) and per lane and tier (premium first) its lists, one value a minute."""
        now = now or timezone.now()
        current = floor_minute(now)
        first = current - (self.minutes - 1) * MINUTE
        slots = [first + i * MINUTE for i in range(self.minutes)]
        with self._lock:
            for minute in [m for m in self._closed if m < first]:
                del self._closed[minute]
            recheck_from = current - self.recheck * MINUTE
            missing = [m for m in slots if m < recheck_from and m not in self._closed]
            read_from = min([*missing, recheck_from])
            read_from = max(read_from, first)
            points = minute_points(read_from, current + MINUTE)
            self.last_read_minutes = int((current + MINUTE - read_from) / MINUTE)
            for i in range(self.last_read_minutes - 1):  # every read minute but the current
                minute = read_from + i * MINUTE
                self._closed[minute] = points.get(minute, {})
            closed = dict(self._closed)
        current_points = points.get(current, {})
        out = []
        for lane in topology.LANES:
            for tier in reversed(priorities.TIERS):  # premium first: served first
                series = LaneTierSeries(lane=lane.name, tier=tier.name)
                for minute in slots:
                    by_key = current_points if minute == current else closed.get(minute, {})
                    point = by_key.get((lane.name, tier.name)) or MinutePoint()
                    series.done.append(point.done)
                    series.failed.append(point.failed)
                    series.started.append(point.started)
                    series.wait_p50.append(point.wait_p50)
                    series.wait_p95.append(point.wait_p95)
                out.append(series.__dict__)
        return {"minutes": [m.isoformat() for m in slots], "series": out}

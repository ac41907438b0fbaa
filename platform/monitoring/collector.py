"""Gauges read when ``/metrics`` is scraped: the broker's view of each lane
(management API) and the job table's view of each lane and tier.

Computed at scrape time in the process that answers, so they need no
multiprocess bookkeeping and are never stale.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time

from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from monitoring import snapshot
from routing import priorities, topology
from routing.management import ManagementError

logger = logging.getLogger(__name__)
#: Seconds of starts behind the per-tenant share gauge.
SHARE_WINDOW = 300


class QueueCollector(Collector):
    """Backlog, consumers and oldest waiting job, per lane (and tier)."""

    def collect(self):
        up = GaugeMetricFamily("switchyard_management_api_up",
                               "1 when the RabbitMQ management API answered this scrape.")
        ready = GaugeMetricFamily("switchyard_queue_messages_ready",
                                  "Messages ready for delivery in the lane's queue (broker).",
                                  labels=["lane"])
        unacked = GaugeMetricFamily("switchyard_queue_messages_unacked",
                                    "Messages delivered to a worker and not yet acknowledged.",
                                    labels=["lane"])
        consumers = GaugeMetricFamily("switchyard_queue_consumers",
                                      "Consumers (worker channels) on the lane's queue.",
                                      labels=["lane"])
        dead = GaugeMetricFamily("switchyard_dead_letter_messages",
                                 "Messages in the lane's dead-letter queue.", labels=["lane"])
        try:
            queues = snapshot.broker_queues()
        except ManagementError as exc:
            logger.warning("metrics: management API unavailable: %s", exc)
            queues = None
        up.add_metric([], 0 if queues is None else 1)
        for lane in topology.LANES:
            q = (queues or {}).get(lane.queue)
            if q is not None:
                ready.add_metric([lane.name], q.get("messages_ready", 0))
                unacked.add_metric([lane.name], q.get("messages_unacknowledged", 0))
                consumers.add_metric([lane.name], q.get("consumers", 0))
            d = (queues or {}).get(lane.dead_queue)
            if d is not None:
                dead.add_metric([lane.name], d.get("messages", 0))
        yield from (up, ready, unacked, consumers, dead)

        now = timezone.now()
        waiting = GaugeMetricFamily(
            "switchyard_jobs_waiting",
            "Jobs due and not started (queued or waiting for a retry), from the job table.",
            labels=["lane", "tier"])
        oldest = GaugeMetricFamily(
            "switchyard_oldest_waiting_job_age_seconds",
            "Seconds since the oldest waiting job became due (0 when none waits).",
            labels=["lane", "tier"])
        running = GaugeMetricFamily("switchyard_jobs_running", "Jobs started and not finished.",
                                    labels=["lane", "tier"])
        by_key = snapshot.waiting_by_lane_tier(now)
        runs = snapshot.running_by_lane_tier()
        for lane in topology.LANES:
            for tier in priorities.TIERS:
                key = (lane.name, tier.name)
                count, due = by_key.get(key, (0, None))
                waiting.add_metric(list(key), count)
                oldest.add_metric(list(key), max(0.0, (now - due).total_seconds()) if due else 0)
                running.add_metric(list(key), runs.get(key, 0))
        yield from (waiting, oldest, running)

        # Per-tenant share: bounded to the top tenants of each lane plus "(others)",
        # so a scrape has at most (TOP_TENANTS + 1) series per lane, whatever the
        # number of tenants (the counters above never carry a tenant label).
        share = GaugeMetricFamily(
            "switchyard_lane_tenant_share",
            f"Share of the lane's runs started in the last {SHARE_WINDOW} s, for its top "
            f"{snapshot.TOP_TENANTS} tenants by starts and '{snapshot.OTHERS}' for the rest.",
            labels=["lane", "tenant"])
        since = now - dt.timedelta(seconds=SHARE_WINDOW)
        for lane_name, tenants in snapshot.tenant_shares(since, now).items():
            for t in tenants:
                share.add_metric([lane_name, t.tenant], t.share)
        yield share

        health = snapshot.workflow_health(now)
        for name, doc, value in (
                ("switchyard_workflows_running", "Workflows running.", health.running),
                ("switchyard_workflows_stuck", "Running workflows none of whose steps waits "
                 "or runs (docs/runbooks/workflow-stuck.md).", health.stuck),
                ("switchyard_oldest_running_workflow_age_seconds",
                 "Seconds since the oldest running workflow was accepted (0: none runs).",
                 health.oldest_running_seconds)):
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], value)
            yield gauge


class CachedCollector(Collector):
    """``collector``'s metrics, computed again only when older than ``ttl`` seconds.

    A scrape of ``/metrics`` reads the management API and runs aggregate queries
    over the job table; several Prometheus servers, or anyone holding the token,
    scraping often would turn that into load on the database. Concurrent scrapes
    of one process share one computation (the lock)."""

    def __init__(self, collector: Collector, ttl: float = 5.0) -> None:
        self.collector, self.ttl = collector, ttl
        self._lock = threading.Lock()
        self._families: list | None = None
        self._at = 0.0

    def collect(self):
        with self._lock:
            if self._families is None or time.monotonic() - self._at >= self.ttl:
                self._families = list(self.collector.collect())
                self._at = time.monotonic()
            return list(self._families)

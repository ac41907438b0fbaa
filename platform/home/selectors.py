"""Reads behind the landing page (web): is the broker reachable, is the database, and how
much waits in each lane.

Anyone may load ``/``, so each read is cheap and bounded: one ``SELECT 1``, one AMQP
connection opened and closed with short timeouts, one management API call for the lane
queues, all at most once per ``SWITCHYARD_HOME_HEALTH_SECONDS`` per process, however often
the page is loaded. The answer holds no tenant data: lane totals only. The reason of a
failed check (it can name hosts and users) is for staff; visitors see only that it failed.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import connection
from kombu import Connection

from monitoring.snapshot import broker_queues
from routing import topology

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    """One yes/no answer; ``detail`` says why it is no (staff only)."""

    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class LaneBacklog:
    """Messages in a lane's queue (ready + delivered, not yet acknowledged) and in its
    dead-letter queue; ``None`` when the management API did not answer."""

    lane_name: str
    queued: int | None
    dead: int | None


@dataclass(frozen=True)
class PlatformHealth:
    checks: tuple[Check, ...]
    lanes: tuple[LaneBacklog, ...]
    checked_at: float  # time.time() of the reads

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


def _database() -> Check:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any failure means unreachable
        logger.warning("landing page: the database is unreachable: %s", exc)
        return Check("database", False, str(exc))
    return Check("database", True)


def _broker() -> Check:
    try:
        with Connection(settings.CELERY_BROKER_URL, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=0, timeout=3)
    except Exception as exc:  # refused, timed out, login refused...
        logger.warning("landing page: RabbitMQ is unreachable: %s", exc)
        return Check("broker", False, str(exc) or type(exc).__name__)
    return Check("broker", True)


def _backlog() -> tuple[Check, tuple[LaneBacklog, ...]]:
    try:
        queues = broker_queues()
    except Exception as exc:  # ManagementError, or an answer without the queues
        logger.warning("landing page: the management API does not answer: %s", exc)
        return (Check("management API", False, str(exc)),
                tuple(LaneBacklog(lane.name, None, None) for lane in topology.LANES))

    def count(name: str) -> int | None:
        queue = queues.get(name)
        return None if queue is None else int(queue.get("messages", 0))

    return (Check("management API", True),
            tuple(LaneBacklog(lane.name, count(lane.queue), count(lane.dead_queue))
                  for lane in topology.LANES))


def _read() -> PlatformHealth:
    management, lanes = _backlog()
    return PlatformHealth(checks=(_broker(), management, _database()), lanes=lanes,
                          checked_at=time.time())


_lock = threading.Lock()
_last: PlatformHealth | None = None


def platform_health() -> PlatformHealth:
    """The platform's health, read at most once per SWITCHYARD_HOME_HEALTH_SECONDS."""
    global _last
    with _lock:
        max_age = settings.SWITCHYARD_HOME_HEALTH_SECONDS
        if _last is None or time.time() - _last.checked_at >= max_age:
            _last = _read()
        return _last

"""Finding jobs whose message the broker lost, and publishing them again (``job_reconcile``).

The job table is the source of truth; a lane queue holds a copy of the message
of each job published to it. RabbitMQ can lose a copy after confirming it: a
purged or deleted queue, a lost node holding a classic queue, a message a
worker of another release rejected as an unknown task (it goes to
``<lane>.dead`` while its job stays ``queued``). Such a job would stay
``queued`` for ever, and in a windowed lane hold a slot of its tenant's window.

The census, per lane: *recorded* is the jobs whose message must be in the
queue, those waiting or started (a started job's message stays unacknowledged
until its outcome is recorded: ``task_acks_late``) and published before a
cutoff; *in broker* is the queue's messages, ready and unacknowledged, from the
management API. Nothing lost means ``in broker >= recorded``, whatever runs
meanwhile:

* a message is in the queue before its job is recorded as published (the
  confirm comes first) and leaves it only after its job's outcome is recorded,
  so a job counted in *recorded* has its message counted in *in broker* unless
  it was lost;
* the management API's figures are up to its statistics interval old (5 s by
  default): only jobs published more than ``SWITCHYARD_RECONCILE_AGE`` seconds
  ago are counted, so every message they had was already in those figures;
* stale copies (an older publication of a job), cancelled jobs' messages and
  Celery-native messages not yet admitted are in the queue with no job
  counted for them: they can hide a loss until they are consumed, never
  invent one.

When ``recorded - in broker = n > 0``, the ``n`` waiting jobs published longest
ago are set back to unpublished, and the dispatcher publishes them with a new
publication number (fair-share windows apply as usual). If a copy of one of them
was in fact still queued, the worker runs the newest publication and
acknowledges the other unrun (``jobs.task``): never twice. A purge or a deleted
queue loses the oldest messages, so the oldest are the ones taken; a loss
elsewhere in a backlog is found again once the extra copies are consumed.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from jobs.dispatch import try_transaction_lock
from jobs.models import Job
from jobs.signals import job_events_for
from routing import topology
from routing.management import Management, ManagementError, vhost_of
from switchyard.clock import platform_now

logger = logging.getLogger(__name__)

#: Most jobs set back to unpublished per lane by one census.
MAX_RECOVERED = 5000


@dataclass(frozen=True)
class LaneCensus:
    """One lane's census: jobs whose message must be in its queue, and the queue's messages."""

    lane: str
    queue: str
    recorded: int
    in_broker: int | None  # None: the broker's figures could not be read

    @property
    def missing(self) -> int:
        if self.in_broker is None:
            return 0
        return max(0, self.recorded - self.in_broker)


def queue_depths(management: Management | None = None) -> dict[str, int | None]:
    """``queue name -> messages (ready + unacknowledged)`` for every lane queue; 0 for a
    queue that does not exist, None where the management API has no figure yet."""
    management = management or Management.for_broker(settings.CELERY_BROKER_URL)
    vhost = vhost_of(settings.CELERY_BROKER_URL)
    depths: dict[str, int | None] = {}
    for lane in topology.LANES:
        record = management.queue(vhost, lane.queue)
        if record is None:
            depths[lane.queue] = 0
        else:
            messages = record.get("messages")
            depths[lane.queue] = int(messages) if isinstance(messages, int) else None
    return depths


def job_reconcile(*, now: dt.datetime | None = None,
                  management: Management | None = None) -> list[LaneCensus]:
    """Take every lane's census; set the jobs found missing back to unpublished.

    Returns the censuses. Where the broker's figures cannot be read, nothing is
    changed (a census needs both sides)."""
    try:
        depths = queue_depths(management)
    except ManagementError as exc:
        logger.warning("broker census skipped: the management API did not answer (%s)", exc)
        return []
    # Counted after the broker's figures were read: a job finishing in between is
    # in the figures and not counted here, which can only hide a loss for a pass.
    now = now or platform_now()
    cutoff = now - dt.timedelta(seconds=settings.SWITCHYARD_RECONCILE_AGE)
    censuses = []
    for lane in topology.LANES:
        with transaction.atomic():
            # One dispatcher takes a lane's census at a time.
            if not try_transaction_lock(f"switchyard-reconcile:{lane.name}"):
                continue
            counted = Job.objects.filter(lane=lane.name, status__in=Job.UNFINISHED,
                                         published_at__isnull=False, published_at__lt=cutoff)
            census = LaneCensus(lane=lane.name, queue=lane.queue, recorded=counted.count(),
                                in_broker=depths.get(lane.queue))
            censuses.append(census)
            if census.missing:
                _recover(census, cutoff)
    return censuses


def _recover(census: LaneCensus, cutoff: dt.datetime) -> None:
    lost = list(Job.objects.select_for_update(skip_locked=True)
                .filter(lane=census.lane, status__in=Job.WAITING, published_at__isnull=False,
                        published_at__lt=cutoff)
                .order_by("published_at")[:min(census.missing, MAX_RECOVERED)])
    if not lost:
        return
    note = (f"its message was not in queue {census.queue!r} ({census.recorded} jobs recorded "
            f"there, {census.in_broker} messages); published again")
    ids = [job.id for job in lost]
    Job.objects.filter(id__in=ids, status__in=Job.WAITING, published_at__isnull=False).update(
        published_at=None)
    # A retrying job keeps its last failure as its error; a queued one gets the note.
    Job.objects.filter(id__in=ids, error="").update(error=note)
    transaction.on_commit(lambda: job_events_for("recovered", lost))
    logger.warning("lane %s: %d job(s) missing from queue %r (%d recorded, %d in the "
                   "broker) set to be published again", census.lane, len(lost), census.queue,
                   census.recorded, census.in_broker)

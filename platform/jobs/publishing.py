"""Handing a recorded job to the broker: the message, its headers, and the record of it.

Every publication of a job goes through ``send_job``: the web right after the
accepting transaction commits (``publish_after_commit``, on a thread of its own
so a blocked broker costs a request a deadline, never a hang), the worker for a
follow-up link (``publish_or_defer``), the dispatcher for what is due
(``jobs.dispatch``) and the operators' replay of dead letters (``jobs.dlq``).
Each publication carries the job's publication number; the worker runs only
the newest copy (``jobs.task``). The bulk path (``jobs.bulk``) writes the same
messages byte for byte without Celery, for speed.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import signal
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models.functions import Now

import routing.celery_config as routing_celery
from jobs.models import Job
from jobs.signals import job_event_send, timing_headers
from routing import wire
from switchyard.amqp import Unroutable
from switchyard.celery import app
from switchyard.database import DATABASE_UNAVAILABLE
from switchyard.logs import job_fields

logger = logging.getLogger(__name__)

#: Message header carrying the job's publication number: a delivery whose number
#: is below the job record's is a stale copy and is acknowledged unrun.
PUBLICATION_HEADER = "switchyard_publication"
#: Set on messages of jobs with a ``link``: the worker looks the link up on success.
LINK_HEADER = "switchyard_link"

#: Per-message header entries; everything else comes from the template.
_VARIABLE_HEADERS = ("id", "root_id", "expires", "kwargsrepr", LINK_HEADER)
_KWARGSREPR_MAX = 1024  # Celery's argsrepr_maxsize
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
#: The web publishes right after commit; the dispatcher only steps in for jobs
#: left unpublished this long (so both do not publish the same job).
PUBLISH_GRACE = dt.timedelta(seconds=3)


def has_followups(job: Job) -> bool:
    """Does the job's end do more than one UPDATE (a ``link`` to submit, a workflow's
    steps to release)? Its messages then say so (``LINK_HEADER``)."""
    return bool(job.link or job.workflow_id)


def message_headers(job: Job, *, publication: int, promoted: bool = False) -> dict:
    """The Switchyard headers of a message of ``job``: tenant and tier (checked on
    publish, ``routing.celery_config.enforce_on_publish``), publication number,
    promotion and link flags, and the times observers measure the wait from."""
    headers = {routing_celery.TENANT_HEADER: job.tenant_name,
               routing_celery.TIER_HEADER: job.tier,
               PUBLICATION_HEADER: publication}
    if promoted:
        headers[routing_celery.PROMOTED_HEADER] = 1
    if has_followups(job):
        headers[LINK_HEADER] = 1
    headers.update(timing_headers(job))  # observers time the wait (jobs.signals)
    return headers


def send_job(job: Job, producer=None, promoted: bool = False, **publish_options) -> None:
    """Put ``job``'s message in the broker with its recorded lane, tier, priority and
    publication number (the caller counts ``job.publications`` up and records it)."""
    app.send_task(
        job.task,
        kwargs=job.params,
        task_id=str(job.id),
        priority=job.priority,
        expires=job.expires_at,
        headers=message_headers(job, publication=job.publications, promoted=promoted),
        producer=producer,
        # The job's recorded lane, not the task's declared one: a task may pick
        # its lane from its params (SwitchyardTask.lane_for) when it is submitted.
        **routing_celery.route_for(job.task, job.lane, job.tier),
        **publish_options,
    )


class _CapturingProducer:
    """Stands in for a kombu producer so ``send_task`` hands over the message it
    would publish instead of publishing it."""

    def __init__(self) -> None:
        self.connection = self
        self.published: list[tuple[Any, dict[str, Any]]] = []

    def _reraise_as_library_errors(self):
        return contextlib.nullcontext()

    def publish(self, body, **kwargs) -> None:
        if kwargs.get("exchange") != "celeryev":  # the task-sent event
            self.published.append((body, kwargs))


@dataclass
class MessageTemplate:
    """One task's message for one tenant, from Celery itself: ``message`` fills in a
    job's own id, params, priority and link flag, byte for byte what ``send_job``
    would publish (the bulk path, ``jobs.bulk``, writes these without Celery)."""

    exchange: str
    routing_key: str
    constant_entries: bytes
    properties: wire.Properties

    @classmethod
    def build(cls, job: Job) -> MessageTemplate:
        capture = _CapturingProducer()
        # Timing headers are constant too: a message is only built for a job due
        # now, and every job of a submission shares its submission time.
        app.send_task(job.task, kwargs={}, task_id=str(job.id), priority=job.priority,
                      headers=message_headers(job, publication=1), producer=capture,
                      **routing_celery.route_for(job.task, job.lane, job.tier))
        (_, sent), = capture.published
        headers = {k: v for k, v in sent["headers"].items() if k not in _VARIABLE_HEADERS}
        return cls(exchange=sent["exchange"], routing_key=sent["routing_key"],
                   constant_entries=wire.encode_table_entries(headers),
                   properties=wire.Properties(delivery_mode=sent["delivery_mode"],
                                              reply_to=sent.get("reply_to"),
                                              user_id=sent.get("user_id")))

    def message(self, *, job_id: str, params: Mapping[str, Any], priority: int,
                expires_at: dt.datetime | None, link: bool) -> wire.Outgoing:
        variable = {"id": job_id, "root_id": job_id,
                    "expires": None,  # checked on the job record (jobs.task.job_begin)
                    "kwargsrepr": repr(params)[:_KWARGSREPR_MAX]}
        if link:
            variable[LINK_HEADER] = 1
        entries = self.constant_entries + wire.encode_table_entries(variable)
        body = json.dumps([[], params, _EMBED]).encode()
        return wire.Outgoing(key=job_id, exchange=self.exchange, routing_key=self.routing_key,
                             properties=self.properties.encode(header_entries=entries,
                                                               priority=priority,
                                                               correlation_id=job_id),
                             body=body)


def publish_job(job: Job, producer=None, **publish_options) -> None:
    """Publish ``job`` now with its recorded routing, and note it as published."""
    job.publications += 1
    send_job(job, producer=producer, **publish_options)
    _mark_published(job)


def _mark_published(job: Job) -> None:
    # The database's clock: promotion compares published_at with it (jobs.dispatch).
    Job.objects.filter(id=job.id).update(published_at=Now(), publications=job.publications)


def _count_if_returned(job: Job, exc: BaseException) -> None:
    """Count a publication the broker returned unrouted (``switchyard.amqp.Unroutable``)."""
    if isinstance(exc, Unroutable):
        job_event_send("returned", lane=job.lane, tier=job.tier, task=job.task)


def publish_or_defer(job: Job) -> None:
    """Publish ``job`` if the broker takes it; else the dispatcher publishes it after
    ``PUBLISH_GRACE`` (it is recorded, unpublished). A paused tenant's job (a link's
    follow-up, a released workflow step) is left unpublished: the dispatcher
    publishes it once the tenant is resumed."""
    if job.tenant_id is not None and job.tenant.paused_at is not None:
        return
    try:
        publish_job(job)
    except Exception as exc:  # the dispatcher publishes it after PUBLISH_GRACE
        _count_if_returned(job, exc)
        logger.warning("job %s recorded but not yet published (%s)", job.id, exc,
                       extra=job_fields(job))


def signals_to_main_thread() -> None:
    """Called first in each thread Switchyard starts: a process-wide SIGTERM is taken by
    the main thread only, so that holding it there (``jobs.task``: from the end of a run
    until its outcome is recorded) holds it for the whole process."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


#: One thread publishes for the web, so a request can stop waiting for a broker
#: that blocks (resource alarm) or hangs: the publish gets a deadline whatever
#: stage it is stuck in (connect, channel open, confirm).
_web_publisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="switchyard-publish",
                                    initializer=signals_to_main_thread)

#: The publisher thread's latest publish and when it was handed over.
_last_publish: tuple[Future, float] | None = None
_last_publish_lock = threading.Lock()


def _publisher_stuck(deadline: float) -> bool:
    """True while an earlier publish has been stuck past its deadline (a blocked or hung
    broker): later requests then skip the wait instead of queueing behind it."""
    last = _last_publish
    return last is not None and not last[0].done() and time.monotonic() - last[1] > deadline


def publish_after_commit(job: Job) -> None:
    """Publish within ``SWITCHYARD_PUBLISH_DEADLINE`` seconds, else leave it to the dispatcher.

    The broker call runs on the publisher thread; the database is only touched
    here. A publish that finishes after the deadline has still put the message
    in the broker: the dispatcher then publishes it again, and the worker runs
    whichever copy comes first and acknowledges the other unrun (``jobs.task``).
    While an earlier publish is still stuck past its deadline, the job is left
    to the dispatcher at once: a blocked broker costs one request the deadline,
    not every request behind it, and no publishes pile up on the thread.
    """
    global _last_publish
    deadline = settings.SWITCHYARD_PUBLISH_DEADLINE
    with _last_publish_lock:
        if _publisher_stuck(deadline):
            logger.warning("job %s accepted; the broker has not confirmed an earlier publish "
                           "for over %.1f s, the dispatcher will publish it", job.id, deadline,
                           extra=job_fields(job))
            return
        job.publications += 1
        options = {"retry": True, "confirm_timeout": deadline / 2, "timeout": deadline / 2,
                   "retry_policy": {"max_retries": 1, "interval_start": 0,
                                    "interval_step": 0.1, "interval_max": 0.1}}
        future = _web_publisher.submit(send_job, job, **options)
        _last_publish = (future, time.monotonic())
    try:
        future.result(timeout=deadline)
    except FutureTimeout:
        logger.warning("job %s accepted; the broker did not confirm within %.1f s (blocked "
                       "or slow), the dispatcher will publish it", job.id, deadline,
                       extra=job_fields(job))
        return
    except Exception as exc:  # broker down, refusing or returning: the dispatcher will retry
        _count_if_returned(job, exc)
        logger.warning("job %s accepted but not yet published (%s); the dispatcher will "
                       "publish it", job.id, exc, extra=job_fields(job))
        return
    try:
        _mark_published(job)
    except DATABASE_UNAVAILABLE as exc:
        # The job is committed and in the broker: the request must still answer 202
        # (a 503 would have the client submit it again). Left unmarked, the dispatcher
        # publishes it once more after PUBLISH_GRACE; the worker runs one copy.
        logger.warning("job %s accepted and published, not marked so (%s); the dispatcher "
                       "will publish it again", job.id, exc,
                       extra=job_fields(job))

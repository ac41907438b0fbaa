"""Dead-letter queues: look into, replay and purge ``<lane>.dead`` (``manage.py dlq``).

A message reaches ``<lane>.dead`` when a worker rejects it without requeue: a
poison message that killed its worker on every delivery (``jobs.task.job_begin``),
a native message admission refused (unknown tenant, positional arguments), or
a body the worker could not decode (``switchyard.worker``, with the reason in
``x-switchyard-reason``). Its job record, when there is one, is ``dead``.

Looking never consumes: messages are fetched unacknowledged and handed back
when the channel closes, in their order. Replaying a message puts its *own*
job record back to ``queued`` (same id, tenant, tier, priority and
parameters; a note of the replay in ``error`` until it runs; its attempts
counted afresh) and publishes it again; only then is the dead copy
acknowledged. A crash in between leaves the copy in the queue and the job
queued: replaying again is safe, the worker runs one publication only.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from pika.adapters.blocking_connection import BlockingChannel

import routing.celery_config as routing_celery
from jobs.models import Job
from jobs.publishing import publish_job
from routing import topology
from routing.broker import connect
from switchyard.logs import job_fields
from switchyard.worker import REASON_HEADER

logger = logging.getLogger(__name__)

#: Jobs whose dead copy is replayed: they ended without running to success.
REPLAYABLE = (Job.Status.DEAD, Job.Status.FAILED, Job.Status.EXPIRED)


@dataclass
class DeadMessage:
    """One message of a dead-letter queue, with its job record if it has one."""

    position: int
    routing_key: str
    headers: dict[str, Any]
    properties: dict[str, Any]
    body: bytes
    job: Job | None = None

    @property
    def job_id(self) -> str | None:
        return self.headers.get("id") or self.properties.get("correlation_id")

    @property
    def task(self) -> str:
        return self.headers.get("task") or "?"

    @property
    def deaths(self) -> int:
        return sum(int(d.get("count", 1)) for d in self.headers.get("x-death") or [])

    @property
    def reason(self) -> str:
        """Why it died: Switchyard's own reason, else the broker's, plus the job's error."""
        if self.headers.get(REASON_HEADER):
            return str(self.headers[REASON_HEADER])
        death = (self.headers.get("x-death") or [{}])[0]
        why = str(death.get("reason", "published to the dead-letter exchange"))
        if self.job is not None and self.job.error:
            why += f": {self.job.error}"
        return why

    def summary(self) -> dict[str, Any]:
        """What ``dlq show`` prints: the message's routing, headers, body and job record."""
        try:
            body: Any = json.loads(self.body)
        except ValueError:
            body = self.body[:2000].decode("utf-8", errors="replace")
        job = None
        if self.job is not None:
            job = {
                "status": self.job.status, "tenant": self.job.tenant_name,
                "tier": self.job.tier, "priority": self.job.priority,
                "attempts": self.job.attempts, "error": self.job.error,
                "submitted_at": self.job.submitted_at, "finished_at": self.job.finished_at,
            }
        return {"position": self.position, "job_id": self.job_id, "task": self.task,
                "routing_key": self.routing_key, "reason": self.reason,
                "deaths": self.deaths, "headers": self.headers,
                "priority": self.properties.get("priority"), "body": body, "job": job}


def dead_queue(lane: str) -> str:
    """``<lane>.dead`` for a lane of the topology (``KeyError`` names the lanes)."""
    return topology.lane(lane).dead_queue


@contextmanager
def _channel() -> Iterator[BlockingChannel]:
    connection = connect(settings.CELERY_BROKER_URL)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        yield channel
    finally:
        if connection.is_open:
            connection.close()  # hands every unacknowledged message back, in order


def _plain(value: Any) -> Any:
    """Header values as JSON can print them (pika gives bytes and datetimes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def _fetch(channel: BlockingChannel, queue: str, position: int):
    method, props, body = channel.basic_get(queue, auto_ack=False)
    if method is None:
        return None, None
    properties = {k: _plain(v) for k, v in vars(props).items()
                  if v is not None and k != "headers"}
    message = DeadMessage(position=position, routing_key=method.routing_key,
                          headers=_plain(dict(props.headers or {})),
                          properties=properties, body=body or b"")
    return method.delivery_tag, message


def _attach_jobs(messages: list[DeadMessage]) -> None:
    ids = [m.job_id for m in messages if m.job_id]
    jobs = {str(j.id): j for j in Job.objects.select_related("tenant").filter(
        id__in=_valid_ids(ids))}
    for message in messages:
        message.job = jobs.get(str(message.job_id))


def _valid_ids(ids: Collection[str]) -> list[str]:
    import uuid

    valid = []
    for value in ids:
        try:
            valid.append(str(uuid.UUID(str(value))))
        except ValueError:
            continue
    return valid


def dlq_depth(lane: str) -> int:
    """Messages in ``<lane>.dead``."""
    with _channel() as channel:
        return channel.queue_declare(dead_queue(lane), passive=True).method.message_count


def dlq_peek(lane: str, *, limit: int = 100) -> tuple[int, list[DeadMessage]]:
    """``(messages in the queue, the first `limit` of them)``; nothing is consumed."""
    queue = dead_queue(lane)
    found: list[DeadMessage] = []
    with _channel() as channel:
        total = channel.queue_declare(queue, passive=True).method.message_count
        while len(found) < limit:
            _, message = _fetch(channel, queue, len(found) + 1)
            if message is None:
                break
            found.append(message)
    _attach_jobs(found)
    return total, found


def dlq_find(lane: str, job_id: str, *, scan: int = 100_000) -> DeadMessage | None:
    """The dead message of job ``job_id`` (the first of several), or None."""
    queue = dead_queue(lane)
    with _channel() as channel:
        for position in range(1, scan + 1):
            _, message = _fetch(channel, queue, position)
            if message is None:
                return None
            if str(message.job_id) == str(job_id):
                _attach_jobs([message])
                return message
    return None


@dataclass
class ReplayReport:
    replayed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (job id or position, why)
    not_found: list[str] = field(default_factory=list)


def _refusal(message: DeadMessage) -> str | None:
    """Why ``message`` must not be replayed, or None."""
    job = message.job
    if job is None:
        return ("no job record (never decoded or not a task message): inspect it with "
                "`dlq show`, then purge it")
    if job.status == Job.Status.STARTED:
        where = f" on {job.worker}" if job.worker else ""
        return (f"its job is running{where}: replaying would drop that run's outcome and "
                "run it again; replay it once it has ended")
    if job.status in Job.WAITING:
        return f"its job is {job.status}, waiting to run again: this copy is stale (purge it)"
    if job.status not in REPLAYABLE:
        return f"its job is {job.status}; nothing to replay (purge it)"
    if job.tenant_id is None and job.tenant_name != routing_celery.SYSTEM_TENANT:
        return f"admission refused it ({job.error}); it cannot run as it is"
    if job.tenant is not None and not job.tenant.is_active:
        return f"tenant {job.tenant_name!r} is inactive"
    return None


def job_replay(*, job: Job, source: str) -> Job | None:
    """Put ``job`` back to ``queued`` with a note, and publish it again; None if it is
    no longer in a state that may be replayed (``REPLAYABLE``: it ended unsuccessfully).

    Same record: id, tenant, tier, priority, parameters, retry policy and
    links are kept; attempts start again from zero (the deliveries that died
    are over). If the broker refuses the publish, the job waits unpublished
    and the dispatcher publishes it.
    """
    now = timezone.now()
    note = (f"replayed from {source} at {now.isoformat(timespec='seconds')} "
            f"(was {job.status} after {job.attempts} attempt(s): {job.error})")[:5000]
    with transaction.atomic():
        # Conditional: a job that started meanwhile keeps its run and its outcome.
        if not Job.objects.filter(id=job.id, status__in=REPLAYABLE).update(
                status=Job.Status.QUEUED, attempts=0, error=note, result=None, worker="",
                started_at=None, finished_at=None, published_at=None, run_at=None):
            return None
    job.refresh_from_db()
    try:
        publish_job(job)
    except Exception as exc:  # the dispatcher publishes unpublished queued jobs
        logger.warning("job %s replayed but not yet published (%s); the dispatcher will",
                       job.id, exc, extra=job_fields(job))
    return job


def dlq_replay(lane: str, *, job_ids: Collection[str] = (), replay_all: bool = False,
               scan: int = 100_000) -> ReplayReport:
    """Replay the dead messages of ``job_ids`` (or every one with ``replay_all``).

    Each replayed message is acknowledged only after its job was published
    again. Messages not replayed stay in the queue, in their order.
    """
    queue = dead_queue(lane)
    wanted = {str(i) for i in job_ids}
    report = ReplayReport()
    done: set[str] = set()
    with _channel() as channel:
        for position in range(1, scan + 1):
            tag, message = _fetch(channel, queue, position)
            if message is None:
                break
            key = str(message.job_id)
            if not replay_all and key not in wanted:
                continue  # held unacknowledged: handed back when the channel closes
            if key in done:  # a second dead copy of a job just replayed
                channel.basic_ack(tag)
                continue
            _attach_jobs([message])
            refusal = _refusal(message)
            if refusal:
                report.skipped.append((key if message.job_id else f"#{position}", refusal))
                continue
            if job_replay(job=message.job, source=queue) is None:
                report.skipped.append((key, "its job changed state meanwhile; look again"))
                continue
            channel.basic_ack(tag)
            done.add(key)
            report.replayed.append(key)
    report.not_found = sorted(wanted - done - {k for k, _ in report.skipped})
    return report


def dlq_purge(lane: str) -> int:
    """Delete every message of ``<lane>.dead``; return how many. Job records are kept."""
    with _channel() as channel:
        return channel.queue_purge(dead_queue(lane)).method.message_count

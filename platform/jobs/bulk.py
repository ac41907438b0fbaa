"""Bulk submission: thousands of jobs recorded and published in one call.

Run by the web (``POST /api/v1/jobs/bulk``) and the platform's tools (``manage.py
flood``, the benchmarks).

``job_submit`` spends one database transaction and one confirmed publish per
job (about a thousand a second). A service handing over 100,000 jobs needs the
same guarantees at ten times the rate:

1. every job is validated before anything is written (all or nothing);
2. all rows go into PostgreSQL with one ``COPY``, already marked published,
   together with a ``PendingConfirm`` row listing them, in one transaction;
3. the messages (Celery protocol 2, byte for byte what ``send_task`` would
   publish, from a template built by Celery itself) are written in windows
   with publisher confirms pipelined (``routing.wire.ConfirmingPublisher``);
4. jobs the broker did not confirm in time, refused, or returned unrouted
   (no queue bound for their key) are set back to unpublished for the
   dispatcher; then the ``PendingConfirm`` row goes.

If the process dies between 2 and 4, the dispatcher finds the old
``PendingConfirm`` row and publishes its still-queued jobs again
(``jobs.dispatch.job_reclaim_unconfirmed``); a copy that did reach the broker is then older
than the job's publication number and is acknowledged unrun.

The call answers only when the broker has confirmed each job, or its deadline
passed: the outcome says how many are in the broker (``published``), how many
wait for their countdown/eta (``scheduled``) and how many the dispatcher will
publish (``deferred``). No job is reported published before its confirm.
"""
from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import queue
import threading
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from jobs import fairness
from jobs.catalogue import task_lane
from jobs.errors import InvalidSubmission, UnknownTask
from jobs.models import Job, PendingConfirm
from jobs.options import SubmitOptions, check_links, run_option_values, schedule_of
from jobs.publishing import MessageTemplate, signals_to_main_thread
from jobs.quotas import check_quotas
from jobs.signals import job_event_send, job_events_for
from jobs.submission import new_job
from jobs.task import SwitchyardTask
from routing import priorities, topology, wire
from switchyard.celery import app
from switchyard.clock import platform_now
from tenants.models import Tenant

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class BulkJob:
    """One job of a bulk submission."""

    task: str
    params: Mapping[str, Any] = field(default_factory=dict)
    options: SubmitOptions = field(default_factory=SubmitOptions)


@dataclass
class BulkOutcome:
    """What happened to a bulk submission; ``job_ids`` are in submission order."""

    job_ids: list[uuid.UUID]
    published: int = 0  # confirmed by the broker during the call
    scheduled: int = 0  # countdown/eta: the dispatcher publishes them when due
    held: int = 0  # past the tenant's window (fair sharing): the dispatcher releases them
    deferred: int = 0  # recorded; the dispatcher publishes them (broker slow or away)
    returned: int = 0  # returned unrouted (no queue bound): deferred to the dispatcher too
    broker_error: str = ""

    @property
    def accepted(self) -> int:
        return len(self.job_ids)


def _validate(jobs: Sequence[BulkJob], now: dt.datetime):
    """Each job's ``(run_at, expires_at)``; ``InvalidSubmission`` naming
    ``jobs.<i>.<field>`` for the first bad one."""
    known: dict[str, bool] = {}
    schedules = []
    for index, item in enumerate(jobs):
        prefix = f"jobs.{index}"
        if item.task not in known:
            try:
                task_lane(item.task)
            except UnknownTask as exc:
                raise InvalidSubmission(f"{prefix}.task", str(exc)) from None
            known[item.task] = True
        try:
            schedules.append(schedule_of(item.options, now))
            check_links(item.options)
        except InvalidSubmission as exc:
            raise InvalidSubmission(f"{prefix}.{exc.field}", exc.message) from None
        if not isinstance(item.params, Mapping):
            raise InvalidSubmission(f"{prefix}.params", "must be an object")
    return schedules


class BulkInterrupted(Exception):
    """The database failed part way: the jobs in ``outcome`` were accepted (and
    published or left to the dispatcher), the rest were not."""

    def __init__(self, outcome: BulkOutcome, cause: BaseException) -> None:
        super().__init__(f"{outcome.accepted} job(s) accepted before the database failed: "
                         f"{cause}")
        self.outcome = outcome


class _Rows:
    """Turns validated jobs into COPY rows and messages, one template per task."""

    def __init__(self, tenant: Tenant | None, now: dt.datetime) -> None:
        self.tenant, self.now = tenant, now
        self.tier = priorities.tier(tenant.tier) if tenant else priorities.DEFAULT_TIER
        self.columns = list(Job._meta.concrete_fields)
        self.index_of = {f.attname: i for i, f in enumerate(self.columns)}
        self.templates: dict[tuple[str, str], tuple[list[Any], MessageTemplate, Job]] = {}
        self.picks_lane: dict[str, bool] = {}
        #: Free places in the tenant's window per lane (None: no window), read once.
        self.room: dict[str, int | None] = {}
        self.held = 0

    def lane(self, item: BulkJob) -> str:
        """The item's lane: the task's own, unless the task picks it from its
        params (``SwitchyardTask.lane_for``, e.g. media by file size)."""
        task = app.tasks[item.task]
        picks = self.picks_lane.get(item.task)
        if picks is None:
            picks = self.picks_lane[item.task] = (
                type(task).lane_for is not SwitchyardTask.lane_for)
        return task.lane_for(item.params, tenant=self.tenant) if picks else task.lane

    def template(self, task: str, lane: str) -> tuple[list[Any], MessageTemplate, Job]:
        cached = self.templates.get((task, lane))
        if cached is None:
            job = new_job(tenant=self.tenant, task=task, params={}, priority=None, now=self.now)
            job.lane = topology.lane(lane).name
            job.routing_key = topology.routing_key(job.lane, job.tier, task)
            row = [f.get_db_prep_save(f.pre_save(job, add=True), connection)
                   for f in self.columns]
            cached = self.templates[(task, lane)] = (row, MessageTemplate.build(job), job)
        return cached

    def build(self, job_id: uuid.UUID, item: BulkJob, run_at, expires_at):
        """``(values, message, template job)``: the job's own field values (the
        rest is the template's); no message for a job scheduled for later."""
        _, template, job = self.template(item.task, self.lane(item))
        values = {"id": job_id, "params": item.params,
                  "priority": self.tier.place(item.options.priority), "run_at": run_at,
                  "expires_at": expires_at, **run_option_values(item.options)}
        message = None
        if run_at is None and self._hold(job.lane):
            # Past the tenant's window: recorded due now, released by the dispatcher.
            values["run_at"] = self.now
            self.held += 1
        elif run_at is None:
            values["published_at"], values["publications"] = self.now, 1
            message = template.message(job_id=str(job_id), params=item.params,
                                       priority=values["priority"], expires_at=expires_at,
                                       link=item.options.link is not None)
        return values, message, job

    def _hold(self, lane: str) -> bool:
        if lane not in self.room:
            self.room[lane] = fairness.room_for(lane=lane, tier=self.tier.name,
                                                tenant=self.tenant)
        room = self.room[lane]
        if room is None:
            return False
        if room <= 0:
            return True
        self.room[lane] = room - 1
        return False

    def copy_row(self, values: dict[str, Any], job: Job) -> list[Any]:
        """A row for PostgreSQL's COPY: the template's, with this job's values."""
        row = list(self.templates[(job.task, job.lane)][0])
        for name, value in values.items():
            if name in _JSON_FIELDS and value is not None:
                value = json.dumps(value)
            row[self.index_of[name]] = value
        return row

    def instance(self, values: dict[str, Any], job: Job) -> Job:
        new = copy.copy(job)
        new._state = copy.copy(job._state)
        for name, value in values.items():
            setattr(new, name, value)
        return new


_JSON_FIELDS = {"params", "retry_policy", "link", "link_error"}


def _write(rows: _Rows, built: list) -> None:
    """Insert a chunk: one COPY on PostgreSQL (the platform's database), a bulk
    INSERT elsewhere (SQLite for a quick try-out)."""
    if connection.vendor != "postgresql":
        Job.objects.bulk_create([rows.instance(values, job) for values, _, job in built])
        return
    names = ", ".join(f.column for f in rows.columns)
    with connection.cursor() as cursor, cursor.connection.cursor().copy(
            f"COPY {Job._meta.db_table} ({names}) FROM STDIN") as copy_in:
        for values, _, job in built:
            copy_in.write_row(rows.copy_row(values, job))


#: Jobs written and committed per transaction; each committed chunk is
#: published while the next one is written.
CHUNK = 5_000


def job_submit_bulk(*, tenant: Tenant | None, jobs: Sequence[BulkJob],
                    deadline: float | None = None, chunk: int = CHUNK,
                    enforce_quotas: bool = True) -> BulkOutcome:
    """Record ``jobs`` for ``tenant`` and publish them with pipelined confirms.

    All are validated first (``InvalidSubmission`` naming ``jobs.<i>.<field>``,
    nothing written) and counted against the quotas (``QuotaExceeded``;
    ``enforce_quotas=False`` is for the platform's own tools). They
    are then written ``chunk`` at a time, each chunk published as soon as it
    is committed while the next is written, and the call waits up to
    ``deadline`` seconds (``SWITCHYARD_BULK_PUBLISH_DEADLINE``) from the first
    publish for the broker's confirms. A database failure part way raises
    ``BulkInterrupted`` with what was accepted before it.
    """
    if deadline is None:
        deadline = settings.SWITCHYARD_BULK_PUBLISH_DEADLINE
    now = platform_now()
    schedules = _validate(jobs, now)
    ids = [uuid.uuid4() for _ in jobs]
    outcome = BulkOutcome(job_ids=[])
    if not jobs:
        return outcome
    if tenant is not None and enforce_quotas:
        check_quotas(tenant, now, adding=len(jobs), submissions=len(jobs))
    rows = _Rows(tenant, now)
    feed: queue.Queue = queue.Queue()
    publishing = _Publishing(feed, deadline)
    publishing.start()
    pending: list[int] = []
    fed: list[str] = []
    failure: BaseException | None = None
    try:
        for start in range(0, len(jobs), chunk):
            held_before = rows.held
            built = [rows.build(ids[p], jobs[p], *schedules[p])
                     for p in range(start, min(start + chunk, len(jobs)))]
            messages = [message for _, message, _ in built if message is not None]
            with transaction.atomic():
                _write(rows, built)
                if messages:
                    pending.append(PendingConfirm.objects.create(
                        created_at=now, job_ids=[m.key for m in messages]).id)
            outcome.job_ids.extend(ids[start:start + len(built)])
            _count_submitted(rows.tier.name, built)
            outcome.scheduled += len(built) - len(messages) - (rows.held - held_before)
            if messages:
                fed.extend(m.key for m in messages)
                feed.put(messages)
    except Exception as exc:  # database gone part way: keep what was committed
        failure = exc
    finally:
        feed.put(None)
        report = publishing.result()
    outcome.held = rows.held
    _settle(report, fed, outcome, pending)
    if failure is not None and not outcome.job_ids:
        raise failure
    if failure is not None:
        raise BulkInterrupted(outcome, failure) from failure
    return outcome


def _count_submitted(tier: str, built: list) -> None:
    """Tell observers (``jobs.signals``) about a committed chunk, under each
    job's own lane (its template's)."""
    for (lane, task), count in Counter((job.lane, job.task) for _, _, job in built).items():
        job_event_send("submitted", lane=lane, tier=tier, task=task, count=count)


class _Publishing(threading.Thread):
    """Publishes the committed chunks put in ``feed`` (``None`` ends it)."""

    def __init__(self, feed: queue.Queue, deadline: float) -> None:
        super().__init__(name="switchyard-bulk-publish", daemon=True)
        self.feed, self.deadline = feed, deadline
        self.report = wire.PublishReport()

    def _chunks(self):
        while (chunk := self.feed.get()) is not None:
            yield chunk

    def run(self) -> None:
        signals_to_main_thread()
        chunks = self._chunks()
        try:
            with wire.ConfirmingPublisher.from_url(app.conf.broker_url) as publisher:
                self.report = publisher.publish_chunks(chunks, deadline=self.deadline)
        except Exception as exc:  # broker away, or worse: the dispatcher publishes them
            logger.exception("bulk publisher failed") if not isinstance(exc, OSError) else None
            self.report = wire.PublishReport(error=f"{type(exc).__name__}: {exc}")
            for _ in chunks:  # let the writer finish
                pass

    def result(self) -> wire.PublishReport:
        self.join()
        return self.report


def _settle(report: wire.PublishReport, fed: list[str], outcome: BulkOutcome,
            pending: list[int]) -> None:
    """Record what the broker said, then drop the ``PendingConfirm`` rows. A
    job the broker did not positively confirm (nacked, returned unrouted, or no
    answer) is left to the dispatcher, whatever happened to the publisher."""
    outcome.published = len(report.confirmed)
    outcome.broker_error = report.error
    confirmed = set(report.confirmed)
    with transaction.atomic():
        # Returned unrouted (no queue bound for the key: a lane queue being re-declared,
        # a binding removed) or never confirmed: left unpublished for the dispatcher.
        again = [key for key in fed if key not in confirmed]
        if again:
            for part in _parts(again, 5000):
                Job.objects.filter(id__in=part, status=Job.Status.QUEUED).update(
                    published_at=None)
            outcome.deferred = len(again)
            logger.warning("bulk submission: %d job(s) not confirmed by the broker (%s); "
                           "the dispatcher will publish them", len(again),
                           "returned unrouted" if report.returned else report.error or "refused")
        if report.returned:
            outcome.returned = len(report.returned)
            logger.error("bulk submission: %d job(s) returned unrouted: no queue is bound for "
                         "their routing key (python -m routing verify)", len(report.returned))
            returned = list(Job.objects.filter(id__in=report.returned)
                            .only("lane", "tier", "task"))
            transaction.on_commit(lambda: job_events_for("returned", returned))
        PendingConfirm.objects.filter(id__in=pending).delete()


def _parts(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]

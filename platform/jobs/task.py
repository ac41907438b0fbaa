"""The base class of every Switchyard task, and what each delivery does to its job record.

The Celery app names this class by string (``task_cls="jobs.task:SwitchyardTask"``):
Celery imports it at the first task, after Django's apps are loaded, and the wiring
never imports the job lifecycle. Runs in the worker's processes:

* ``SwitchyardTask.__call__`` asks ``job_begin`` whether a delivery may run,
  and hands an exception of the task's code to ``job_raised``;
* the Celery signal handlers below record the other ends of a run (success,
  retry, an ``expires`` Celery enforced itself, a hard time limit); they are
  connected when this module is imported (``JobsConfig.ready`` imports it in
  every process).

Each recorder is one conditional UPDATE by primary key (``jobs.outcomes``): a round
trip per transition, never a read-modify-write race between two deliveries.

Size: one delivery's whole life (begin and the cases it refuses, hand-off to admission,
every end Celery reports), read together when a delivery did or did not run; the
decisions themselves live in ``jobs.admission``, ``jobs.outcomes`` and ``jobs.workflows``.
"""
from __future__ import annotations

import logging
import signal
import time
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Task, signals
from celery.exceptions import Ignore, Reject, Retry
from celery.worker.request import Request
from django.db import close_old_connections
from django.db.models import F, Q
from django.db.models.functions import Now

from jobs import fairness
from jobs.admission import AlreadyRecorded, Refused, job_admit_native, jsonable, native_params
from jobs.calls import platform_call
from jobs.dispatch import job_refill_window
from jobs.errors import PermanentFailure
from jobs.models import Job, start_values
from jobs.outcomes import (
    LOST_DELIVERY_ALLOWANCE,
    job_record_dead,
    job_record_failure,
    job_record_success,
)
from jobs.publishing import LINK_HEADER, PUBLICATION_HEADER
from jobs.senders import Sender, delivery_sender
from jobs.signals import delivery_ended, delivery_labels, delivery_started, job_event_send
from jobs.tenant_work import job_hold_paused
from routing import topology
from switchyard.database import DATABASE_UNAVAILABLE

logger = logging.getLogger(__name__)

#: Seconds between two tries at a database that cannot serve (never a tight loop).
DATABASE_REQUEUE_PAUSE = 1.0
#: Tries at writing a delivery's outcome while the database cannot serve it.
OUTCOME_ATTEMPTS = 3


class DeliveryRequest(Request):
    """Celery's worker-side request, with ``eta`` and ``expires`` left to the job record.

    Stock Celery keeps a message with an ``eta`` unacknowledged in the worker until it
    is due (a countdown of an hour holds a prefetch slot for an hour, and past
    ``consumer_timeout`` the channel closes), and drops a message whose ``expires``
    passed on the worker's clock. Here neither happens in the worker: the task runs
    at once, and ``job_begin`` records the ``eta`` as the job's ``run_at`` (the
    dispatcher publishes it when due) and checks ``expires`` on the database's clock.
    The task's own request keeps both headers for that.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._eta = None
        self._expires = None


class SwitchyardTask(Task):
    """Base class of every Switchyard task.

    A task declares its lane once: ``@app.task(name="media.thumbnail", lane="slow")``.
    The lane gives its queue, routing key and default time limits. ``params_schema``
    (JSON Schema of its keyword arguments) is what the API validates and lists;
    ``public = False`` keeps a platform-internal task out of the API.

    A task whose cost depends on its input (a thumbnail of a 10 MB image or of a
    200 KB one) overrides ``lane_for`` to pick the lane from its parameters.
    """

    lane: str | None = None
    params_schema: dict | None = None
    public: bool = True
    Request = "jobs.task:DeliveryRequest"

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.lane is None:
            return
        lane = topology.lane(cls.lane)  # an unknown lane fails at import, loudly
        if cls.time_limit is None:
            cls.time_limit = lane.time_limit
        if cls.soft_time_limit is None:
            cls.soft_time_limit = lane.soft_time_limit

    def lane_for(self, params: Mapping[str, Any], *, tenant: Any = None) -> str:
        """The lane a job of this task with ``params`` for ``tenant`` (None: the
        platform's own work) runs in; the declared lane by default.

        Asked once per submission (``job_submit``, each batch chunk, a Celery-native
        message's first delivery), never at publish time: the job record keeps the
        answer and every publication of the job follows it. Must be cheap and must
        not fail on bad params (validation refuses those elsewhere).
        """
        return self.lane

    def chunk_lanes(self, chunks: Sequence[Sequence[Any]], *, tenant: Any = None) -> list[str]:
        """``lane_for`` of each batch chunk (``{"items": chunk}``); a task may answer
        all chunks in one go (one query rather than one per chunk)."""
        return [self.lane_for({"items": list(chunk)}, tenant=tenant) for chunk in chunks]

    def apply_async(self, args=None, kwargs=None, task_id=None, producer=None, link=None,
                    link_error=None, shadow=None, **options):
        """Celery's calling API inside the platform (a view, a command, beat): the call
        becomes a job, recorded and published after the surrounding transaction commits
        (``jobs.submission.job_submit``), exactly as if it came through the API.

        The job is the platform's own unless ``tenant=`` (a ``Tenant`` or its name) or a
        ``tenant`` header names one; positional arguments fill the task's parameters;
        ``priority`` is relative (0..9) in the tenant's band; ``countdown``, ``eta`` and
        ``expires`` are kept in the job table; ``queue`` / ``routing_key`` / ``exchange``
        are the task's lane's, whatever is asked. ``link`` / ``link_error`` take
        immutable signatures (``.si()``). Called with the id of an existing job from
        inside its own run (Celery's ``self.retry(countdown=...)``), the job is set to
        run again at that time, from the job table. Returns the job's ``AsyncResult``.
        """
        return platform_call(self, args=args, kwargs=kwargs, task_id=task_id, link=link,
                             link_error=link_error, options=options)

    def __call__(self, *args, **kwargs):
        # Delivered by a broker (not called directly): the job record decides
        # whether this delivery runs. A cancelled, expired or already finished
        # job (a redelivery after a crash) is acknowledged without running.
        if self.request.id and not self.request.called_directly:
            if self.lane is None:
                # A Celery builtin (celery.starmap, celery.map...) would run any task in
                # this process with no job record, tenant or time limit: never from a queue.
                reason = f"task {self.name!r} is not a Switchyard task; it never runs from a queue"
                logger.error("dead-lettering %s: %s", self.request.id, reason)
                raise Reject(reason, requeue=False)
            try:
                params = job_begin(task=self, task_id=self.request.id, args=args, kwargs=kwargs)
            except DATABASE_UNAVAILABLE as exc:
                # SQLite's lock still held past its busy timeout, PostgreSQL away: nothing
                # was recorded, so the message goes back to its queue, unrun, to be
                # delivered again (acknowledging it would leave the job queued forever).
                logger.warning("job %s: the database is unavailable (%s); its message goes "
                               "back to the queue", self.request.id, exc)
                time.sleep(DATABASE_REQUEUE_PAUSE)
                raise Reject(f"database unavailable: {exc}", requeue=True) from exc
            if params is None:
                raise Ignore()
            try:
                return super().__call__(**params)
            except (Ignore, Retry, Reject):
                raise
            except Exception as exc:
                # Dead-letters (raises Reject) a job whose retries are spent;
                # otherwise Celery goes on as usual (task_failure, ack).
                job_raised(task=self, task_id=self.request.id, exception=exc)
                raise
            finally:
                _defer_termination()
        return super().__call__(*args, **kwargs)


# The run is over, its outcome not yet recorded: a SIGTERM now (Celery terminates the
# running late-acked tasks of a worker that lost its broker connection, so that their
# redelivered copy is the only one) would leave a job that did all its work STARTED, and
# its redelivery would run it a second time. SIGTERM is held from the end of the run to
# ``task_postrun`` (after the outcome is written), then acted on.
_TERMINATION = {signal.SIGTERM}


def _defer_termination() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, _TERMINATION)


@signals.task_prerun.connect(dispatch_uid="jobs.task.termination_prerun")
@signals.task_postrun.connect(dispatch_uid="jobs.task.termination_postrun")
def _allow_termination(**_) -> None:
    # At prerun too: no run ever starts with termination held.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _TERMINATION)


def _is_switchyard_task(task) -> bool:
    return getattr(task, "lane", None) is not None


def job_begin(*, task, task_id: str, args, kwargs) -> dict | None:
    """Mark the job started for this delivery; the params to run it with, or None if
    this delivery must not run.

    One conditional UPDATE. Not run: a job cancelled, expired or finished; a
    fresh copy of a job already started (the same job published twice, e.g.
    by the web after its deadline and by the dispatcher); a copy older than the
    job's latest publication (``switchyard_publication`` header); a job past
    its deliveries (``max_attempts`` plus ``LOST_DELIVERY_ALLOWANCE``); a job of a
    paused tenant (set back to unpublished, ``jobs.tenant_work``); a poison
    message that killed its worker every time. That job is marked ``dead`` and
    its message rejected without requeue (``Reject``), so RabbitMQ dead-letters
    it to ``<lane>.dead``, where ``manage.py dlq`` shows and replays it
    (docs/runbooks/poison-messages.md). A message published without Switchyard's submit path
    (Celery-native) is admitted on first sight (``jobs.admission``).

    Every delivery is held to the record, by who sent it (``jobs.senders``): a
    message from the platform's own users runs the job it names; any other runs a
    recorded job only if it is the tenant's own Celery-native message that recorded
    it (same tenant, same params, never re-published by the platform since). Any
    other message naming an existing job runs nothing and is counted (``refused``).

    A fresh delivery may start a waiting job; a redelivery (the broker's
    ``redelivered`` flag) may also restart a ``started`` one, since a worker
    that died mid-task leaves its job there and the requeued message must run it.
    """
    request = task.request
    sender = delivery_sender(request)
    try:
        return _begin(task, task_id, args, kwargs, sender)
    finally:
        if not sender.platform:
            # The record holds a native job's follow-ups (jobs.admission read them):
            # Celery must not dispatch its own after the run.
            request.callbacks = request.errbacks = request.chain = request.chord = None


def _begin(task, task_id: str, args, kwargs, sender: Sender) -> dict | None:
    request = task.request
    redelivered = bool((request.delivery_info or {}).get("redelivered"))
    values = start_values(request.hostname or "")
    try:
        params = native_params(task, args, kwargs) if args else dict(kwargs or {})
    except Refused as exc:
        params = None
        recorded = Job.objects.filter(id=task_id).first()
        if sender.platform and recorded is not None:
            # The platform's own message whose arguments do not fit its task: it can never
            # run as it is.
            job_record_dead(job=recorded, runnable=Job.UNFINISHED, reason=str(exc))
            raise Reject(str(exc), requeue=False) from None
    runnable = Job.objects.filter(id=task_id,
                                  status__in=Job.UNFINISHED if redelivered else Job.WAITING)
    publication = getattr(request, PUBLICATION_HEADER, None)
    if isinstance(publication, int):
        runnable = runnable.filter(publications__lte=publication)
    own = runnable if sender.platform else _own_native(runnable, sender, params)
    # ``expires`` is checked here on the database's clock; Switchyard's messages carry
    # no expires header, so a worker whose clock is off expires nothing early or late.
    fresh = Q(expires_at__isnull=True) | Q(expires_at__gt=Now())
    # A paused tenant's waiting job does not start; a run begun before it goes on.
    unpaused = Q(status=Job.Status.STARTED) | fairness.tenant_not_paused()
    allowed = own.filter(fresh, unpaused,
                         attempts__lt=F("max_attempts") + LOST_DELIVERY_ALLOWANCE)
    if not (sender.platform or redelivered or isinstance(publication, int)):
        # A tenant's own message, most often a first sight (the native path's common case):
        # recorded at once, no read first; if the insert finds the id taken, the message
        # is held to that record.
        try:
            return _admit(task, task_id, args, kwargs, sender)
        except AlreadyRecorded:
            pass
    if allowed.update(**values):
        _started(task, request, sender)
        return params
    job = Job.objects.select_related("tenant").filter(id=task_id).first()
    if job is not None:
        if not sender.platform and not _own_native(
                Job.objects.filter(id=task_id), sender, params).exists():
            _refuse_foreign(task, job, sender, publication)
            return None
        if own.filter(expires_at__lte=Now()).update(
                status=Job.Status.EXPIRED, finished_at=Now(),
                error="expired before a worker could start it"):
            lane, tier, name = delivery_labels(task, request)
            job_event_send("expired", lane=lane, tier=tier, task=name)
            logger.info("job %s expired before it could start; acknowledged unrun", task_id)
            return None
        if job_hold_paused(delivered=own, job=job):
            return None
        if own.exists():  # runnable but out of deliveries: it kills its worker
            reason = (f"gave up after {job.attempts} deliveries without an outcome (the worker "
                      f"was lost each time); message moved to {job.lane}.dead")
            job_record_dead(job=job, runnable=Job.UNFINISHED, reason=reason)
            logger.error("job %s (%s) is a poison message: %s", task_id, job.task, reason)
            raise Reject(reason, requeue=False)
        logger.info("job %s (%s) is not runnable by this delivery; acknowledged unrun",
                    task_id, job.status)
        return None
    try:
        return _admit(task, task_id, args, kwargs, sender)
    except AlreadyRecorded:  # by another delivery since it was looked for: acked unrun
        return None


def _admit(task, task_id: str, args, kwargs, sender: Sender):
    """Record a message that has no job yet (``jobs.admission``), started by this
    delivery in the same insert if it may run now; the params to run it with, or None."""
    params = job_admit_native(task=task, task_id=task_id, args=args, kwargs=kwargs,
                              sender=sender, start_as=task.request.hostname or "")
    if params is None:
        return None
    _started(task, task.request, sender)
    return params


def _started(task, request, sender: Sender) -> None:
    """The delivery started its job: observers are told; a native message carries no link
    flag of Switchyard's, so the outcome recorder looks the record's link up (one read, on
    success only); the place it freed in its tenant's window goes to its next held job."""
    delivery_started(task)
    if not sender.platform:
        setattr(request, LINK_HEADER, 1)
    job_refill_window(job_id=request.id, lane=delivery_labels(task, request)[0])


def _own_native(jobs, sender: Sender, params: dict | None):
    """Of ``jobs``, the one a tenant's own native message may run: its tenant's, recorded
    from that message (same params), never re-published by the platform."""
    if sender.tenant is None or params is None:
        return jobs.none()
    return jobs.filter(tenant_id=sender.tenant.id, publications=0, params=params)


def _refuse_foreign(task, job: Job, sender: Sender, publication) -> None:
    """A message naming ``job`` that its sender may not run: count it, run nothing.

    A message with no ``user_id`` may be the platform's own from before senders were
    checked (a rolling upgrade): if it is the job's latest publication, the job is set
    back to unpublished so the dispatcher publishes a checked copy; a forged one gains
    its sender nothing but that.
    """
    who = sender.username or "(no user_id)"
    logger.warning("delivery of job %s (tenant %s) from %s refused: %s", job.id,
                   job.tenant_name, who, sender.refusal or "not its job to run")
    lane, tier, name = delivery_labels(task, task.request)
    job_event_send("refused", lane=lane, tier=tier, task=name)
    if not sender.username and publication == job.publications:
        Job.objects.filter(id=job.id, status__in=Job.WAITING, publications=job.publications,
                           published_at__isnull=False).update(published_at=None)


def job_raised(*, task, task_id: str, exception: BaseException) -> None:
    """Record an exception raised by the task's code (``SwitchyardTask.__call__``).

    A job whose retry policy is spent is marked ``dead`` with the reason, and
    its message is rejected without requeue (``Reject``): RabbitMQ moves it to
    ``<lane>.dead``, where ``manage.py dlq`` shows it and replays it after the
    fix (docs/runbooks/poison-messages.md). Otherwise the job is ``retrying``
    or ``failed`` and Celery acknowledges the message as usual.
    """
    status = _recorded(job_record_failure, job_id=task_id,
                       error=f"{type(exception).__name__}: {exception}",
                       retryable=not isinstance(exception, PermanentFailure))
    if status == Job.Status.DEAD:
        reason = Job.objects.values_list("error", flat=True).get(id=task_id)
        logger.error("job %s (%s) dead-lettered: %s", task_id, task.name, reason)
        raise Reject(reason, requeue=False) from exception
    _delivery_failed(task, status)


def _recorded(recorder, **outcome):
    """``recorder(**outcome)`` (``jobs.outcomes``), tried again while the database cannot
    serve it: one conditional UPDATE, so never recorded twice. An outcome never written
    leaves the job started; the reaper publishes it again after its lane's time limit."""
    attempt = 1
    while True:
        try:
            return recorder(**outcome)
        except DATABASE_UNAVAILABLE as exc:
            if attempt >= OUTCOME_ATTEMPTS:
                raise
            logger.warning("job %s: outcome not recorded, the database is unavailable (%s); "
                           "trying again", outcome.get("job_id"), exc)
            attempt += 1
            time.sleep(DATABASE_REQUEUE_PAUSE)
            close_old_connections()  # a session the server cut (a restart) is not reused


def _delivery_failed(task, status: str | None) -> None:
    if status == Job.Status.FAILED:
        delivery_ended(task, "failed", finished=True)
    elif status == Job.Status.RETRYING:
        delivery_ended(task, "retried", finished=False)


@signals.task_success.connect
def job_succeeded(sender=None, result=None, **_):
    if not _is_switchyard_task(sender):
        return
    # Only a started job moves on: a terminal state is never overwritten.
    failed_items = 0
    if getattr(sender, "item_schema", None) is not None and isinstance(result, dict):
        failed_items = len(result.get("failed") or ())
    if _recorded(job_record_success, job_id=sender.request.id, result=jsonable(result),
                 failed_items=failed_items,
                 has_link=bool(getattr(sender.request, LINK_HEADER, False))):
        delivery_ended(sender, "succeeded", finished=True)


@signals.task_retry.connect
def job_retrying(sender=None, request=None, reason=None, **_):
    if not _is_switchyard_task(sender):
        return
    if Job.objects.filter(id=request.id, status=Job.Status.STARTED).update(
            status=Job.Status.RETRYING, error=str(reason)[:5000]):
        delivery_ended(sender, "retried", finished=False)


@signals.task_revoked.connect
def job_expired(sender=None, request=None, expired=False, **_):
    """Celery drops a message whose ``expires`` passed before it started."""
    if expired and request is not None:
        if Job.objects.filter(id=request.id, status__in=Job.UNFINISHED).update(
            status=Job.Status.EXPIRED, finished_at=Now(),
            error="expired before a worker could start it",
        ) and _is_switchyard_task(sender):
            lane, tier, task = delivery_labels(sender, request)
            job_event_send("expired", lane=lane, tier=tier, task=task)


@signals.task_failure.connect
def job_failed(sender=None, task_id=None, exception=None, **_):
    """Sent for an exception in the task (already recorded by ``job_raised``: a no-op
    here) and, by Celery 5.7, for a hard time limit, recorded here."""
    if not _is_switchyard_task(sender):
        return
    # Celery has acknowledged the message of a hard time limit: nothing to dead-letter.
    status = _recorded(job_record_failure, job_id=task_id,
                       error=f"{type(exception).__name__}: {exception}",
                       retryable=not isinstance(exception, PermanentFailure),
                       dead_letter=False)
    _delivery_failed(sender, status)

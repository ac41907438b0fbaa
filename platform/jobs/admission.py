"""Admission of task messages that did not come through ``job_submit`` (Celery-native).

Run by the worker: ``jobs.task.job_begin`` calls it for a delivery whose job id
has no record yet. An internal service calls Switchyard with Celery's own API
(``task.delay(...)``, ``apply_async(...)``, ``send_task``; ``switchyard_client``
sets it up), publishing straight to the ``tasks`` exchange as its tenant's broker
user. The first worker that sees such a message records it as the REST API would
have, and gives every ``apply_async`` option its meaning (docs/api.md, "Celery's
own calling API"):

* the tenant is the one the broker vouches for (``jobs.senders``: the message's
  validated ``user_id``), whatever a ``tenant`` header claims; its tier and band
  come from its record;
* only tasks of the catalogue run (no ``celery.*`` builtin, no internal task);
* positional arguments fill the task's parameters in order; the params are
  checked against the task's schema as the API checks them;
* ``countdown`` / ``eta``: the job is recorded with its ``run_at`` and this
  delivery acknowledged; the dispatcher publishes it when due (never held in a
  worker's prefetch window). ``expires``: the job's ``expires_at``, enforced on
  the database's clock;
* the priority is clamped into the tenant's band; a message on another tier's
  routing key, another lane (``queue=`` / ``routing_key=`` naming it), or outside
  its band is recorded where it belongs (``received_as`` keeps what it came as),
  re-published there, and this delivery acknowledged unrun: cheating gains
  nothing over asking legitimately;
* ``link`` / ``link_error`` signatures become the job's follow-ups, with Celery's
  semantics: the parent's result (for ``link_error``, the failed job's id) is the
  linked task's first argument unless the signature is immutable (``.si()``);
* a chain becomes a workflow (``jobs.workflows``) recorded with its first task: each
  next task is released by the end of the one before, with its result as first
  argument; a failure cancels the rest, with the reason. A chord header joins the
  chord its client registered (``POST /api/v1/workflows/chords``); the last header to
  end releases the body with every header's result, in order;
* the job counts against the tenant's quotas; over them, it is recorded ``dead``
  with the quota's reason.

Whatever is refused (an unknown sender, an unknown task, bad params, a nested
canvas, an unregistered chord, a quota) is recorded ``dead`` with the reason, and the
message rejected into ``<lane>.dead``: nothing is dropped silently. A message from one
of the platform's own users (beat, or a message published before its job record
existed) keeps its ``tenant`` header, which only the platform can have set.

Size: one message's first sight, read together when a message did or did not become a
job: each ``apply_async`` option's meaning, its canvas, and the one insert that records
(and, if it may run, starts) it.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery.exceptions import Reject
from django.db import IntegrityError, transaction
from django.utils.dateparse import parse_datetime

import routing.celery_config as routing_celery
from jobs import fairness
from jobs.catalogue import InvalidParams, catalogue_task, positional_names, validate_params
from jobs.errors import InvalidSubmission, QuotaExceeded
from jobs.models import Job, Workflow, WorkflowStep, start_values
from jobs.options import MAX_DELAY, RetryPolicy
from jobs.publishing import publish_job
from jobs.quotas import check_quotas
from jobs.senders import Sender
from jobs.signals import job_events_for
from jobs.workflow_submission import StepSpec, check_step_params, chord_join, workflow_submit
from jobs.workflows import MAX_STEPS, step_ended
from routing import priorities, topology
from switchyard.celery import app
from switchyard.clock import platform_now
from switchyard.logs import job_fields
from switchyard.returning import insert_unless
from tenants.models import Tenant
from tenants.selectors import tenant_by_name

logger = logging.getLogger(__name__)

#: Header a Celery-native caller may set to give its job a retry policy (the REST API's
#: ``options.retry_policy``; Celery's own ``retry_policy`` only retries the publish).
RETRY_POLICY_HEADER = "switchyard_retry_policy"


class AlreadyRecorded(Exception):
    """The message's id is a recorded job's already (another delivery or another message
    recorded it first): nothing was written; the caller treats the message as one naming
    an existing job (``jobs.task``)."""


class Refused(ValueError):
    """Why a native message cannot become a runnable job."""


def jsonable(value):
    """``value`` if JSON can store it, else its ``repr`` (a task may return anything)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def native_params(task, args: Sequence[Any], kwargs: Mapping[str, Any] | None) -> dict:
    """The job's params from a message's positional and keyword arguments: positional
    ones fill the task's parameters in order (``Refused`` naming the problem)."""
    names = positional_names(task)
    args = list(args or ())
    if len(args) > len(names):
        raise Refused(f"{task.name} takes {len(names)} positional argument(s) "
                      f"({', '.join(names) or 'none'}), got {len(args)}")
    params = dict(zip(names, args, strict=False))
    twice = sorted(set(params) & set(kwargs or {}))
    if twice:
        raise Refused(f"{task.name} got {twice[0]!r} both as a positional and a keyword "
                      "argument")
    params.update(kwargs or {})
    return params


def job_admit_native(*, task, task_id: str, args, kwargs, sender: Sender,
                     start_as: str) -> dict | None:
    """Record a Celery-native delivery; the params to run it with now, or None.

    A job that may run now is recorded ``started`` by the worker ``start_as``, in the
    insert itself: the params are then those of a started run.

    None: recorded for later (``eta``) or re-published where it belongs; this delivery
    must be acknowledged unrun. Raises ``Reject`` (no requeue) after recording the job
    ``dead`` with its reason, and ``AlreadyRecorded`` (nothing written) if a job of this
    id exists: the caller does not ask first, a first sight being the common case.
    """
    request = task.request
    delivery = request.delivery_info or {}
    now = platform_now()  # the dispatcher and promotion compare these times with it
    tenant, tenant_name, refusal = _tenant_of(request, sender)
    tier = priorities.tier(tenant.tier) if tenant else priorities.DEFAULT_TIER
    job = Job(id=task_id, task=task.name, lane=task.lane, tenant=tenant, tier=tier.name,
              tenant_name=tenant_name[:63] or "-", params=jsonable(dict(kwargs or {})),
              routing_key=topology.routing_key(task.lane, tier.name, task.name),
              submitted_at=now, published_at=now)
    claimed = delivery.get("priority")
    job.priority = tier.clamp(claimed)
    received = delivery.get("routing_key") or ""
    if received != job.routing_key:
        job.received_as = received[:300]
    canvas = Canvas()
    try:
        if refusal:
            raise Refused(refusal)
        _check_task(task, sender)
        job.params = native_params(task, args, kwargs)
        if not sender.platform:
            _validate(task, job.params, tenant)
        job.run_at, job.expires_at = _schedule(request, now)
        canvas = _apply_links(job, request, task)
        _apply_retry_policy(job, request)
        if tenant is not None and not sender.platform:
            check_quotas(tenant, now)
    except QuotaExceeded as exc:
        _dead(job, f"quota exceeded: {exc}", now, canvas)
    except Refused as exc:
        _dead(job, str(exc), now, canvas)
    job.lane = _lane_for(task, job.params, tenant)
    job.routing_key = topology.routing_key(job.lane, tier.name, task.name)
    job.received_as = "" if received == job.routing_key else received[:300]
    in_band = claimed is not None and claimed in tier and received == job.routing_key
    if job.run_at is not None:
        # Due later: the dispatcher publishes it then; nothing waits in a worker.
        job.published_at = None
        _save_first_sight(job, canvas)
        logger.info("native job %s recorded to run at %s", task_id, job.run_at.isoformat(),
                    extra=job_fields(job))
        return None
    if in_band:
        return _start_first_sight(job, canvas, now, worker=start_as)
    job.published_at = None
    _save_first_sight(job, canvas)
    if tenant is not None and tenant.paused_at is not None:
        return None  # recorded unpublished: the dispatcher publishes it on resume
    logger.info("native job %s claimed %s priority %s; re-published as %s priority %s",
                task_id, received, claimed, job.routing_key, job.priority,
                extra=job_fields(job))
    publish_job(job)
    return None


def _tenant_of(request, sender: Sender) -> tuple[Tenant | None, str, str]:
    """``(tenant, its name, why refused)`` of a message: the broker user's tenant, or for
    the platform's own messages the one its ``tenant`` header names."""
    if not sender.platform:
        if sender.tenant is None:
            return None, sender.username or "-", sender.refusal
        return sender.tenant, sender.tenant.name, ""
    name = getattr(request, routing_celery.TENANT_HEADER, None) or routing_celery.SYSTEM_TENANT
    if name == routing_celery.SYSTEM_TENANT:
        return None, name, ""
    tenant = tenant_by_name(name=name)
    if tenant is None or not tenant.is_active:
        return None, name, f"unknown or inactive tenant {name!r} in the tenant header"
    return tenant, name, ""


def _check_task(task, sender: Sender) -> None:
    if sender.platform:
        return
    if catalogue_task(task.name) is None:
        raise Refused(f"task {task.name!r} is not in the catalogue (/api/v1/tasks)")


def _validate(task, params: dict, tenant: Tenant | None) -> None:
    try:
        validate_params(catalogue_task(task.name), params, tenant=tenant)
    except InvalidParams as exc:
        raise Refused(f"{exc.field}: {exc.message}") from None


def _instant(value: Any, what: str) -> dt.datetime | None:
    if value in (None, ""):
        return None
    parsed = value if isinstance(value, dt.datetime) else parse_datetime(str(value))
    if parsed is None or parsed.tzinfo is None:
        raise Refused(f"{what} {value!r} is not an ISO 8601 time with a time zone")
    return parsed


def _schedule(request, now: dt.datetime) -> tuple[dt.datetime | None, dt.datetime | None]:
    """``(run_at, expires_at)`` from the message's ``eta`` (Celery turns ``countdown``
    into one) and ``expires``, instants on the caller's clock."""
    eta = _instant(getattr(request, "eta", None), "eta")
    expires = _instant(getattr(request, "expires", None), "expires")
    if eta is not None and eta - now > MAX_DELAY:
        raise Refused(f"eta {eta.isoformat()} is more than {MAX_DELAY.days} days ahead")
    run_at = eta if eta is not None and eta > now else None
    return run_at, expires


def signature_link(signature: Any, *, what: str) -> dict:
    """A job's ``link`` / ``link_error`` (or a chain's or chord's next step) from a Celery
    signature (a dict in the message): ``{task, params}``, and ``result_param`` naming the
    parameter that receives the parent's result unless the signature is immutable."""
    if not isinstance(signature, Mapping) or not isinstance(signature.get("task"), str):
        raise Refused(f"{what}: not a Celery signature")
    linked = catalogue_task(signature["task"])
    if linked is None:
        raise Refused(f"{what}: task {signature['task']!r} is not in the catalogue")
    registered = app.tasks[linked.name]
    args = list(signature.get("args") or ())
    mutable = not signature.get("immutable")
    if mutable:
        # Celery's semantics: the parent's outcome comes first, before the signature's args
        # (a placeholder here, filled in when the parent ends: jobs.outcomes).
        args.insert(0, None)
    try:
        params = native_params(registered, args, signature.get("kwargs") or {})
    except Refused as exc:
        hint = " (its first argument is the parent's result; or use .si())" if mutable else ""
        raise Refused(f"{what}: {exc}{hint}") from None
    spec: dict[str, Any] = {"task": linked.name, "params": params}
    if mutable:
        spec["result_param"] = positional_names(registered)[0]
    return spec


@dataclass
class Canvas:
    """What a message's Celery canvas adds to its job: the rest of its chain (recorded
    as a workflow with it), or its place in a registered chord."""

    chain: list[StepSpec] = field(default_factory=list)
    chord_step: WorkflowStep | None = None


def _apply_links(job: Job, request, task) -> Canvas:
    canvas = Canvas()
    chain, chord = getattr(request, "chain", None), getattr(request, "chord", None)
    if chain and chord:
        raise Refused("a chord header followed by a chain: nested canvases do not run on "
                      "the Celery-native path; submit it as a workflow (POST /api/v1/workflows)")
    if chord:
        try:
            canvas.chord_step = chord_join(job, group_id=getattr(request, "group", None),
                                           index=getattr(request, "group_index", None))
        except InvalidSubmission as exc:
            raise Refused(f"chord header: {exc.message}") from None
    if chain:
        canvas.chain = _chain_steps(job, list(reversed(chain)))
    for field_name, signatures in (("link", request.callbacks),
                                   ("link_error", request.errbacks)):
        signatures = list(signatures or ())
        if len(signatures) > 1:
            raise Refused(f"{field_name}: at most one signature (got {len(signatures)})")
        if signatures:
            setattr(job, field_name, signature_link(signatures[0], what=field_name))
    return canvas


def _chain_steps(job: Job, signatures: list) -> list[StepSpec]:
    """A Celery chain as a workflow's steps: this message's job first, then each signature
    of the chain in order, each given the previous one's result as its first argument
    unless immutable (``.si()``); a step that fails cancels the rest, as Celery stops."""
    if len(signatures) + 1 > MAX_STEPS:
        raise Refused(f"a chain of {len(signatures) + 1} tasks; at most {MAX_STEPS}")
    steps = [StepSpec(name=f"1.{job.task}", task=job.task, params=job.params, job=job)]
    for number, signature in enumerate(signatures, start=2):
        what = f"chain task {number}"
        kind = signature.get("subtask_type") if isinstance(signature, Mapping) else None
        if kind:
            raise Refused(f"{what}: a {kind} inside a chain does not run on the Celery-native "
                          "path; submit it as a workflow (POST /api/v1/workflows)")
        link = signature_link(signature, what=what)
        inputs = {link["result_param"]: steps[-1].name} if "result_param" in link else {}
        params = {k: v for k, v in link["params"].items() if k not in inputs}
        step = StepSpec(name=f"{number}.{link['task']}", task=link["task"], params=params,
                        depends_on=[steps[-1].name], inputs=inputs, where=what,
                        job_id=(signature.get("options") or {}).get("task_id"))
        try:
            check_step_params(step, tenant=job.tenant)
        except InvalidSubmission as exc:
            raise Refused(f"{exc.field}: {exc.message}") from None
        steps.append(step)
    return steps


def _apply_retry_policy(job: Job, request) -> None:
    data = getattr(request, RETRY_POLICY_HEADER, None)
    if data is None:
        return
    try:
        policy = RetryPolicy(**data)
        if not 0 <= int(policy.max_retries) <= 25:
            raise ValueError("max_retries must be between 0 and 25")
    except (TypeError, ValueError) as exc:
        raise Refused(f"{RETRY_POLICY_HEADER}: {exc}") from None
    job.retry_policy = data
    job.max_attempts = 1 + int(policy.max_retries)


def _dead(job: Job, reason: str, now: dt.datetime, canvas: Canvas) -> None:
    job.status, job.error, job.finished_at = Job.Status.DEAD, reason[:5000], now
    job.run_at = None
    _save_first_sight(job, canvas)
    logger.warning("dead-lettering native job %s: %s", job.id, reason, extra=job_fields(job))
    raise Reject(reason, requeue=False)


def _lane_for(task, params, tenant: Tenant | None) -> str:
    """The lane the task picks for these params (as ``job_submit`` would); a message on
    another lane is re-published on this one, like one claiming the wrong tier."""
    try:
        return topology.lane(task.lane_for(dict(params or {}), tenant=tenant)).name
    except Exception:  # bad params: the task itself will refuse them, in its declared lane
        logger.warning("task %s could not pick a lane for a native message; using %s",
                       task.name, task.lane, exc_info=True)
        return task.lane


def _start_first_sight(job: Job, canvas: Canvas, now: dt.datetime, *,
                       worker: str) -> dict | None:
    """Record ``job`` already started by ``worker`` (one statement: the insert, with the
    tenant's pause read inside it); its params, or None if it may not start: expired
    already, or its tenant paused (recorded unpublished then, for the dispatcher to
    publish on resume, as ``jobs.task`` does with a paused tenant's delivery)."""
    if job.expires_at is not None and job.expires_at <= now:
        job.published_at = None  # the dispatcher's pass records it expired
        _save_first_sight(job, canvas)
        return None
    if canvas.chain:
        # The chain's workflow records its first step with the rest: started after it.
        _save_first_sight(job, canvas)
        waiting = Job.objects.filter(id=job.id, status__in=Job.WAITING)
        if waiting.filter(fairness.tenant_not_paused()).update(**start_values(worker)):
            return job.params
        waiting.update(published_at=None)  # paused: published on resume
        return None
    job.status, job.started_at, job.attempts, job.worker = Job.Status.STARTED, now, 1, worker
    if _save_first_sight(job, canvas, start=True):
        return job.params
    return None


def _save_first_sight(job: Job, canvas: Canvas, *, start: bool = False) -> bool:
    """Record the job (with its chain's workflow, or its chord step) in one transaction;
    ``AlreadyRecorded`` if a job of the same id was recorded first. With ``start`` (the
    job set ``started``), started only while its tenant is not paused: True if it was.
    A job dead at first sight is counted by its workflow at once (what follows it in a
    chain is cancelled)."""
    started = False
    try:
        with transaction.atomic():
            if canvas.chain:
                workflow_submit(tenant=job.tenant, steps=canvas.chain, kind=Workflow.Kind.CHAIN,
                                quotas=False)
            elif start and job.tenant_id is not None:
                started = insert_unless(job, fairness.paused_tenant(job.tenant_id))
                if not started:  # paused: recorded unpublished, published on resume
                    job.status, job.started_at, job.attempts, job.worker = (
                        Job.Status.QUEUED, None, 0, "")
                    job.published_at = None
                    job.save(force_insert=True)
            else:
                job.save(force_insert=True)
                started = start
            if not canvas.chain and canvas.chord_step is not None:
                canvas.chord_step.save(force_insert=True)
            if job.status in Job.FINISHED:
                step_ended(job, job.status)
    except IntegrityError:
        raise AlreadyRecorded(job.id) from None
    job_events_for("submitted", [job])
    if job.status == Job.Status.DEAD:
        job_events_for("dead", [job])
    return started

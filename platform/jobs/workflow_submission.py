"""Accepting a workflow: its steps checked as a graph, then recorded with their jobs.

Run by the web (``POST /api/v1/workflows``; a batch with an ``on_complete``,
``jobs.batches``) and by the worker (a Celery chain or chord on the native path,
``jobs.admission``). The roots are ``queued`` and published after the commit; every
other step is ``blocked`` until ``jobs.workflows`` releases it.
"""
from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from django.db import transaction

import routing.celery_config as routing_celery
from jobs.catalogue import InvalidParams, catalogue_task, validate_params
from jobs.errors import InvalidSubmission
from jobs.models import ChordHeader, Job, OnFailure, Workflow, WorkflowStep
from jobs.options import SubmitOptions, apply_run_options, schedule_of
from jobs.quotas import check_quotas
from jobs.signals import job_events_for, workflow_event_send
from jobs.submission import new_job
from jobs.workflows import CHUNK, MAX_STEPS, publish_released, schedule_options
from switchyard.clock import platform_now
from tenants.models import Tenant


@dataclass
class StepSpec:
    """One step as accepted: its ``name`` is unique in the workflow; ``inputs`` maps a
    parameter to the step (or list of steps) whose result it receives."""

    name: str
    task: str
    params: dict[str, Any] = field(default_factory=dict)
    depends_on: list[str] = field(default_factory=list)
    inputs: dict[str, str | list[str]] = field(default_factory=dict)
    on_failure: str = OnFailure.FAIL_WORKFLOW
    submit_options: SubmitOptions = field(default_factory=SubmitOptions)
    summary_param: str = ""
    job_id: Any = None  # a Celery signature's frozen task id, kept as the job's id
    where: str = ""  # how a refusal names it: ``steps.3``
    #: The step's job, already built by whoever recorded it (a Celery chain's first task,
    #: admitted from its own message): inserted as it is, and published by its admitter.
    job: Job | None = None


def check_graph(steps: Sequence[StepSpec], on_complete: StepSpec | None = None) -> None:
    """``InvalidSubmission`` naming the step and field for a duplicate or dangling name,
    a ``from`` naming a step it does not depend on, or a cycle."""
    if not 1 <= len(steps) <= MAX_STEPS:
        raise InvalidSubmission("steps", f"give between 1 and {MAX_STEPS} steps, "
                                f"got {len(steps)}")
    names: dict[str, StepSpec] = {}
    for step in steps:
        if step.name in names:
            raise InvalidSubmission(f"{step.where}.id",
                                    f"{step.name!r} is the id of another step too")
        names[step.name] = step
    for step in [*steps, *([on_complete] if on_complete else [])]:
        for index, upstream in enumerate(step.depends_on):
            if upstream not in names:
                raise InvalidSubmission(f"{step.where}.depends_on.{index}",
                                        f"no step has the id {upstream!r}")
            if upstream == step.name:
                raise InvalidSubmission(f"{step.where}.depends_on.{index}",
                                        "a step cannot depend on itself")
        allowed = set(names) if step is on_complete else set(step.depends_on)
        for param, source in step.inputs.items():
            for name in source if isinstance(source, list) else [source]:
                if name not in allowed:
                    what = "no step has that id" if name not in names else \
                        "a step may only take results of the steps it depends on"
                    raise InvalidSubmission(f"{step.where}.from.{param}", f"{name!r}: {what}")
    cycle = _cycle(steps)
    if cycle:
        first = names[cycle[0]]
        raise InvalidSubmission(f"{first.where}.depends_on",
                                "the steps form a cycle: " + " -> ".join(cycle))


def _cycle(steps: Sequence[StepSpec]) -> list[str]:
    """One cycle among ``steps`` (names, first repeated at the end), or []."""
    upstreams = {step.name: step.depends_on for step in steps}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    for start in upstreams:
        if state.get(start):
            continue
        path: list[str] = []
        stack = [(start, iter(upstreams[start]))]
        state[start] = 1
        path.append(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return [*path[path.index(child):], child][::-1]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(upstreams[child])))
    return []


def check_step_params(step: StepSpec, *, tenant: Tenant | None) -> None:
    """The step's own ``params`` against its task's schema, the parameters its ``from``
    (and an on_complete's summary) will fill aside: those are checked at release."""
    task = catalogue_task(step.task)
    if task is None:
        raise InvalidSubmission(f"{step.where}.task", f"unknown task {step.task!r}")
    filled = set(step.inputs) | ({step.summary_param} if step.summary_param else set())
    twice = sorted(filled & set(step.params))
    if twice:
        raise InvalidSubmission(f"{step.where}.params.{twice[0]}",
                                "given in params and filled from another step too")
    schema = dict(task.params_schema)
    if filled:
        schema["required"] = [n for n in schema.get("required", []) if n not in filled]
    try:
        validate_params(replace(task, params_schema=schema), step.params,
                        field=f"{step.where}.params", tenant=tenant)
    except InvalidParams as exc:
        raise InvalidSubmission(exc.field, exc.message) from None


def workflow_submit(*, tenant: Tenant | None, steps: Sequence[StepSpec],
                    on_complete: StepSpec | None = None, kind: str = Workflow.Kind.STEPS,
                    workflow_id: Any = None, idempotency_key: str = "",
                    fingerprint: str = "", quotas: bool = True) -> Workflow:
    """Record a workflow and its steps in the caller's transaction (open one around it);
    the roots are published after the commit. The graph must have passed
    ``check_graph``. Counts one submission, and the roots as waiting jobs, against the
    tenant's quotas (``QuotaExceeded``); the other steps wait as ``blocked``, like a
    job's ``link``, until released (``quotas=False``: the caller already counted it)."""
    now = platform_now()
    workflow = Workflow(tenant=tenant,
                        tenant_name=tenant.name if tenant else routing_celery.SYSTEM_TENANT,
                        kind=kind, step_count=len(steps) + (1 if on_complete else 0),
                        open_steps=len(steps), submitted_at=now,
                        idempotency_key=idempotency_key, request_fingerprint=fingerprint)
    if workflow_id is not None:
        workflow.id = workflow_id
    jobs, rows = _records(workflow, steps, on_complete, now)
    given = {spec.job.id for spec in steps if spec.job is not None}
    roots = [job for job in jobs if job.status == Job.Status.QUEUED and job.id not in given]
    if tenant is not None and quotas:
        check_quotas(tenant, now, adding=max(1, len(roots)))
    workflow.on_complete = jobs[-1] if on_complete else None
    publish_released(roots)  # before the insert: a root held by its window is due now
    workflow.save(force_insert=True)
    Job.objects.bulk_create(jobs, batch_size=CHUNK)
    WorkflowStep.objects.bulk_create(rows, batch_size=CHUNK)
    fresh = [job for job in jobs if job.id not in given]
    transaction.on_commit(lambda: job_events_for("submitted", fresh))
    transaction.on_commit(lambda: workflow_event_send("started", kind=workflow.kind))
    return workflow


def _records(workflow: Workflow, steps: Sequence[StepSpec], on_complete: StepSpec | None,
             now: dt.datetime) -> tuple[list[Job], list[WorkflowStep]]:
    """The unsaved jobs and step rows of a workflow (``on_complete`` last)."""
    specs = [*steps, *([on_complete] if on_complete else [])]
    jobs: list[Job] = []
    by_name: dict[str, Job] = {}
    for spec in specs:
        if spec.job is not None:
            spec.job.workflow = workflow
            jobs.append(spec.job)
            by_name[spec.name] = spec.job
            continue
        job = new_job(tenant=workflow.tenant, task=spec.task, params=spec.params,
                      priority=spec.submit_options.priority, now=now)
        if spec.job_id is not None:
            job.id = spec.job_id
        job.workflow = workflow
        apply_run_options(job, spec.submit_options)
        root = spec is not on_complete and not spec.depends_on
        if root:
            job.run_at, job.expires_at = schedule_of(spec.submit_options, now)
            job.status = Job.Status.QUEUED
        else:
            job.status = Job.Status.BLOCKED
        jobs.append(job)
        by_name[spec.name] = job
    dependents: dict[str, list[str]] = defaultdict(list)
    for spec in steps:
        for upstream in spec.depends_on:
            dependents[upstream].append(str(by_name[spec.name].id))
    rows = [
        WorkflowStep(job=by_name[spec.name], workflow=workflow, name=spec.name, index=index,
                     depends_on=list(spec.depends_on), dependents=dependents.get(spec.name, []),
                     inputs=dict(spec.inputs), summary_param=spec.summary_param,
                     options=schedule_options(spec.submit_options),
                     on_failure=spec.on_failure,
                     is_on_complete=spec is on_complete,
                     waiting_for=len(set(spec.depends_on)))
        for index, spec in enumerate(specs)
    ]
    return jobs, rows


def batch_workflow(*, tenant: Tenant, chunks: Sequence[Job], on_complete: StepSpec,
                   now: dt.datetime) -> Workflow:
    """Make a batch's ``chunks`` (unsaved) the steps of a new workflow whose
    ``on_complete`` step runs once every chunk has ended, whatever its outcome. Saves
    the workflow and its on_complete job; once the chunks are inserted,
    ``save_batch_steps`` records their step rows."""
    workflow = Workflow(tenant=tenant, tenant_name=tenant.name, kind=Workflow.Kind.BATCH,
                        step_count=len(chunks) + 1, open_steps=len(chunks), submitted_at=now)
    final = new_job(tenant=tenant, task=on_complete.task, params=on_complete.params,
                    priority=on_complete.submit_options.priority, now=now)
    final.status, final.workflow = Job.Status.BLOCKED, workflow
    apply_run_options(final, on_complete.submit_options)
    workflow.on_complete = final
    workflow.save(force_insert=True)
    final.save(force_insert=True)
    for chunk in chunks:
        chunk.workflow = workflow
    WorkflowStep.objects.create(
        job=final, workflow=workflow, name=on_complete.name, index=len(chunks),
        inputs={}, summary_param=on_complete.summary_param, is_on_complete=True,
        options=schedule_options(on_complete.submit_options))
    transaction.on_commit(lambda: job_events_for("submitted", [final]))
    transaction.on_commit(lambda: workflow_event_send("started", kind=workflow.kind))
    return workflow


def save_batch_steps(workflow: Workflow, chunks: Sequence[Job]) -> None:
    """The step rows of a batch workflow's chunks (inserted): a chunk's failure never
    stops the others (``continue``)."""
    WorkflowStep.objects.bulk_create(
        [WorkflowStep(job=chunk, workflow=workflow, name=f"chunk-{chunk.chunk_index}",
                      index=chunk.chunk_index, on_failure=OnFailure.CONTINUE)
         for chunk in chunks], batch_size=CHUNK)




def chord_register(*, tenant: Tenant | None, group_id, header_ids: Sequence[str],
                   body: StepSpec) -> tuple[Workflow, bool]:
    """Record a Celery chord before its header is published (``switchyard_client``'s
    result backend calls ``POST /api/v1/workflows/chords`` from Celery's
    ``apply_chord``): a workflow whose id is the chord's group id, and its body as a
    ``blocked`` step waiting for ``header_ids``. Each header joins it when its message
    is first admitted (``chord_join``). Returns ``(workflow, created)``: registering
    the same group again returns the first record."""
    existing = Workflow.objects.filter(id=group_id).first()
    if existing is not None:
        if existing.tenant_id != (tenant.id if tenant else None) or \
                existing.kind != Workflow.Kind.CHORD:
            raise InvalidSubmission("group", f"{group_id} is another workflow's id")
        return existing, False
    now = platform_now()
    workflow = Workflow(id=group_id, tenant=tenant, kind=Workflow.Kind.CHORD,
                        tenant_name=tenant.name if tenant else routing_celery.SYSTEM_TENANT,
                        step_count=len(header_ids) + 1, open_steps=len(header_ids) + 1,
                        submitted_at=now)
    job = new_job(tenant=tenant, task=body.task, params=body.params, priority=None, now=now)
    job.id, job.status, job.workflow = body.job_id or job.id, Job.Status.BLOCKED, workflow
    workflow.save(force_insert=True)
    job.save(force_insert=True)
    WorkflowStep.objects.create(
        job=job, workflow=workflow, name=body.name, index=len(header_ids),
        depends_on=list(header_ids), inputs=dict(body.inputs),
        waiting_for=len(set(header_ids)))
    ChordHeader.objects.bulk_create(
        [ChordHeader(job_id=header, workflow=workflow, body_id=job.id) for header in header_ids],
        batch_size=CHUNK)
    transaction.on_commit(lambda: workflow_event_send("started", kind=workflow.kind))
    return workflow, True


def chord_join(job: Job, *, group_id, index: int | None) -> WorkflowStep:
    """The (unsaved) step row making ``job`` (a chord header at its first sight, unsaved)
    a step of its registered chord; sets ``job.workflow``. ``InvalidSubmission`` saying
    why it cannot be. The caller saves the job, then the row, in one transaction."""
    body_id = (ChordHeader.objects.filter(job_id=job.id, workflow_id=group_id)
               .values_list("body_id", flat=True).first())
    if body_id is None or _chord_tenant(group_id) != job.tenant_id:
        raise InvalidSubmission("chord", f"it is not a header of a chord registered with "
                                f"the platform as {group_id}: publish chords through "
                                "switchyard_client.connect(), whose result backend registers "
                                "them")
    job.workflow_id = group_id
    return WorkflowStep(job=job, workflow_id=group_id, name=str(job.id), index=index or 0,
                        dependents=[str(body_id)])


#: Per process: a chord's tenant id by the chord's id, for its headers' first sights. A
#: workflow's tenant never changes, and the chord's row is the one every header's count
#: updates: its headers read their own rows only.
_chord_tenants: dict[Any, Any] = {}
_CHORD_TENANTS_KEPT = 256


def _chord_tenant(group_id):
    key = str(group_id)
    if key not in _chord_tenants:
        tenant_id = Workflow.objects.filter(id=group_id).values_list("tenant_id", flat=True)
        if len(_chord_tenants) >= _CHORD_TENANTS_KEPT:
            _chord_tenants.clear()
        _chord_tenants[key] = tenant_id.first()
    return _chord_tenants[key]

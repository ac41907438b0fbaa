"""``job_event``: sent when jobs change state, for observers (``monitoring`` counts them).

The writers (``jobs.submission``, ``jobs.bulk``, ``jobs.batches``, ``jobs.dispatch``,
``jobs.task``, ``jobs.outcomes``, ``jobs.admission``) send one event per transition
that really happened (their conditional UPDATE changed a row), so an observer can
count exactly. Nothing
here knows about Prometheus; without a receiver, sending costs one function
call.

Keyword arguments of every event:

* ``event``: ``submitted``, ``started``, ``succeeded``, ``failed``,
  ``retried``, ``dead``, ``cancelled`` or ``expired``;
* ``lane``, ``tier``, ``task``: bounded labels (a task is a registered task);
* ``count``: how many jobs made this transition (a batch is many chunks);
* worker events also carry seconds when known: ``wait`` (due → started),
  ``run`` (this delivery's run) and ``end_to_end`` (submitted → finished).
"""
from __future__ import annotations

import time
from typing import Any

from django.dispatch import Signal

from jobs.models import Job
from routing import priorities, topology

job_event = Signal()
#: Sent when a workflow starts (``event="started"``) or finishes (``"finished"``, with
#: its ``status``); ``kind`` is the workflow's kind (``jobs.models.Workflow.Kind``).
workflow_event = Signal()
#: Sent by a long-running role's main process as it starts, before any job event
#: (``role``: "dispatcher"), so observers can set up what the whole process needs
#: (``monitoring.exporter`` serves its metrics port).
process_started = Signal()

#: Headers ``jobs.publishing`` puts on each message: when the job was submitted
#: and when it became due (epoch seconds), so a worker can time the wait
#: without reading the job record.
SUBMITTED_HEADER = "switchyard_submitted"
DUE_HEADER = "switchyard_due"

#: Set on the running task's request by ``delivery_started``: the run's start
#: (monotonic clock) and the labels parsed from its routing key.
_STARTED_ATTR = "_switchyard_started"
_LABELS_ATTR = "_switchyard_labels"


def job_event_send(event: str, *, lane: str, tier: str, task: str, count: int = 1,
                   **seconds: float | None) -> None:
    """Tell observers that ``count`` jobs of ``task`` made transition ``event``."""
    if count <= 0 or not job_event.receivers:
        return
    job_event.send(sender=None, event=event, lane=lane, tier=tier, task=task, count=count,
                   **{k: v for k, v in seconds.items() if v is not None})


def workflow_event_send(event: str, *, kind: str, status: str = "") -> None:
    """Tell observers a workflow of ``kind`` started, or finished with ``status``."""
    if workflow_event.receivers:
        workflow_event.send(sender=None, event=event, kind=kind, status=status)


def job_events_for(event: str, jobs) -> None:
    """``job_event_send`` for each (lane, tier, task) among ``jobs`` (Job objects)."""
    if not job_event.receivers:
        return
    groups: dict[tuple[str, str, str], int] = {}
    for job in jobs:
        key = (job.lane, job.tier, job.task)
        groups[key] = groups.get(key, 0) + 1
    for (lane, tier, task), count in groups.items():
        job_event_send(event, lane=lane, tier=tier, task=task, count=count)


def timing_headers(job) -> dict[str, float]:
    """Headers for a publication of ``job``: its submission and due times (epoch s)."""
    due = job.run_at or job.submitted_at
    return {SUBMITTED_HEADER: job.submitted_at.timestamp(), DUE_HEADER: due.timestamp()}


def delivery_labels(task, request) -> tuple[str, str, str]:
    """``(lane, tier, task)`` of a delivery, from its routing key; bounded whatever it says."""
    key = (request.delivery_info or {}).get("routing_key") or ""
    try:
        lane, tier, _ = topology.parse_routing_key(key)
    except ValueError:
        # No delivery at hand (a hard time limit is reported by the main
        # process): the job record knows. A rare path, so one read is fine.
        row = Job.objects.filter(id=request.id).values_list("lane", "tier").first() \
            if request.id else None
        lane, tier = row or (task.lane, priorities.DEFAULT_TIER.name)
    if lane not in topology.LANES_BY_NAME:
        lane = task.lane
    if tier not in priorities.TIERS_BY_NAME:
        tier = priorities.DEFAULT_TIER.name
    return lane, tier, task.name


def _header(request, name: str) -> float | None:
    value = getattr(request, name, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(name)
    return float(value) if isinstance(value, int | float) else None


def delivery_started(task) -> None:
    """A delivery of ``task`` started its job: send ``started`` with its wait."""
    request = task.request
    labels = delivery_labels(task, request)
    setattr(request, _STARTED_ATTR, time.monotonic())
    setattr(request, _LABELS_ATTR, labels)
    if not job_event.receivers:
        return
    due = _header(request, DUE_HEADER)
    wait = max(0.0, time.time() - due) if due is not None else None
    job_event_send("started", lane=labels[0], tier=labels[1], task=labels[2], wait=wait)


def delivery_ended(task, event: str, *, finished: bool) -> None:
    """The started delivery of ``task`` ended with ``event`` (``succeeded``,
    ``failed``, ``retried``); ``finished`` when the job will not run again."""
    if not job_event.receivers:
        return
    request = task.request
    labels = getattr(request, _LABELS_ATTR, None) or delivery_labels(task, request)
    started = getattr(request, _STARTED_ATTR, None)
    extra: dict[str, Any] = {}
    if started is not None:
        extra["run"] = time.monotonic() - started
    submitted = _header(request, SUBMITTED_HEADER)
    if finished and submitted is not None:
        extra["end_to_end"] = max(0.0, time.time() - submitted)
    job_event_send(event, lane=labels[0], tier=labels[1], task=labels[2], **extra)

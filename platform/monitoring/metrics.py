"""Switchyard's Prometheus metrics: counters and histograms per lane and tier.

Job transitions happen in many processes (gunicorn workers, every pool child of
every Celery worker, the dispatcher). Each records into prometheus_client's
*multiprocess mode*: one memory-mapped file per process in
``SWITCHYARD_METRICS_DIR``, summed when ``/metrics`` is read. Why not a Celery
events consumer: events travel through an exclusive queue whose messages expire
after 5 s (``CELERY_EVENT_QUEUE_TTL``), so a consumer that is down or behind loses
them; submissions, cancellations and expiries are not Celery events at all; and
``task-received`` carries no queue. Recording where the job record changes
(``jobs.signals``) counts each transition exactly once.

Labels are bounded: ``lane`` and ``tier`` come from the topology, ``task`` is a
registered task (counters only). The tenant is never a label.
"""
from __future__ import annotations

import logging
import os

from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client import multiprocess as prom_multiprocess

from jobs.signals import job_event, workflow_event
from schedules.signals import schedule_event

logger = logging.getLogger(__name__)

#: Every counter, by the ``job_event`` it counts.
EVENTS = ("submitted", "started", "succeeded", "failed", "retried", "dead", "cancelled",
          "expired", "refused", "recovered", "returned")
_COUNTER_HELP = {
    "submitted": "Jobs accepted (API, bulk, batch chunks, links, Celery-native first sight).",
    "started": "Deliveries that started running their job.",
    "succeeded": "Jobs that ran to success.",
    "failed": "Jobs that failed for good (no retry left, or a permanent failure).",
    "retried": "Runs that failed and left the job waiting for a retry.",
    "dead": "Jobs dead-lettered: lost too often, or a Celery-native message refused.",
    "cancelled": "Jobs cancelled before they started (jobs and batch chunks).",
    "expired": "Jobs whose expiry passed before they could start.",
    "refused": "Deliveries that ran nothing: a message naming a job its sender may not run "
               "(another tenant's job, or not sent by the platform).",
    "recovered": "Jobs whose message was missing from their lane queue (purged, deleted, lost "
                 "with a node, rejected by another release) and that were published again.",
    "returned": "Publications the broker returned unrouted (no queue bound for the routing "
                "key); the job stays unpublished and is published again.",
}
_COUNTER_NAME = {event: f"switchyard_jobs_{event}" for event in EVENTS}
_COUNTER_NAME["dead"] = "switchyard_jobs_dead_lettered"
_COUNTER_NAME["refused"] = "switchyard_deliveries_refused"
_COUNTER_NAME["returned"] = "switchyard_publications_returned"

#: Seconds: from 5 ms (a quick task on an idle lane) to 30 min (a slow lane's limit).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
           300.0, 600.0, 1200.0, 1800.0, float("inf"))
_HISTOGRAMS = {
    # job_event keyword -> (name, help)
    "wait": ("switchyard_job_queue_wait_seconds",
             "From when the job was due (submission, or its countdown/eta/retry time) to the "
             "start of its run."),
    "run": ("switchyard_job_run_seconds", "Run time of one delivery that reported an outcome."),
    "end_to_end": ("switchyard_job_end_to_end_seconds",
                   "From submission to the job's final outcome (succeeded or failed), "
                   "retries included."),
}

COUNTERS: dict[str, Counter] = {
    event: Counter(_COUNTER_NAME[event], _COUNTER_HELP[event], ["lane", "tier", "task"])
    for event in EVENTS
}
HISTOGRAMS: dict[str, Histogram] = {
    key: Histogram(name, doc, ["lane", "tier"], buckets=BUCKETS)
    for key, (name, doc) in _HISTOGRAMS.items()
}


#: Workflows (``jobs.workflows``): labelled by kind (steps, chain, chord, batch) and, once
#: finished, outcome; never by tenant.
WORKFLOWS_STARTED = Counter("switchyard_workflows_started",
                            "Workflows accepted (REST, Celery chains and chords, batches with "
                            "an on_complete).", ["kind"])
WORKFLOWS_FINISHED = Counter("switchyard_workflows_finished",
                             "Workflows finished, by outcome (succeeded, failed, cancelled).",
                             ["kind", "status"])

#: Schedules (``schedules.firing``): fire times by what they gave, and how late their jobs
#: started. Labelled by task and, for a skip, its reason (a short fixed list).
SCHEDULE_FIRES = Counter("switchyard_schedule_fires",
                         "Schedule fire times that submitted a job (trigger included).",
                         ["task"])
SCHEDULE_SKIPS = Counter("switchyard_schedule_skips",
                         "Schedule fire times that gave no job, by reason (missed, overlap, "
                         "quota, invalid).", ["task", "reason"])
SCHEDULE_LATENESS = Histogram("switchyard_schedule_lateness_seconds",
                              "From a schedule's fire time to its job's first start (jitter "
                              "included), seen in the job table by the dispatcher.",
                              ["lane", "tier"], buckets=BUCKETS)


def multiprocess_dir() -> str | None:
    """The directory every process of this host records into, or None."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def configure(directory: str) -> None:
    """Record into ``directory`` (multiprocess mode) when it is set.

    prometheus_client picks its value class when first imported; if that came
    before the directory was known, it is picked again, before any labelled
    child (the only thing holding values) exists.
    """
    if not directory:
        return
    os.makedirs(directory, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    if values.ValueClass is values.MutexValue:
        values.ValueClass = values.get_value_class()


def on_job_event(sender=None, event: str = "", lane: str = "", tier: str = "", task: str = "",
                 count: int = 1, **seconds) -> None:
    """Receiver of ``jobs.signals.job_event``: count it, observe its timings."""
    counter = COUNTERS.get(event)
    if counter is None:
        return
    try:
        counter.labels(lane, tier, task).inc(count)
        for key, value in seconds.items():
            histogram = HISTOGRAMS.get(key)
            if histogram is not None:
                histogram.labels(lane, tier).observe(value)
    except Exception:  # metrics must never fail a job's transition
        logger.exception("could not record job event %s", event)


def on_workflow_event(sender=None, event: str = "", kind: str = "", status: str = "",
                      **_) -> None:
    """Receiver of ``jobs.signals.workflow_event``."""
    try:
        if event == "started":
            WORKFLOWS_STARTED.labels(kind).inc()
        elif event == "finished":
            WORKFLOWS_FINISHED.labels(kind, status).inc()
    except Exception:  # metrics must never fail a workflow's transition
        logger.exception("could not record workflow event %s", event)


def on_schedule_event(sender=None, event: str = "", task: str = "", reason: str = "",
                      lane: str = "", tier: str = "", lateness: float | None = None,
                      **_) -> None:
    """Receiver of ``schedules.signals.schedule_event``."""
    try:
        if event == "fired":
            SCHEDULE_FIRES.labels(task).inc()
        elif event == "skipped":
            SCHEDULE_SKIPS.labels(task, reason).inc()
        elif event == "started" and lateness is not None:
            SCHEDULE_LATENESS.labels(lane, tier).observe(lateness)
    except Exception:  # metrics must never fail a fire
        logger.exception("could not record schedule event %s", event)


def connect() -> None:
    schedule_event.connect(on_schedule_event, dispatch_uid="monitoring.metrics.schedules")
    job_event.connect(on_job_event, dispatch_uid="monitoring.metrics")
    workflow_event.connect(on_workflow_event, dispatch_uid="monitoring.metrics.workflows")


def disconnect() -> None:
    schedule_event.disconnect(dispatch_uid="monitoring.metrics.schedules")
    job_event.disconnect(dispatch_uid="monitoring.metrics")
    workflow_event.disconnect(dispatch_uid="monitoring.metrics.workflows")


def recorded_registry() -> CollectorRegistry:
    """A registry of what every process recorded: the multiprocess directory's sum,
    or this process's own metrics when no directory is set."""
    registry = CollectorRegistry()
    directory = multiprocess_dir()
    if directory:
        prom_multiprocess.MultiProcessCollector(registry, path=directory)
    else:
        for metric in (*COUNTERS.values(), *HISTOGRAMS.values(), WORKFLOWS_STARTED,
                       WORKFLOWS_FINISHED, SCHEDULE_FIRES, SCHEDULE_SKIPS, SCHEDULE_LATENESS):
            registry.register(metric)
    return registry

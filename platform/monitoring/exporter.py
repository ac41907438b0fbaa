"""A role's own ``/metrics`` port, for the roles that have no web to answer for them.

Used by the main process of a Celery worker (its prefork pool processes summed), of the
dispatcher (``manage.py dispatch``) and of beat, when ``SWITCHYARD_METRICS_PORT`` is set.

Such a process group records into a directory of its own, ``<dir>/role-<port>`` under
``SWITCHYARD_METRICS_DIR`` (or the system's temporary directory when that is unset),
emptied when the group's main process starts: before any pool process is forked, so
every child inherits it and writes its own file there (prometheus_client's
multiprocess mode, as the web's gunicorn workers do). The port serves the sum of that
directory only. A web reading ``SWITCHYARD_METRICS_DIR`` never sees it (its collector
reads the directory's own files, not sub-directories), so a job counted by a worker is
served by exactly one target, and Prometheus' ``sum by (lane, tier)`` counts it once.

The port serves counters and histograms only (lane, tier and task labels, never a
tenant): the scrape-time gauges (backlog, oldest age, tenant shares) stay with the web,
where one target answers them. There is no bearer token on this port: expose it only
inside the cluster (a NetworkPolicy, or compose's internal network).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any

from celery import signals as celery_signals
from django.conf import settings
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client import multiprocess as prom_multiprocess

from jobs.signals import process_started
from monitoring import metrics

logger = logging.getLogger(__name__)
PORT_VARIABLE = "SWITCHYARD_METRICS_PORT"


def port() -> int | None:
    """The port this process group serves its metrics on, or None (not asked to)."""
    raw = os.environ.get("SWITCHYARD_METRICS_PORT", "").strip()
    if not raw:
        return None
    value = int(raw)
    if not 0 < value < 65536:
        raise ValueError(f"{PORT_VARIABLE}={raw}: not a TCP port")
    return value


def group_directory(base: str, port_number: int) -> str:
    """Where the process group serving ``port_number`` records its metrics."""
    return os.path.join(base or tempfile.gettempdir(), f"role-{port_number}")


def registry_of(directory: str) -> CollectorRegistry:
    """What every process of one group recorded into ``directory``, summed."""
    registry = CollectorRegistry()
    prom_multiprocess.MultiProcessCollector(registry, path=directory)
    return registry


def serve(role: str) -> Any | None:
    """In a role's main process, before it forks anything: record into the group's own
    (emptied) directory and serve its sum on ``SWITCHYARD_METRICS_PORT``.

    Returns the HTTP server, or None when no port is set. An unusable port stops the
    role: a worker that silently exports nothing would look idle on every dashboard."""
    try:
        port_number = port()
    except ValueError as exc:
        raise SystemExit(f"{role}: {exc}") from None
    if port_number is None:
        return None
    directory = group_directory(settings.SWITCHYARD_METRICS_DIR, port_number)
    shutil.rmtree(directory, ignore_errors=True)
    metrics.configure(directory)
    address = settings.SWITCHYARD_METRICS_ADDRESS
    try:
        server, _thread = start_http_server(port_number, addr=address,
                                            registry=registry_of(directory))
    except OSError as exc:
        # SystemExit, not an exception: Celery's signal dispatch would log one and go on.
        raise SystemExit(f"{role}: cannot serve metrics on {address}:{port_number} "
                         f"({PORT_VARIABLE}): {exc}") from None
    logger.info("%s: metrics on http://%s:%d/metrics (recorded in %s)", role, address,
                port_number, directory)
    return server


def _on_worker_init(sender=None, **_) -> None:
    serve("worker")


def _on_beat_init(sender=None, **_) -> None:
    serve("beat")


def _on_process_started(sender=None, role: str = "", **_) -> None:
    serve(role)


def connect() -> None:
    # worker_init is sent in the worker's main process before its pool starts.
    celery_signals.worker_init.connect(_on_worker_init, dispatch_uid="monitoring.exporter",
                                       weak=False)
    celery_signals.beat_init.connect(_on_beat_init, dispatch_uid="monitoring.exporter",
                                     weak=False)
    process_started.connect(_on_process_started, dispatch_uid="monitoring.exporter")

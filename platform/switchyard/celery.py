"""The Celery application. Configuration lives in Django settings (``CELERY_*``),
fed by ``routing``; this module wires the parts settings cannot express:

* the router (task → lane → exchange, routing key and queue);
* the publish contract on its own task messages (``switchyard/amqp.py``: tenant and
  tier headers, priority clamped to the band, no TTL, the broker user as ``user_id``);
* the worker consumer (per-consumer QoS, undecodable messages dead-lettered);
* remote control and events on the topology's exchanges, never declared by the app
  (``switchyard/control.py``, ``switchyard/events.py``: the broker grants of
  ``routing.access`` give no role ``configure`` on a name it reads);
* start-up checks (every task declares a lane; lane time limits below the
  broker's ``consumer_timeout``).
"""
from __future__ import annotations

import os
import sys
import time

from celery import Celery, signals
from celery.utils.log import get_multiprocessing_logger
from django.conf import settings
from django.db import close_old_connections

import routing.celery_config as routing_celery
from routing import topology
from switchyard.logs import adopt_handlers

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "switchyard.settings.base")


# The base class of every task, and with it the job lifecycle, lives in the jobs app;
# Celery imports it by name when the first task is created (after Django's apps
# are loaded), so this wiring module never imports the domain.
app = Celery("switchyard", task_cls="jobs.task:SwitchyardTask",
             amqp="switchyard.amqp:PlatformAMQP", control="switchyard.control:PlatformControl",
             events="switchyard.events:PlatformEvents")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.worker_consumer = "switchyard.worker:Consumer"


def _lane_of(name: str) -> str | None:
    task = app.tasks.get(name)
    return getattr(task, "lane", None)


app.conf.task_routes = (routing_celery.make_router(_lane_of),)
app.autodiscover_tasks()


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _log_format(logger=None, **_):
    # Workers and beat log through the handlers Celery installs (it takes over the root
    # logger): with SWITCHYARD_LOG_FORMAT=json they write JSON lines too (switchyard/logs.py).
    # The pool's own logger (billiard's: "process exited") gets handlers of its own.
    for each in (logger, get_multiprocessing_logger()):
        if each is not None:
            adopt_handlers(each, settings.SWITCHYARD_LOG_FORMAT)


_connections_checked = 0.0


@signals.task_prerun.connect
def _recycle_database_connections(**_):
    # What Django does around each request, at most once a second (each check
    # of a connection's health costs a round trip): drop connections past
    # DATABASE_CONN_MAX_AGE or broken (e.g. after a database restart).
    global _connections_checked
    now = time.monotonic()
    if now - _connections_checked >= 1.0:
        _connections_checked = now
        close_old_connections()


def startup_problems() -> list[str]:
    """What keeps a worker from starting safely; empty when all is well."""
    problems = []
    timeout_ms = settings.SWITCHYARD_BROKER_CONSUMER_TIMEOUT_MS
    for lane in topology.LANES:
        try:
            topology.check_time_limit(lane, timeout_ms)
        except ValueError as exc:
            problems.append(str(exc))
    for name, task in sorted(app.tasks.items()):
        if name.startswith("celery."):
            continue
        if getattr(task, "lane", None) not in topology.LANES_BY_NAME:
            problems.append(f"task {name!r} declares no known lane (lanes: "
                            f"{', '.join(topology.LANES_BY_NAME)})")
    return problems


#: Exit status of a worker that refuses to start (sysexits' EX_CONFIG).
EXIT_MISCONFIGURED = 78


@signals.worker_init.connect
def _check_on_worker_start(**_):
    problems = startup_problems()
    if problems:
        # Celery logs and swallows an Exception raised by a signal handler, and the
        # worker would go on consuming: SystemExit is the one way to stop it here.
        print("Switchyard worker cannot start:\n- " + "\n- ".join(problems), file=sys.stderr,
              flush=True)
        raise SystemExit(EXIT_MISCONFIGURED)

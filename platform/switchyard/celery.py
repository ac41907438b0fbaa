"""The Celery application. Configuration lives in Django settings (``CELERY_*``),
fed by ``routing``; this module wires the parts settings cannot express:

* the router (task → lane → exchange, routing key and queue);
* the publish guard (tenant/tier headers present, priority clamped to the tier's band);
* the worker consumer (per-consumer QoS, undecodable messages dead-lettered);
* start-up checks (every task declares a lane; lane time limits below the
  broker's ``consumer_timeout``).
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery, Task, signals
from celery.exceptions import Ignore, Reject, Retry

import routing.celery_config as routing_celery
from routing import topology

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "switchyard.settings.base")


class PermanentFailure(Exception):
    """Raise from a task for a failure no retry can fix (bad input, missing file):
    the job fails at once, whatever its retry policy."""


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

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.lane is None:
            return
        ln = topology.lane(cls.lane)  # an unknown lane fails at import, loudly
        if cls.time_limit is None:
            cls.time_limit = ln.time_limit
        if cls.soft_time_limit is None:
            cls.soft_time_limit = ln.soft_time_limit

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

    def __call__(self, *args, **kwargs):
        # Delivered by a broker (not called directly): the job record decides
        # whether this delivery runs. A cancelled, expired or already finished
        # job (a redelivery after a crash) is acknowledged without running.
        if self.lane is not None and self.request.id and not self.request.called_directly:
            from jobs.recording import job_begin

            if not job_begin(task=self, task_id=self.request.id, args=args, kwargs=kwargs):
                raise Ignore()
            try:
                return super().__call__(*args, **kwargs)
            except (Ignore, Retry, Reject):
                raise
            except Exception as exc:
                from jobs.recording import job_raised

                # Dead-letters (raises Reject) a job whose retries are spent;
                # otherwise Celery goes on as usual (task_failure, ack).
                job_raised(task=self, task_id=self.request.id, exception=exc)
                raise
        return super().__call__(*args, **kwargs)


app = Celery("switchyard", task_cls=SwitchyardTask)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.worker_consumer = "switchyard.worker:Consumer"


def _lane_of(name: str) -> str | None:
    task = app.tasks.get(name)
    return getattr(task, "lane", None)


app.conf.task_routes = (routing_celery.make_router(_lane_of),)
app.autodiscover_tasks()


@signals.before_task_publish.connect
def _enforce_contract(sender=None, headers=None, properties=None, routing_key=None,
                      exchange=None, **_):
    if exchange == topology.EXCHANGE_NAME and headers is not None and properties is not None:
        routing_celery.enforce_on_publish(headers, properties, routing_key)
        # Celery turns `expires` into an AMQP per-message TTL too; RabbitMQ would
        # then dead-letter an expired job into <lane>.dead and its record would
        # stay "queued" for ever. The worker enforces `expires` (the header)
        # against the job record instead and marks the job expired.
        properties.pop("expiration", None)
        # And the `expires` header would make the worker compare it with its own clock
        # (a host an hour ahead expires a 5-minute job at once): job_begin checks the
        # job record's expires_at on the database's clock instead (docs/architecture.md,
        # "Clocks").
        if "expires" in headers:
            headers["expires"] = None


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
        from django.db import close_old_connections

        close_old_connections()


def startup_problems() -> list[str]:
    """What keeps a worker from starting safely; empty when all is well."""
    from django.conf import settings

    problems = []
    timeout_ms = settings.SWITCHYARD_BROKER_CONSUMER_TIMEOUT_MS
    for ln in topology.LANES:
        try:
            topology.check_time_limit(ln, timeout_ms)
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
        import sys

        # Celery logs and swallows an Exception raised by a signal handler, and the
        # worker would go on consuming: SystemExit is the one way to stop it here.
        print("Switchyard worker cannot start:\n- " + "\n- ".join(problems), file=sys.stderr,
              flush=True)
        raise SystemExit(EXIT_MISCONFIGURED)

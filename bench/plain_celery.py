"""The baseline: plain Celery as a team would run it without Switchyard.

One queue (``PLAIN_QUEUE``), Celery's settings unless the environment says
otherwise, no job table, no routing. The benchmarks start its workers with
``celery -A bench.plain_celery worker`` against the benchmark's own vhost.

Environment (all optional but the broker):
``CELERY_BROKER_URL``; ``PLAIN_QUEUE`` (default ``plain``); ``PLAIN_PRIORITY=1``
declares the queue with ``x-max-priority`` 9; ``PLAIN_ACKS_LATE=1``;
``PLAIN_PREFETCH`` (Celery's default 4); ``PLAIN_CONFIRM=1`` publishes with
publisher confirms; ``PLAIN_RESULTS``: a SQLAlchemy URL for Celery's database
result backend (state and result of every task in a table, as a team wanting status
per task would run it); ``PLAIN_TIMINGS``: a file the sleep and probe tasks append
``id kind started finished`` lines to (the measurement, not part of a real setup);
``PLAIN_BEAT_ENTRIES``, ``PLAIN_BEAT_EVERY``, ``PLAIN_BEAT_QUEUE``: Celery beat's
schedule, that many ``plain.fired`` entries every so many seconds on that queue (with
``PLAIN_TIMINGS``, beat appends a ``sent`` line for each run it sends).
"""
from __future__ import annotations

import os
import time

from celery import Celery
from kombu import Queue


def _flag(name: str) -> bool:
    return os.environ.get(name, "") in ("1", "true", "yes")


def make_app(*, broker_url: str | None, queue: str = "plain", priority: bool = False,
             acks_late: bool = False, prefetch: int = 4, confirm: bool = False,
             results: str = "") -> Celery:
    """A plain Celery app with one queue and the three benchmark tasks; with
    ``results``, Celery's database result backend at that SQLAlchemy URL."""
    app = Celery("plain", broker=broker_url, backend=f"db+{results}" if results else None)
    app.conf.update(
        task_queues=[Queue(queue, routing_key=queue,
                           queue_arguments={"x-max-priority": 9} if priority else None)],
        task_default_queue=queue,
        task_default_routing_key=queue,
        task_acks_late=acks_late,
        worker_prefetch_multiplier=prefetch,
        broker_transport_options={"confirm_publish": confirm},
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=not results,
        # The backend records STARTED too, as Switchyard records each job's start.
        task_track_started=bool(results),
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name="plain.sleep", bind=True)
    def sleep(self, seconds: float, kind: str = "slow") -> None:
        started = time.time()
        time.sleep(seconds)
        _record(self.request.id, kind, started)

    @app.task(name="plain.quick", bind=True)
    def quick(self, x=None):
        _record(self.request.id, "quick", time.time())
        return x

    @app.task(name="plain.noop")
    def noop(x=None):
        return x

    @app.task(name="plain.fired", bind=True)
    def fired(self, entry: int) -> None:  # a beat entry's run (S11)
        _record(self.request.id, f"entry-{entry}", time.time())

    # A chord's header and callback (S10): the same two tasks as demo.add / demo.total.
    @app.task(name="plain.add")
    def add(x, y):
        return x + y

    @app.task(name="plain.total")
    def total(numbers):
        return sum(n for n in numbers if n is not None)

    return app


def beat_schedule(*, entries: int, every: float, queue: str) -> dict:
    """``entries`` beat entries, each running ``plain.fired(i)`` every ``every`` seconds
    on ``queue`` (S11's baseline: Celery beat as a team would run it)."""
    return {f"entry-{i}": {"task": "plain.fired", "schedule": every, "args": (i,),
                           "options": {"queue": queue, "routing_key": queue}}
            for i in range(entries)}


_TIMINGS = os.environ.get("PLAIN_TIMINGS")


def _record(task_id: str, kind: str, started: float) -> None:
    if _TIMINGS:
        with open(_TIMINGS, "a") as out:  # one short O_APPEND write per line
            out.write(f"{task_id} {kind} {started:.6f} {time.time():.6f}\n")


#: The worker's app, configured from the environment.
app = make_app(broker_url=os.environ.get("CELERY_BROKER_URL"),
               queue=os.environ.get("PLAIN_QUEUE", "plain"),
               priority=_flag("PLAIN_PRIORITY"), acks_late=_flag("PLAIN_ACKS_LATE"),
               prefetch=int(os.environ.get("PLAIN_PREFETCH", "4")),
               confirm=_flag("PLAIN_CONFIRM"), results=os.environ.get("PLAIN_RESULTS", ""))
if os.environ.get("PLAIN_BEAT_ENTRIES"):
    from celery import signals

    @signals.after_task_publish.connect
    def _sent(headers=None, **_):  # when beat sent each run (S11's measurement)
        if _TIMINGS and headers and headers.get("id"):
            _record(headers["id"], "sent", time.time())

    app.conf.beat_schedule = beat_schedule(
        entries=int(os.environ["PLAIN_BEAT_ENTRIES"]),
        every=float(os.environ.get("PLAIN_BEAT_EVERY", "10")),
        queue=os.environ.get("PLAIN_BEAT_QUEUE", "plain"))


def timings(path) -> dict[str, tuple[str, float, float]]:
    """``{task_id: (kind, started, finished)}`` from a timings file."""
    out = {}
    if os.path.exists(path):
        with open(path) as lines:
            for line in lines:
                task_id, kind, started, finished = line.split()
                out[task_id] = (kind, float(started), float(finished))
    return out

"""What a reliability drill counts, and where its figures go.

A drill submits jobs of ``demo.witness`` (or ``demo.witness_slow``), breaks
something (a worker killed, the broker stopped, connections closed, a memory
alarm), lets the platform recover, then counts, as RabbitMQ's own Jepsen tests
do, from two independent witnesses:

- the job table: what was accepted and how each job ended;
- the workers' witness logs (``SWITCHYARD_WITNESS_DIR``): each completed run.

``lost`` is an accepted job that neither ran nor ended as the platform says it
may (dead-lettered with a reason, expired, cancelled); ``duplicated`` counts
runs beyond the first of a job. Each drill prints its figures and appends them
to ``var/drills/figures.json``, which docs/reliability.md quotes.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pika
from django.conf import settings
from django.db.models import Count

from jobs.models import Job
from routing import topology
from tests.processes import wait_until
from tests.test_platform import free_port, http_status

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "var" / "drills" / "figures.json"

#: How a job may end without a run and not count as lost.
ACCOUNTED = (Job.Status.DEAD, Job.Status.EXPIRED, Job.Status.CANCELLED)


def all_finished(job_ids) -> bool:
    """Have all these jobs reached a final state?"""
    return not Job.objects.filter(id__in=list(job_ids)).exclude(
        status__in=Job.FINISHED).exists()


def witnessed_runs(directory: Path) -> collections.Counter:
    """Completed runs per job id, from every witness log in ``directory``."""
    runs: collections.Counter = collections.Counter()
    for log in directory.glob("witness-*.log"):
        runs.update(line for line in log.read_text().splitlines() if line)
    return runs


def left_in_queues(broker_url: str | None = None) -> dict[str, int]:
    """Messages ready in each lane queue and dead-letter queue right now.

    Read with a passive declare over AMQP, not from the management API, whose
    counts lag by its statistics interval.
    """
    names = [lane.queue for lane in topology.LANES] + [lane.dead_queue for lane in topology.LANES]
    connection = pika.BlockingConnection(
        pika.URLParameters(broker_url or settings.CELERY_BROKER_URL))
    try:
        channel = connection.channel()
        return {name: channel.queue_declare(name, passive=True).method.message_count
                for name in names}
    finally:
        connection.close()


@dataclasses.dataclass
class Figures:
    """One drill's outcome; ``lost`` and ``duplicated`` are what a user would notice."""

    drill: str
    submitted: int
    accepted: int
    executed: int
    lost: int
    duplicated: int
    dead_lettered: int
    expired: int
    cancelled: int
    recovered: int
    left_in_queues: int
    seconds: float
    notes: str = ""

    def line(self) -> str:
        return (f"drill {self.drill}: submitted {self.submitted}, accepted {self.accepted}, "
                f"executed {self.executed}, lost {self.lost}, duplicated {self.duplicated}, "
                f"dead-lettered {self.dead_lettered}, expired {self.expired}, "
                f"cancelled {self.cancelled}, recovered {self.recovered}, "
                f"left in queues {self.left_in_queues}, {self.seconds:.1f} s"
                + (f" ({self.notes})" if self.notes else ""))


def count(drill: str, *, submitted: int, job_ids, witness_dir: Path, started: float,
          recovered: int = 0, left: int = 0, notes: str = "") -> Figures:
    """Figures of a drill whose accepted jobs are ``job_ids``."""
    ids = {str(i) for i in job_ids}
    runs = witnessed_runs(witness_dir)
    statuses = dict(Job.objects.filter(id__in=ids).values_list("status")
                    .annotate(n=Count("id")).order_by())
    ended = {str(i) for i in Job.objects.filter(id__in=ids, status__in=ACCOUNTED)
             .values_list("id", flat=True)}
    executed = {i for i in ids if runs[i]}
    lost = ids - executed - ended
    return Figures(
        drill=drill, submitted=submitted, accepted=len(ids), executed=len(executed),
        lost=len(lost), duplicated=sum(runs[i] - 1 for i in executed),
        dead_lettered=statuses.get(Job.Status.DEAD, 0),
        expired=statuses.get(Job.Status.EXPIRED, 0),
        cancelled=statuses.get(Job.Status.CANCELLED, 0), recovered=recovered,
        left_in_queues=left, seconds=time.monotonic() - started, notes=notes,
    )


def record(figures: Figures) -> Figures:
    """Print the figures and keep the latest of each drill in ``var/drills/figures.json``."""
    print(figures.line())
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    try:
        kept = json.loads(FIGURES.read_text())
    except (OSError, ValueError):
        kept = {}
    kept[figures.drill] = {**dataclasses.asdict(figures), "recorded_at": time.time(),
                           "vhost": getattr(settings, "TEST_VHOST", "")}
    tmp = FIGURES.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(kept, indent=2, sort_keys=True))
    tmp.replace(FIGURES)
    return figures


class memory_alarm:
    """Set RabbitMQ's memory high watermark to 0 (every publisher blocked), then restore it."""

    def __init__(self, management) -> None:
        self.management = management

    def _ctl(self, *args: str) -> str:
        return subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True,
                              text=True, timeout=60).stdout.strip()

    def _alarmed(self) -> bool:
        return any(node.get("mem_alarm") for node in self.management.get("nodes"))

    def __enter__(self):
        self.previous = self._ctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().")
        self._ctl("set_vm_memory_high_watermark", "0")
        try:
            wait_until(self._alarmed, 30, "the memory alarm")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        if self.previous.startswith("{absolute"):
            self._ctl("set_vm_memory_high_watermark", "absolute",
                      self.previous.strip("{}").split(",")[1].strip())
        else:
            self._ctl("set_vm_memory_high_watermark", self.previous)
        wait_until(lambda: not self._alarmed(), 30, "the memory alarm to clear")


class Flood:
    """Threads posting ``demo.witness`` jobs to the web's API until stopped.

    Each answer is kept as ``(status, seconds, job id or error)``; status 0 means
    the request got no HTTP answer at all (refused, reset or timed out).
    """

    def __init__(self, port: int, key: str, threads: int = 4,
                 params: dict | None = None) -> None:
        self.url = f"http://127.0.0.1:{port}/api/v1/jobs"
        self.key = key
        self.params = params or {}
        self.answers: list[tuple[int, float, str]] = []
        #: The ``Retry-After`` header of each 503 answer (None where it was missing).
        self.retry_after: list[str | None] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def post(self, **fields) -> tuple[int, float, str]:
        """One submission; ``fields`` are added to the request body."""
        body = json.dumps({"task": "demo.witness", "params": self.params,
                           **fields}).encode()
        req = urllib.request.Request(self.url, method="POST", data=body, headers={
            "Authorization": f"Token {self.key}", "Content-Type": "application/json"})
        began = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, time.monotonic() - began, json.loads(resp.read())["id"]
        except urllib.error.HTTPError as exc:
            if exc.code == 503:
                with self._lock:
                    self.retry_after.append(exc.headers.get("Retry-After"))
            return exc.code, time.monotonic() - began, exc.read().decode(errors="replace")[:200]
        except OSError as exc:
            return 0, time.monotonic() - began, repr(exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            answer = self.post()
            with self._lock:
                self.answers.append(answer)

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def accepted(self) -> list[str]:
        return [ident for status, _, ident in self.answers if status == 202]

    def count(self) -> int:
        with self._lock:
            return len(self.answers)


def platform_up(start_role, management, witness_dir: Path) -> tuple[list, int]:
    """Every role a flood drill runs: the web (``web_up``), a dispatcher, a quick worker
    of 4 processes and a slow one of 2 noting their runs in ``witness_dir``, once both
    lanes have a consumer: ``(roles, web port)``."""
    env = {"SWITCHYARD_WITNESS_DIR": str(witness_dir)}
    web, port = web_up(start_role)
    roles = [web, start_role("dispatcher"),
             start_role("worker", "quick", SWITCHYARD_QUICK_CONCURRENCY="4", **env),
             start_role("worker", "slow", SWITCHYARD_SLOW_CONCURRENCY="2", **env)]

    def consumers(queue: str) -> int:
        return (management.queue(settings.TEST_VHOST, queue) or {}).get("consumers", 0)

    wait_until(lambda: consumers("quick") >= 1 and consumers("slow") >= 1, 60,
               "consumers on both lanes", roles=roles)
    return roles, port


def web_up(start_role, **env):
    """The web role (gunicorn, 2 workers) on a free port, once it answers: ``(role, port)``."""
    port = free_port()
    web = start_role("web", WEB_BIND=f"127.0.0.1:{port}", WEB_WORKERS="2", **env)
    wait_until(lambda: http_status(f"http://127.0.0.1:{port}/healthz") == 200, 60, "the web",
               roles=[web])
    return web, port

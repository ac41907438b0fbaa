"""Draining a lane: stop its workers consuming, let running tasks finish, then stop them.

Used by ``manage.py drain LANE`` before work on a lane's queue (re-creating
it, docs/runbooks/topology-drift.md) or its workers. Through Celery's remote
control, so it works wherever the workers run:

1. find the workers consuming the lane's queue (``inspect active_queues``);
2. ``cancel_consumer``: each stops taking messages from the queue. Messages
   still in the queue stay there for later;
3. wait until none of them has a task running or reserved (with prefetch 1
   and late acks, a reserved message is one already delivered to it);
4. ``shutdown``: a warm shutdown of each, and wait until they stop answering.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from switchyard.celery import app

#: Seconds to wait for control replies.
REPLY_TIMEOUT = 3.0


@dataclass
class DrainResult:
    workers: list[str] = field(default_factory=list)
    running: dict[str, list[str]] = field(default_factory=dict)  # left when timed out
    stopped: bool = False

    @property
    def drained(self) -> bool:
        return not any(self.running.values())


def lane_workers(queue: str) -> list[str]:
    """Names of the workers consuming ``queue`` now."""
    answers = app.control.inspect(timeout=REPLY_TIMEOUT).active_queues() or {}
    return sorted(worker for worker, queues in answers.items()
                  if any(q.get("name") == queue for q in queues or []))


def lane_worker_names(lane: str) -> list[str]:
    """Names of the lane's workers that answer, consuming or not (``<lane>@host``)."""
    answers = app.control.ping(timeout=REPLY_TIMEOUT) or []
    return sorted(name for reply in answers for name in reply if name.startswith(f"{lane}@"))


def in_flight(workers: list[str]) -> dict[str, list[str]]:
    """``{worker: [task ids running or reserved]}``; a worker that does not answer
    counts as busy (unknown is not idle)."""
    inspect = app.control.inspect(destination=workers, timeout=REPLY_TIMEOUT)
    active = inspect.active() or {}
    reserved = inspect.reserved() or {}
    busy: dict[str, list[str]] = {}
    for worker in workers:
        if worker not in active or worker not in reserved:
            busy[worker] = ["(no answer)"]
            continue
        ids = [t.get("id", "?") for t in (active[worker] or []) + (reserved[worker] or [])]
        if ids:
            busy[worker] = ids
    return busy


def drain(queue: str, *, timeout: float, shutdown: bool = True, poll: float = 1.0,
          progress: Callable[[str], None] = print) -> DrainResult:
    """Drain the workers of ``queue``; see the module's docstring. Never raises on a
    timeout: the result says what is still running (its consumers stay cancelled)."""
    result = DrainResult(workers=lane_workers(queue))
    if not result.workers:
        return result
    progress(f"{len(result.workers)} worker(s) consume {queue}: {', '.join(result.workers)}")
    replies = app.control.cancel_consumer(queue, destination=result.workers, reply=True,
                                          timeout=REPLY_TIMEOUT) or []
    answered = {name for reply in replies for name in reply}
    missing = set(result.workers) - answered
    if missing:
        progress(f"no answer to cancel_consumer from {', '.join(sorted(missing))}")
    progress(f"stopped consuming {queue}; waiting for running tasks (at most {timeout:g} s)")

    deadline = time.monotonic() + timeout
    next_report = 0.0
    while True:
        result.running = in_flight(result.workers)
        if result.drained:
            break
        if time.monotonic() > deadline:
            return result
        if time.monotonic() >= next_report:
            count = sum(len(v) for v in result.running.values())
            progress(f"  {count} task(s) still running or reserved")
            next_report = time.monotonic() + 10
        time.sleep(poll)

    if shutdown:
        progress("no task left; warm shutdown of " + ", ".join(result.workers))
        app.control.shutdown(destination=result.workers)
        stop_by = time.monotonic() + 30
        while time.monotonic() < stop_by:
            alive = {n for reply in app.control.ping(destination=result.workers, timeout=1.0)
                     or [] for n in reply}
            if not alive:
                result.stopped = True
                break
            time.sleep(poll)
    return result


def resume(lane: str, queue: str) -> list[str]:
    """Make the lane's workers that still run consume ``queue`` again; return them."""
    workers = lane_worker_names(lane)
    if workers:
        app.control.add_consumer(queue, destination=workers, reply=True,
                                 timeout=REPLY_TIMEOUT)
    return workers

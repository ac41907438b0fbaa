"""Diagnostic tasks, usable by any tenant, to try the platform out.

``demo.slow_task`` occupies a slow-lane worker for a number of seconds;
``demo.quick_task`` answers at once. ``manage.py flood`` uses them to show that
a slow backlog never delays the quick lane. ``demo.flaky`` fails its first
runs (to watch a retry policy work) and ``demo.checksum`` is a batch task
whose items may ask to fail (to watch a batch report failed items).
``demo.witness`` and ``demo.witness_slow`` note each run they complete, so the
reliability drills (docs/reliability.md) can count lost and duplicated runs;
``demo.poison`` (kills its process) and ``demo.failing`` (raises) stand for bugs.
"""
from __future__ import annotations

import hashlib
import os
import time

from jobs.batch_task import batch_task
from jobs.errors import PermanentFailure
from jobs.models import Job
from switchyard.celery import app

#: A slow task may not ask to sleep longer than its lane's soft limit allows.
MAX_SLOW_SECONDS = 600.0


@app.task(
    name="demo.slow_task",
    lane="slow",
    params_schema={
        "type": "object",
        "properties": {"seconds": {"type": "number", "minimum": 0, "maximum": MAX_SLOW_SECONDS}},
        "additionalProperties": False,
    },
)
def slow_task(seconds: float = 1.0) -> float:
    """Sleep ``seconds`` (0 to 600) and return it: stands for heavy I/O-bound work."""
    seconds = float(seconds)
    if not 0 <= seconds <= MAX_SLOW_SECONDS:
        raise ValueError(f"seconds must be between 0 and {MAX_SLOW_SECONDS:g}, got {seconds:g}")
    time.sleep(seconds)
    return seconds


@app.task(
    name="demo.quick_task",
    lane="quick",
    params_schema={
        "type": "object",
        "properties": {"x": {"description": "any JSON value, returned as the result"}},
        "additionalProperties": False,
    },
)
def quick_task(x=None):
    """Return ``x`` at once: stands for a metadata lookup answered in milliseconds."""
    return x


@app.task(
    name="demo.add",
    lane="quick",
    params_schema={
        "type": "object",
        "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
        "required": ["x", "y"],
        "additionalProperties": False,
    },
)
def add(x: float, y: float) -> float:
    """Return ``x + y``: the smallest step of a chain (``chain(add.s(1, 2), add.s(3))``)."""
    return x + y


@app.task(
    name="demo.total",
    lane="quick",
    params_schema={
        "type": "object",
        "properties": {"numbers": {"type": "array", "items": {"type": ["number", "null"]}}},
        "required": ["numbers"],
        "additionalProperties": False,
    },
)
def total(numbers: list) -> float:
    """Return the sum of ``numbers`` (nulls: steps that did not succeed, counted as 0): a
    fan-in, such as a chord's callback."""
    return sum(n for n in numbers if n is not None)


@app.task(
    name="demo.fail",
    lane="quick",
    params_schema={
        "type": "object",
        "properties": {"message": {"type": "string", "maxLength": 500}},
        "additionalProperties": False,
    },
)
def fail(message: str = "failed as asked") -> None:
    """Fail at once, for good (``PermanentFailure``): to try a workflow's on_failure."""
    raise PermanentFailure(message)


@app.task(
    name="demo.flaky",
    lane="quick",
    bind=True,
    params_schema={
        "type": "object",
        "properties": {"fail_runs": {"type": "integer", "minimum": 0, "maximum": 25}},
        "additionalProperties": False,
    },
)
def flaky(self, fail_runs: int = 1) -> int:
    """Fail the first ``fail_runs`` runs, then succeed with the run number."""
    run = Job.objects.values_list("attempts", flat=True).get(id=self.request.id)
    if run <= fail_runs:
        raise RuntimeError(f"run {run} of {fail_runs} planned failures")
    return run


@batch_task(
    name="demo.checksum",
    lane="quick",
    item_schema={
        "type": "object",
        "properties": {
            "data": {"type": "string", "maxLength": 65536},
            "fail": {"type": "string", "maxLength": 200,
                     "description": "fail this item with this message"},
        },
        "required": ["data"],
        "additionalProperties": False,
    },
)
def checksum(item: dict) -> str:
    """SHA-256 of each item's ``data``; an item with ``fail`` fails with that message."""
    if item.get("fail"):
        raise ValueError(item["fail"])
    return hashlib.sha256(item["data"].encode()).hexdigest()


#: Parameters of the tasks that misbehave while a marker file exists.
MARKER_SCHEMA = {
    "type": "object",
    "properties": {"marker": {"type": "string"}},
    "required": ["marker"],
    "additionalProperties": False,
}


@app.task(
    name="demo.poison",
    lane="slow",
    public=False,
    params_schema=MARKER_SCHEMA,
)
def poison(marker: str) -> str:
    """Kill the process running it while the file ``marker`` exists, as a segfault or
    the OOM killer would; succeed once the file is gone (the fix is deployed).

    A poison message to rehearse docs/runbooks/poison-messages.md with. Not
    public: no tenant can submit it through the API.
    """
    if os.path.exists(marker):
        os._exit(70)
    return marker


@app.task(
    name="demo.failing",
    lane="quick",
    bind=True,
    public=False,
    params_schema=MARKER_SCHEMA,
)
def failing(self, marker: str) -> str:
    """Raise while the file ``marker`` exists, as a bug would on every attempt; once the
    file is gone (the fix is deployed) note the run like ``demo.witness`` and succeed.

    With a retry policy its job is dead-lettered into ``quick.dead`` once the policy is
    spent, to rehearse docs/runbooks/poison-messages.md. Not public.
    """
    if os.path.exists(marker):
        raise RuntimeError(f"bug not fixed yet ({marker} exists)")
    return _witness(self.request.id, 0)


#: Directory where ``demo.witness`` tasks log their runs; set only in the environment
#: of the workers of a reliability drill (tests/drills.py). Unset: the task runs and logs
#: nothing.
WITNESS_DIR_ENV = "SWITCHYARD_WITNESS_DIR"
WITNESS_SCHEMA = {
    "type": "object",
    "properties": {"seconds": {"type": "number", "minimum": 0, "maximum": 60}},
    "additionalProperties": False,
}


def _witness(task_id: str, seconds: float) -> str:
    """Sleep ``seconds``, then append the job id to this process's witness log.

    A drill counts executions from these logs, outside the job table: an id
    written twice is a duplicate execution, an accepted id never written is lost.
    Each process appends to its own file, one short line per write, so lines
    never interleave.
    """
    time.sleep(float(seconds))
    directory = os.environ.get(WITNESS_DIR_ENV)
    if directory:
        path = os.path.join(directory, f"witness-{os.getpid()}.log")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{task_id}\n".encode())
        finally:
            os.close(fd)
    return task_id


#: What ``demo.hog`` holds: kept by the process until it ends, as a leak would.
_HELD: list[bytearray] = []


@app.task(name="demo.hog", lane="quick", bind=True, public=False, params_schema={
    "type": "object",
    "properties": {"mb": {"type": "integer", "minimum": 1, "maximum": 1024}},
    "required": ["mb"],
    "additionalProperties": False,
})
def hog(self, mb: int) -> str:
    """Take ``mb`` MiB and keep it (every page touched), then note the run like
    ``demo.witness``: a leak or a huge input, to rehearse the pool's per-child memory
    limit (``--max-memory-per-child``, ``deploy/bin/worker``). Not public."""
    _HELD.append(bytearray(b"\x01" * (mb * 1024 * 1024)))
    return _witness(self.request.id, 0)


@app.task(name="demo.witness", lane="quick", bind=True, params_schema=WITNESS_SCHEMA)
def witness(self, seconds: float = 0.0) -> str:
    """Quick lane: sleep ``seconds`` (0 to 60), then note the run for a drill's count."""
    return _witness(self.request.id, seconds)


@app.task(name="demo.witness_slow", lane="slow", bind=True, params_schema=WITNESS_SCHEMA)
def witness_slow(self, seconds: float = 0.0) -> str:
    """Slow lane: sleep ``seconds`` (0 to 60), then note the run for a drill's count."""
    return _witness(self.request.id, seconds)

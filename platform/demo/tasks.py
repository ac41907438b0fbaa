"""Diagnostic tasks, usable by any tenant, to try the platform out.

``demo.slow_task`` occupies a slow-lane worker for a number of seconds;
``demo.quick_task`` answers at once. ``manage.py flood`` uses them to show that
a slow backlog never delays the quick lane. ``demo.flaky`` fails its first
runs (to watch a retry policy work) and ``demo.checksum`` is a batch task
whose items may ask to fail (to watch a batch report failed items).
"""
from __future__ import annotations

import hashlib
import os
import time

from jobs.models import Job
from switchyard.batch import batch_task
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


@app.task(
    name="demo.poison",
    lane="slow",
    public=False,
    params_schema={
        "type": "object",
        "properties": {"marker": {"type": "string"}},
        "required": ["marker"],
        "additionalProperties": False,
    },
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

"""Diagnostic tasks from the head-of-line field report, usable by any tenant.

``demo.slow_task`` occupies a slow-lane worker for a number of seconds;
``demo.quick_task`` answers at once. ``manage.py flood`` uses them to show that
a slow backlog never delays the quick lane.
"""
from __future__ import annotations

import time

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

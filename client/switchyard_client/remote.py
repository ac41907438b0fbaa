"""A stand-in for a task that runs on the platform, so calling code reads as with
``@app.task``: ``slow_task = app.remote_task("demo.slow_task"); slow_task.delay(10)``.

It holds no code: calling it directly (``slow_task(10)``) raises, since the task
runs on Switchyard's workers, never in the caller's process.
"""
from __future__ import annotations

from typing import Any

from celery.canvas import Signature
from celery.result import AsyncResult


class RemoteTask:
    """``delay``, ``apply_async``, ``s``/``si``/``signature`` and ``AsyncResult`` of one
    platform task, by name."""

    def __init__(self, app: Any, name: str) -> None:
        self.app = app
        self.name = name

    def __repr__(self) -> str:
        return f"<remote task {self.name}>"

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """``apply_async(args, kwargs)``: publish with no options."""
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> AsyncResult:
        """Publish one call; ``options`` as Celery's ``apply_async`` (client/README.md)."""
        return self.app.send_task(self.name, args=args, kwargs=kwargs, **options)

    def signature(self, args: Any = None, kwargs: Any = None, **options: Any) -> Signature:
        return self.app.signature(self.name, args=args, kwargs=kwargs, **options)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature, e.g. for ``link=process_file.s()``."""
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: a ``link`` does not prepend the parent's result."""
        return self.signature(args, kwargs, immutable=True)

    def AsyncResult(self, task_id: str) -> AsyncResult:  # noqa: N802 - Celery's name
        return self.app.AsyncResult(task_id)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{self.name} runs on Switchyard's workers, not here: call "
                        f"{self.name}.delay(...) or .apply_async(...)")

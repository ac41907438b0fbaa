"""Batch tasks: one function per item, run over a chunk of items per job.

Imported by the apps' ``tasks`` modules (media, demo) to declare their tasks; the
functions it registers run in the worker.

    @batch_task(name="media.thumbnail", lane="slow", item_schema={...})
    def thumbnail(item: dict) -> None:
        ...

registers a task whose parameters are ``{"items": [item, ...]}``. The API's
``POST /api/v1/batches`` splits up to 100,000 items into chunks and submits one
job per chunk. Inside a chunk an item that raises is recorded as failed (its
index in the chunk and the error) and the chunk goes on with the next item;
the batch reports which items failed and why. What stops the chunk itself (the
soft time limit, the worker lost) fails or retries the chunk as a whole.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from switchyard.celery import app

#: Longest error text kept per failed item.
MAX_ITEM_ERROR = 500


def run_items(handle: Callable[[Any], Any], items: list, *, keep_results: bool = False,
              single_item_raises: bool = False) -> dict:
    """Apply ``handle`` to each item; ``{"succeeded": n, "failed": [{"index", "error"}]}``,
    plus ``"results": [{"index", "result"}]`` of the items that succeeded with
    ``keep_results``. With ``single_item_raises`` a job of one item fails (raises)
    when its item does: a one-file job reads ``failed``, not ``succeeded``."""
    succeeded, failed, results = 0, [], []
    for index, item in enumerate(items):
        try:
            result = handle(item)
        except SoftTimeLimitExceeded:
            raise
        except Exception as exc:  # one bad item never sinks its chunk
            if single_item_raises and len(items) == 1:
                raise
            failed.append({"index": index,
                           "error": f"{type(exc).__name__}: {exc}"[:MAX_ITEM_ERROR]})
        else:
            succeeded += 1
            if keep_results:
                results.append({"index": index, "result": result})
    outcome: dict[str, Any] = {"succeeded": succeeded, "failed": failed}
    if keep_results:
        outcome["results"] = results
    return outcome


def batch_task(*, name: str, lane: str, item_schema: dict,
               check_item: Callable[..., None] | None = None, keep_results: bool = False,
               single_item_raises: bool = False, **options):
    """Register ``handle(item)`` as the batch task ``name`` in ``lane``.

    ``check_item(item, tenant=...)``, if given, is run by the API on every item
    after the schema and raises ``jobs.catalogue.InvalidParams`` naming the field
    (relative to the item) for input a schema cannot judge, such as a path that
    leaves the tenant's storage; ``tenant`` may be None (a linked task's
    params). With ``keep_results`` each chunk's result lists what every item
    returned. ``single_item_raises``: see ``run_items``.
    """

    def register(handle: Callable[[Any], Any]):
        def run(items: list) -> dict:
            return run_items(handle, items, keep_results=keep_results,
                             single_item_raises=single_item_raises)

        run.__name__, run.__qualname__ = handle.__name__, handle.__qualname__
        run.__module__, run.__doc__ = handle.__module__, handle.__doc__
        params_schema = {
            "type": "object",
            "properties": {"items": {"type": "array", "items": item_schema, "minItems": 1}},
            "required": ["items"],
            "additionalProperties": False,
        }
        if check_item is not None:
            options["check_item"] = staticmethod(check_item)
        return app.task(name=name, lane=lane, item_schema=item_schema,
                        params_schema=params_schema, **options)(run)

    return register

"""The tasks the platform knows: which are routable and where they run
(``task_lane``), the catalogue of those the API accepts, and validation of
their parameters.

Used by the web (the API lists and validates), by every submitting process
(``task_lane``: web, worker follow-ups, tools) and by nothing that needs a
job record. Schemas are compiled once per task (fastjsonschema): a 100,000-item
batch is checked in a fraction of a second, inside the 3 s the batch API promises.
"""
from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import fastjsonschema

from jobs.errors import UnknownTask
from routing import topology
from switchyard.celery import app

#: Parameters of a task that declares no schema: any JSON object.
ANY_OBJECT = {"type": "object"}


def unknown_task_message(name: Any) -> str:
    """What the API says of a task name it does not accept."""
    return f"unknown task {name!r}; see /api/v1/tasks"


def task_lane(task: str, params: Mapping[str, Any] | None = None, *,
              tenant: Any = None) -> topology.Lane:
    """The lane of ``task``: the one it declared, or with ``params`` the one it picks
    for them (``SwitchyardTask.lane_for``); ``UnknownTask`` if it is not routable."""
    registered = app.tasks.get(task)
    lane_name = getattr(registered, "lane", None)
    if registered is None or lane_name is None:
        raise UnknownTask(f"unknown task {task!r}")
    if params is not None:
        lane_name = registered.lane_for(params, tenant=tenant)
    return topology.lane(lane_name)


@dataclass(frozen=True)
class CatalogueTask:
    name: str
    lane: str
    description: str
    params_schema: dict
    #: JSON Schema of one item for a batch task (``jobs.batch_task.batch_task``), else None.
    item_schema: dict | None = None
    #: The batch task's ``check_item(item, tenant=...)``: what a schema cannot judge.
    check_item: Callable[..., None] | None = field(default=None, compare=False, repr=False)
    #: The parameter names positional arguments map onto, in order (Celery-native
    #: ``task.delay(10)``): the task function's own positional parameters.
    positional: tuple[str, ...] = ()

    @property
    def accepts_batches(self) -> bool:
        return self.item_schema is not None


class InvalidParams(ValueError):
    """Input breaks the task's schema; ``field`` names the offending value."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


#: ``catalogue()`` as last built, with the size of the task registry it was built from:
#: tasks register at import, so the registry only grows while modules load.
_built: tuple[int, list[CatalogueTask], dict[str, CatalogueTask]] | None = None


def catalogue() -> list[CatalogueTask]:
    """Every public task with a lane, sorted by name."""
    return list(_catalogue()[1])


def _catalogue() -> tuple[int, list[CatalogueTask], dict[str, CatalogueTask]]:
    global _built
    registered = len(app.tasks)
    if _built is None or _built[0] != registered:
        found = _build()
        _built = (registered, found, {task.name: task for task in found})
    return _built


def _build() -> list[CatalogueTask]:
    found = []
    for name, task in sorted(app.tasks.items()):
        if getattr(task, "lane", None) is None or not getattr(task, "public", True):
            continue
        doc = (task.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        found.append(CatalogueTask(name=name, lane=task.lane, description=doc,
                                   params_schema=task.params_schema or ANY_OBJECT,
                                   item_schema=getattr(task, "item_schema", None),
                                   check_item=getattr(task, "check_item", None),
                                   positional=positional_names(task)))
    return found


def positional_names(task) -> tuple[str, ...]:
    """The names of ``task``'s parameters that a positional argument can fill, in order
    (a bound task's ``self`` excluded)."""
    try:
        parameters = inspect.signature(task.run).parameters.values()
    except (TypeError, ValueError):
        return ()
    return tuple(p.name for p in parameters
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def catalogue_task(name: str) -> CatalogueTask | None:
    return _catalogue()[2].get(name)


@functools.lru_cache(maxsize=256)
def _compiled(schema_json: str) -> Callable[[Any], Any]:
    return fastjsonschema.compile(json.loads(schema_json))


def _validator(schema: dict) -> Callable[[Any], Any]:
    return _compiled(json.dumps(schema, sort_keys=True))


def _field(prefix: str, error: fastjsonschema.JsonSchemaValueException) -> str:
    """``data.size`` from fastjsonschema becomes ``<prefix>.size``."""
    path = [str(p) for p in (error.path or ["data"])[1:]]
    return ".".join([prefix, *path])


def _message(error: fastjsonschema.JsonSchemaValueException) -> str:
    name = error.name or "data"
    message = error.message
    return message[len(name):].strip() if message.startswith(name) else message


def validate_params(task: CatalogueTask, params: Any, *, field: str = "params",
                    tenant: Any = None) -> None:
    """Raise ``InvalidParams`` naming the offending parameter (``params.seconds``).
    A batch task's items also go through its ``check_item`` (for ``tenant``)."""
    try:
        _validator(task.params_schema)(params)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise InvalidParams(_message(exc), _field(field, exc)) from None
    if task.check_item is not None:
        _check_items(task, params.get("items", []), f"{field}.items", tenant)


def validate_items(task: CatalogueTask, items: Sequence[Any], *, tenant: Any = None) -> None:
    """Check every batch item against the task's item schema, then its
    ``check_item``; the first bad one is named by its index (``items.41017.path``)."""
    check = _validator(task.item_schema or ANY_OBJECT)
    for index, item in enumerate(items):
        try:
            check(item)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise InvalidParams(_message(exc), _field(f"items.{index}", exc)) from None
    if task.check_item is not None:
        _check_items(task, items, "items", tenant)


def _check_items(task: CatalogueTask, items: Sequence[Any], prefix: str, tenant: Any) -> None:
    for index, item in enumerate(items):
        try:
            task.check_item(item, tenant=tenant)
        except InvalidParams as exc:
            raise InvalidParams(exc.message, f"{prefix}.{index}.{exc.field}") from None

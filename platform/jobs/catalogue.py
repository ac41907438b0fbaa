"""The catalogue of tasks the API accepts, and validation of their parameters."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jsonschema

from switchyard.celery import app

#: Parameters of a task that declares no schema: any JSON object.
ANY_OBJECT = {"type": "object"}


@dataclass(frozen=True)
class CatalogueTask:
    name: str
    lane: str
    description: str
    params_schema: dict


class InvalidParams(ValueError):
    """``params`` break the task's schema; ``field`` names the offending parameter."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def catalogue() -> list[CatalogueTask]:
    """Every public task with a lane, sorted by name."""
    found = []
    for name, task in sorted(app.tasks.items()):
        if getattr(task, "lane", None) is None or not getattr(task, "public", True):
            continue
        doc = (task.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        found.append(CatalogueTask(name=name, lane=task.lane, description=doc,
                                   params_schema=task.params_schema or ANY_OBJECT))
    return found


def catalogue_task(name: str) -> CatalogueTask | None:
    return next((t for t in catalogue() if t.name == name), None)


def validate_params(task: CatalogueTask, params: Any) -> None:
    """Raise ``InvalidParams`` naming the first offending parameter."""
    validator = jsonschema.Draft202012Validator(task.params_schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(params))
    if error is None:
        return
    path = ".".join(str(p) for p in error.absolute_path)
    field = f"params.{path}" if path else "params"
    raise InvalidParams(f"{field}: {error.message}", field)

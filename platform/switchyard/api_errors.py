"""One error shape for the whole API: ``{"detail": "...", "errors": {"dotted.field": [...]}}``.

DRF nests validation errors (``{"options": {"priority": [...]}}``); clients
want the offending field named in one place, so they are flattened to dotted
paths, and ``detail`` repeats the first one as a sentence.
"""
from __future__ import annotations

from rest_framework.exceptions import ValidationError
from rest_framework.views import exception_handler


def _flatten(value, prefix: str = "") -> dict[str, list[str]]:
    if isinstance(value, dict):
        out: dict[str, list[str]] = {}
        for key, inner in value.items():
            path = str(key) if not prefix else f"{prefix}.{key}"
            if key == "non_field_errors":
                path = prefix or "request"
            out.update(_flatten(inner, path))
        return out
    if isinstance(value, list) and value and all(isinstance(v, (dict, list)) for v in value):
        out = {}
        for i, inner in enumerate(value):
            out.update(_flatten(inner, f"{prefix}.{i}" if prefix else str(i)))
        return out
    items = value if isinstance(value, list) else [value]
    return {prefix or "request": [str(v) for v in items]}


def api_exception_handler(exc, context):
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, ValidationError):
        errors = _flatten(response.data)
        field, messages = next(iter(errors.items()))
        response.data = {"detail": f"{field}: {messages[0]}", "errors": errors}
    elif isinstance(response.data, dict) and "detail" in response.data:
        response.data = {"detail": str(response.data["detail"])}
    return response

"""One error shape for the whole API: ``{"detail": "...", "errors": {"dotted.field": [...]}}``.

DRF nests validation errors (``{"options": {"priority": [...]}}``); clients
want the offending field named in one place, so they are flattened to dotted
paths, and ``detail`` repeats the first one as a sentence.

A database that cannot answer in time (SQLite's write lock still held after its busy
timeout, PostgreSQL refusing connections or restarting, a connection lost) is a 503 with
``Retry-After``, never a 500: the client did nothing wrong and may try again. Its text
stays in the log; the answer names no host, user, file or driver.
"""
from __future__ import annotations

import logging

from django.http import JsonResponse
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler, set_rollback

from switchyard.database import DATABASE_UNAVAILABLE

logger = logging.getLogger(__name__)

#: Seconds a client is told to wait before trying again after a 503 of the database.
DATABASE_RETRY_AFTER = 5


def database_unavailable(request, exc: BaseException) -> tuple[dict, dict]:
    """Log ``exc`` and give the 503's ``(body, headers)``."""
    logger.error("%s %s answered 503, the database is unavailable: %s: %s",
                 request.method, request.path, type(exc).__name__, exc)
    detail = (f"service unavailable: the database is busy or unreachable; try again in "
              f"{DATABASE_RETRY_AFTER} s (a submission sent again with the same "
              "Idempotency-Key is never recorded twice)")
    return {"detail": detail}, {"Retry-After": str(DATABASE_RETRY_AFTER)}


def database_unavailable_response(request, exc: BaseException) -> JsonResponse:
    """The 503 for a view outside DRF (``switchyard.middleware``)."""
    body, headers = database_unavailable(request, exc)
    return JsonResponse(body, status=503, headers=headers)


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
    if isinstance(exc, DATABASE_UNAVAILABLE):
        set_rollback()
        body, headers = database_unavailable(context["request"], exc)
        return Response(body, status=status.HTTP_503_SERVICE_UNAVAILABLE, headers=headers)
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

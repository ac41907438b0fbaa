"""The HTTP API's shared pieces: strict input, pagination, own-or-404, and the answers
to a submission (``202``, or ``400`` / ``409`` / ``429``).

Used by the views of every app that has an API (``jobs.api``, ``jobs.batch_api``,
``media.api``), in the web process; no app imports another app's views. The
error shape itself is the project's (``switchyard.api_errors``): views raise,
and the handler there renders every error the same way.
"""
from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.db.models import TextField
from django.db.models.functions import Cast, Coalesce, Length
from rest_framework import pagination, serializers, status
from rest_framework.exceptions import APIException, NotFound, ValidationError
from rest_framework.response import Response

from jobs.catalogue import InvalidParams
from jobs.errors import (
    IdempotencyConflict,
    InvalidSubmission,
    NotCancellable,
    QuotaExceeded,
    StorageQuotaExceeded,
)

IDEMPOTENCY_HEADER = "Idempotency-Key"


# Input ----------------------------------------------------------------------------------------

def refuse_unknown_fields(data: Any, accepted: Iterable[str], *, prefix: str = "") -> None:
    """``400`` naming each key of ``data`` (a dict) that is not ``accepted``: an option
    silently ignored is a bug waiting."""
    if not isinstance(data, Mapping):
        return
    accepted = list(accepted)
    unknown = sorted(set(data) - set(accepted))
    if unknown:
        message = f"unknown field; accepted: {', '.join(accepted)}"
        raise ValidationError({f"{prefix}{key}": [message] for key in unknown})


class StrictSerializer(serializers.Serializer):
    """Refuses keys it does not know (``refuse_unknown_fields``)."""

    def to_internal_value(self, data):
        refuse_unknown_fields(data, self.fields)
        return super().to_internal_value(data)


def idempotency_key(request) -> str:
    """The request's ``Idempotency-Key`` header ("" without one)."""
    key = request.headers.get(IDEMPOTENCY_HEADER, "")
    if len(key) > 255:
        raise ValidationError({IDEMPOTENCY_HEADER: ["at most 255 characters"]})
    return key


# Reading --------------------------------------------------------------------------------------

class CursorPagination(pagination.CursorPagination):
    """Pages of 100 (``page_size`` up to 1,000), newest first, unless a view says
    otherwise. DRF answers an undecodable ``cursor`` with 404, as if the list did
    not exist; the list is there and the query parameter is wrong, so say which
    (400, ``cursor``)."""

    ordering = "-submitted_at"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000

    def decode_cursor(self, request):
        try:
            return super().decode_cursor(request)
        except NotFound as exc:
            raise ValidationError({self.cursor_query_param: [
                "invalid cursor; use the next or previous link of a page"]}) from exc


class JobPagination(CursorPagination):
    """Pages of jobs that also stop at ``SWITCHYARD_MAX_PAGE_BYTES`` of their
    parameters, results and errors (at least one job a page).

    A page size counts rows, not bytes: 1,000 jobs with 1 MB of params each
    would be a 1 GB answer built in the web process. The page is first read
    without those fields, with their sizes measured by the database; it is cut
    where the sizes add up past the budget (the ``next`` link then starts at
    the first job left out), and only the kept jobs' fields are read."""

    heavy_fields = ("params", "result", "error")
    _cut: int | None = None

    def get_page_size(self, request):
        return self._cut if self._cut is not None else super().get_page_size(request)

    def paginate_queryset(self, queryset, request, view=None):
        sizes = [Coalesce(Length(Cast(name, TextField())), 0) for name in self.heavy_fields]
        light = queryset.defer(*self.heavy_fields).annotate(
            _heavy_chars=functools.reduce(operator.add, sizes))
        page = super().paginate_queryset(light, request, view)
        budget, total, fits = settings.SWITCHYARD_MAX_PAGE_BYTES, 0, 0
        for job in page:
            total += job._heavy_chars
            if fits and total > budget:
                break
            fits += 1
        if fits < len(page):
            self._cut = fits
            page = super().paginate_queryset(light, request, view)
        heavy = {row[0]: row[1:] for row in queryset.model.objects.filter(
            pk__in=[job.pk for job in page]).values_list("pk", *self.heavy_fields)}
        for job in page:
            for name, value in zip(self.heavy_fields, heavy.get(job.pk, ()), strict=True):
                setattr(job, name, value)
        return page


def paginated(view, request, records, serializer_class) -> Response:
    """One page of ``records`` through the view's ``pagination_class``."""
    paginator = view.pagination_class()
    page = paginator.paginate_queryset(records, request, view=view)
    return paginator.get_paginated_response(
        serializer_class(page, many=True, context={"request": request}).data)


def own_or_404(record, what: str, record_id):
    """``record`` (a selector's answer for the caller's tenant), or ``404`` saying
    ``no <what> <id>``: another tenant's record is as good as missing."""
    if record is None:
        raise NotFound(f"no {what} {record_id}")
    return record


# Answers --------------------------------------------------------------------------------------

class QuotaAnswer(APIException):
    """``429`` saying which quota, with ``Retry-After`` (DRF sets it from ``wait``)."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS

    def __init__(self, exc: QuotaExceeded) -> None:
        super().__init__(f"quota exceeded: {exc}")
        self.wait = exc.retry_after


class StorageQuotaAnswer(APIException):
    """``413``: what the request would store is more than the tenant's storage quota
    has left; unlike a rate quota, waiting does not help (so no ``Retry-After``)."""

    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE


class ConflictAnswer(APIException):
    """``409``: not possible in the record's current state, or a reused key."""

    status_code = status.HTTP_409_CONFLICT


@contextmanager
def refusals() -> Iterator[None]:
    """Turn the platform's refusals raised inside into the API's answers:
    ``InvalidSubmission`` and ``InvalidParams`` → 400 naming the field,
    ``QuotaExceeded`` → 429, ``StorageQuotaExceeded`` → 413, ``IdempotencyConflict``
    and ``NotCancellable`` → 409."""
    try:
        yield
    except InvalidSubmission as exc:
        raise ValidationError({exc.field: [exc.message]}) from exc
    except InvalidParams as exc:
        raise ValidationError({exc.field: [exc.message]}) from exc
    except QuotaExceeded as exc:
        raise QuotaAnswer(exc) from exc
    except StorageQuotaExceeded as exc:
        raise StorageQuotaAnswer(f"storage quota exceeded: {exc}") from exc
    except (IdempotencyConflict, NotCancellable) as exc:
        raise ConflictAnswer(str(exc)) from exc


def accepted(submit: Callable[[], tuple[Any, bool]], *, location: Callable[[Any], str],
             render: Callable[[Any], dict]) -> Response:
    """Run a submission service and answer as the API promises: 202 with
    ``Location`` (and ``Idempotent-Replayed`` for a replay), or 400/409/429."""
    with refusals():
        record, created = submit()
    headers = {"Location": location(record)}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return Response(render(record), status=status.HTTP_202_ACCEPTED, headers=headers)

"""Request body limits per endpoint, and a database that cannot answer, in the API's
error shape.

Django has one global limit (``DATA_UPLOAD_MAX_MEMORY_SIZE``); the batch API
needs a far larger one than everything else. The limit is checked here against
``Content-Length`` before any byte is read, so an oversized request costs
nothing and is told which limit it broke.
"""
from __future__ import annotations

from django.conf import settings
from django.http import JsonResponse

from switchyard.api_errors import DATABASE_UNAVAILABLE, database_unavailable_response

BATCH_PATH = "/api/v1/batches"
BULK_PATH = "/api/v1/jobs/bulk"
#: Takes up to 100,000 file ids, like a batch.
MEDIA_OPERATIONS_PATH = "/api/v1/media/operations"
MEDIA_UPLOAD_PATH = "/api/v1/media/uploads"
#: Takes up to 10,000 steps, each with its params.
WORKFLOW_PATH = "/api/v1/workflows"


def body_limit(path: str) -> int:
    path = path.rstrip("/")
    if path in (BATCH_PATH, BULK_PATH, MEDIA_OPERATIONS_PATH, WORKFLOW_PATH):
        return settings.SWITCHYARD_MAX_BATCH_BODY_BYTES
    if path == MEDIA_UPLOAD_PATH:
        return settings.SWITCHYARD_MEDIA_MAX_UPLOAD_BODY_BYTES
    return settings.SWITCHYARD_MAX_BODY_BYTES


class BodyLimitMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        limit = body_limit(request.path)
        if length > limit:
            message = (f"request body is {length} bytes; this endpoint accepts at most {limit} "
                       "bytes")
            return JsonResponse({"detail": f"body: {message}", "errors": {"body": [message]}},
                                status=400)
        return self.get_response(request)


class DatabaseUnavailableMiddleware:
    """A view outside DRF (``/metrics``, the dashboard, the admin) whose database cannot
    answer gets the API's 503 with ``Retry-After`` rather than a 500; DRF's views get it
    from ``switchyard.api_errors.api_exception_handler``."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, DATABASE_UNAVAILABLE):
            return database_unavailable_response(request, exception)
        return None

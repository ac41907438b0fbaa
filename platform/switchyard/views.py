"""Project-level views: liveness and readiness, and the API's 404."""
from __future__ import annotations

import logging

from django.db import connection
from django.http import JsonResponse
from django.views.defaults import page_not_found

from switchyard.api_errors import DATABASE_RETRY_AFTER

logger = logging.getLogger(__name__)


def healthz(request):
    """200 when the process answers and its database is reachable, else 503. The
    database's error goes to the log, never to the caller (it can name hosts and users)."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:  # any database failure means not ready
        logger.exception("healthz: the database is unreachable")
        return JsonResponse({"status": "unavailable", "database": "unreachable"}, status=503,
                            headers={"Retry-After": str(DATABASE_RETRY_AFTER)})
    return JsonResponse({"status": "ok"})


def not_found(request, exception=None):
    """Django's 404 page, but JSON in the API's error shape under ``/api/`` (a path that
    matches no route, such as a job id that is not a UUID)."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": f"no such resource: {request.path}"}, status=404)
    return page_not_found(request, exception)

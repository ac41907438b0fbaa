"""Project-level views: liveness and readiness."""
from __future__ import annotations

from django.db import connection
from django.http import JsonResponse


def healthz(request):
    """200 when the process answers and its database is reachable, else 503."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any database failure means not ready
        return JsonResponse({"status": "unavailable", "database": str(exc)}, status=503)
    return JsonResponse({"status": "ok"})

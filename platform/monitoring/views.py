"""``/metrics`` (Prometheus text format) and the staff dashboard."""
from __future__ import annotations

import hmac

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from monitoring.collector import CachedCollector, QueueCollector
from monitoring.metrics import recorded_registry
from monitoring.snapshot import queue_snapshot
from routing import priorities, topology


def _token_ok(request) -> bool:
    token = settings.SWITCHYARD_METRICS_TOKEN
    if not token:
        return True
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


#: The scrape-time gauges, computed at most once per SWITCHYARD_METRICS_CACHE_SECONDS.
_gauges = CachedCollector(QueueCollector())


@require_GET
def metrics(request):
    """Every process's counters and histograms, plus gauges read at most a few seconds ago."""
    if not settings.SWITCHYARD_METRICS_TOKEN and settings.SWITCHYARD_METRICS_REQUIRE_TOKEN:
        return HttpResponse("metrics are off until SWITCHYARD_METRICS_TOKEN is set "
                            "(production settings)\n", status=403, content_type="text/plain")
    if not _token_ok(request):
        response = HttpResponse("metrics need the bearer token (SWITCHYARD_METRICS_TOKEN)\n",
                                status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    registry = recorded_registry()
    _gauges.ttl = settings.SWITCHYARD_METRICS_CACHE_SECONDS
    registry.register(_gauges)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def _window(request) -> int:
    try:
        return max(60, min(3600, int(request.GET.get("window", 300))))
    except ValueError:
        return 300


@staff_member_required
@require_GET
def dashboard(request):
    return render(request, "monitoring/dashboard.html", {
        "lanes": [lane.name for lane in topology.LANES],
        "tiers": [t.name for t in reversed(priorities.TIERS)],
        "refresh_seconds": settings.SWITCHYARD_DASHBOARD_REFRESH,
    })


@staff_member_required
@require_GET
def dashboard_data(request):
    return JsonResponse(queue_snapshot(window=_window(request)).as_dict())

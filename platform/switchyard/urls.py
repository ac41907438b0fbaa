"""URL configuration: the project's own views, and each app's URLconf by name."""
from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerView,
)

from home.views import self_only
from switchyard.views import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("", include("home.urls")),
    path("", include("monitoring.urls")),
    path("api/v1/", include("jobs.urls")),
    path("api/v1/", include("schedules.urls")),
    path("api/v1/media/", include("media.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # Swagger UI and Redoc from drf-spectacular-sidecar's static files (settings: *_DIST),
    # and nothing from another origin (home.views.self_only).
    path("api/docs/", self_only(SpectacularSwaggerView.as_view(url_name="schema")),
         name="api-docs"),
    path("api/redoc/", self_only(SpectacularRedocView.as_view(
        url_name="schema", template_name="home/redoc.html")), name="api-redoc"),
]

handler404 = "switchyard.views.not_found"

from __future__ import annotations

from django.urls import path

from monitoring import views

app_name = "monitoring"
urlpatterns = [
    path("metrics", views.metrics, name="metrics"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("dashboard/data", views.dashboard_data, name="dashboard-data"),
]

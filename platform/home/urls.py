from __future__ import annotations

from django.urls import path

from home import views

app_name = "home"
urlpatterns = [
    path("", views.landing, name="landing"),
    path("runbooks/", views.runbook_list, name="runbooks"),
    path("runbooks/<slug:name>", views.runbook_detail, name="runbook"),
]

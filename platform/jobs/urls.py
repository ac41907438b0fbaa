from __future__ import annotations

from django.urls import path

from jobs.api import JobCancelApi, JobDetailApi, JobListSubmitApi, TaskCatalogueApi

app_name = "jobs"
urlpatterns = [
    path("jobs", JobListSubmitApi.as_view(), name="job-list"),
    path("jobs/<uuid:job_id>", JobDetailApi.as_view(), name="job-detail"),
    path("jobs/<uuid:job_id>/cancel", JobCancelApi.as_view(), name="job-cancel"),
    path("tasks", TaskCatalogueApi.as_view(), name="task-list"),
]

from __future__ import annotations

from django.urls import path

from jobs.api import (
    JobBulkSubmitApi,
    JobCancelApi,
    JobDetailApi,
    JobListSubmitApi,
    TaskCatalogueApi,
)
from jobs.batch_api import (
    BatchCancelApi,
    BatchChunksApi,
    BatchDetailApi,
    BatchFailuresApi,
    BatchListSubmitApi,
)
from jobs.workflow_api import (
    ChordRegisterApi,
    WorkflowCancelApi,
    WorkflowDetailApi,
    WorkflowListSubmitApi,
)

app_name = "jobs"
urlpatterns = [
    path("jobs", JobListSubmitApi.as_view(), name="job-list"),
    path("jobs/bulk", JobBulkSubmitApi.as_view(), name="job-bulk"),
    path("jobs/<uuid:job_id>", JobDetailApi.as_view(), name="job-detail"),
    path("jobs/<uuid:job_id>/cancel", JobCancelApi.as_view(), name="job-cancel"),
    path("batches", BatchListSubmitApi.as_view(), name="batch-list"),
    path("batches/<uuid:batch_id>", BatchDetailApi.as_view(), name="batch-detail"),
    path("batches/<uuid:batch_id>/cancel", BatchCancelApi.as_view(), name="batch-cancel"),
    path("batches/<uuid:batch_id>/failures", BatchFailuresApi.as_view(), name="batch-failures"),
    path("batches/<uuid:batch_id>/chunks", BatchChunksApi.as_view(), name="batch-chunks"),
    path("tasks", TaskCatalogueApi.as_view(), name="task-list"),
    path("workflows", WorkflowListSubmitApi.as_view(), name="workflow-list"),
    path("workflows/chords", ChordRegisterApi.as_view(), name="workflow-chords"),
    path("workflows/<uuid:workflow_id>", WorkflowDetailApi.as_view(), name="workflow-detail"),
    path("workflows/<uuid:workflow_id>/cancel", WorkflowCancelApi.as_view(),
         name="workflow-cancel"),
]

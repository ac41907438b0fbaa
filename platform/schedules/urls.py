from __future__ import annotations

from django.urls import path

from schedules.api import (
    ScheduleDetailApi,
    ScheduleListCreateApi,
    SchedulePauseApi,
    ScheduleResumeApi,
    ScheduleTriggerApi,
)

app_name = "schedules"
urlpatterns = [
    path("schedules", ScheduleListCreateApi.as_view(), name="schedule-list"),
    path("schedules/<uuid:schedule_id>", ScheduleDetailApi.as_view(), name="schedule-detail"),
    path("schedules/<uuid:schedule_id>/pause", SchedulePauseApi.as_view(),
         name="schedule-pause"),
    path("schedules/<uuid:schedule_id>/resume", ScheduleResumeApi.as_view(),
         name="schedule-resume"),
    path("schedules/<uuid:schedule_id>/trigger", ScheduleTriggerApi.as_view(),
         name="schedule-trigger"),
]

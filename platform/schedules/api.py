"""The schedule API (v1): create, list, read (next fire times, last runs), change,
delete, pause, resume, trigger.

Run by the web. Views parse, call ``schedules.services`` or ``schedules.selectors``,
and answer through the shared API pieces (``jobs.api_support``): a refusal is a
400 naming the field, a quota a 429, someone else's schedule a 404.
"""
from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.api_support import CursorPagination, StrictSerializer, own_or_404, paginated, refusals
from jobs.serializers import known_task, parse_options
from schedules.models import Schedule, ScheduleFire
from schedules.rules import fire_times
from schedules.selectors import schedule_get, schedule_last_fires, schedule_list
from schedules.services import (
    schedule_create,
    schedule_delete,
    schedule_pause,
    schedule_resume,
    schedule_trigger,
    schedule_update,
)
from switchyard.clock import platform_now
from switchyard.openapi import ERRORS, ErrorSerializer

#: Fire times shown by ``GET /api/v1/schedules/{id}``, and last runs.
NEXT_FIRE_TIMES = 5
LAST_RUNS = 10


class SchedulePagination(CursorPagination):
    ordering = "-created_at"


class ScheduleInputSerializer(StrictSerializer):
    """A schedule as ``POST`` takes it (``PATCH`` takes any part of it)."""

    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    # A plain string in the schema (the catalogue's enum is the job API's), checked
    # against the catalogue by ``known_task`` all the same.
    task = serializers.CharField(max_length=200, help_text="a name from /api/v1/tasks")
    params = serializers.DictField(required=False)
    options = serializers.DictField(required=False, help_text=(
        "as for POST /api/v1/jobs: priority, expires (seconds), retry_policy, link, "
        "link_error; countdown and eta are refused (the fire time says when)"))
    cron = serializers.CharField(max_length=200, required=False, allow_blank=True,
                                 help_text="five fields, read in timezone")
    timezone = serializers.CharField(max_length=64, required=False,
                                     help_text="IANA name, default UTC")
    every = serializers.IntegerField(required=False, allow_null=True,
                                     help_text="seconds (at least 10), instead of cron")
    overlap = serializers.ChoiceField(choices=Schedule.Overlap.choices, required=False)
    catch_up = serializers.ChoiceField(choices=Schedule.CatchUp.choices, required=False)
    jitter = serializers.IntegerField(required=False, min_value=0,
                                      help_text="seconds; each job runs up to this late")
    start_at = serializers.DateTimeField(required=False, allow_null=True)
    end_at = serializers.DateTimeField(required=False, allow_null=True)
    paused = serializers.BooleanField(required=False)


class FireOutputSerializer(serializers.ModelSerializer):
    job_status = serializers.CharField(source="job.status", default=None)

    class Meta:
        model = ScheduleFire
        fields = ["fire_at", "triggered", "outcome", "reason", "detail", "job", "job_status",
                  "lateness", "recorded_at"]


class ScheduleOutputSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()

    class Meta:
        model = Schedule
        fields = ["id", "name", "task", "params", "options", "cron", "timezone", "every",
                  "overlap", "catch_up", "jitter", "start_at", "end_at", "paused",
                  "next_fire_at", "created_at", "updated_at", "url"]

    def get_url(self, schedule) -> str:
        return self.context["request"].build_absolute_uri(
            reverse("schedules:schedule-detail", kwargs={"schedule_id": schedule.id}))


class ScheduleDetailOutputSerializer(ScheduleOutputSerializer):
    next_fire_times = serializers.SerializerMethodField(
        help_text=f"the next {NEXT_FIRE_TIMES} fire times (UTC); none while paused")
    last_runs = serializers.SerializerMethodField(
        help_text=f"the last {LAST_RUNS} fire times and what each gave")

    class Meta(ScheduleOutputSerializer.Meta):
        fields = [*ScheduleOutputSerializer.Meta.fields, "next_fire_times", "last_runs"]

    def get_next_fire_times(self, schedule) -> list[str]:
        if schedule.paused or schedule.next_fire_at is None:
            return []
        first = schedule.next_fire_at
        rest = fire_times(schedule, after=first, count=NEXT_FIRE_TIMES - 1)
        return [t.isoformat() for t in [first, *rest]]

    def get_last_runs(self, schedule) -> list[dict]:
        return FireOutputSerializer(schedule_last_fires(schedule=schedule, count=LAST_RUNS),
                                    many=True).data


def _fields(request, data: dict) -> dict:
    """The validated body as the services take it (options parsed, task checked)."""
    values = dict(data)
    if "task" in values:
        values["task"] = known_task(values["task"]).name
    if "options" in values:
        values["options"] = parse_options(values["options"])
    return values


def _detail(request, schedule, status_code=status.HTTP_200_OK) -> Response:
    return Response(ScheduleDetailOutputSerializer(schedule, context={"request": request}).data,
                    status=status_code)


def _own(request, schedule_id) -> Schedule:
    return own_or_404(schedule_get(tenant=request.auth, schedule_id=schedule_id), "schedule",
                      schedule_id)


class ScheduleListCreateApi(APIView):
    """``POST /api/v1/schedules`` creates; ``GET /api/v1/schedules`` lists the caller's."""

    pagination_class = SchedulePagination

    @extend_schema(request=ScheduleInputSerializer,
                   responses={201: ScheduleDetailOutputSerializer},
                   examples=[OpenApiExample("daily at 02:30 in Berlin", request_only=True, value={
                       "task": "demo.quick_task", "params": {"x": 1}, "cron": "30 2 * * *",
                       "timezone": "Europe/Berlin", "overlap": "skip", "catch_up": "run_once"})])
    def post(self, request):
        body = ScheduleInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        values = _fields(request, body.validated_data)
        with refusals():
            schedule = schedule_create(tenant=request.auth, **values)
        response = _detail(request, schedule, status.HTTP_201_CREATED)
        response["Location"] = reverse("schedules:schedule-detail",
                                       kwargs={"schedule_id": schedule.id})
        return response

    @extend_schema(responses={200: ScheduleOutputSerializer(many=True)})
    def get(self, request):
        return paginated(self, request, schedule_list(tenant=request.auth),
                         ScheduleOutputSerializer)


class ScheduleDetailApi(APIView):
    """``GET``, ``PATCH``, ``DELETE /api/v1/schedules/{id}``."""

    @extend_schema(responses={200: ScheduleDetailOutputSerializer})
    def get(self, request, schedule_id):
        return _detail(request, _own(request, schedule_id))

    @extend_schema(request=ScheduleInputSerializer,
                   responses={200: ScheduleDetailOutputSerializer})
    def patch(self, request, schedule_id):
        schedule = _own(request, schedule_id)
        body = ScheduleInputSerializer(data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        values = _fields(request, body.validated_data)
        with refusals():
            schedule = schedule_update(schedule=schedule, **values)
        return _detail(request, schedule)

    @extend_schema(request=None, responses={204: None})
    def delete(self, request, schedule_id):
        schedule_delete(schedule=_own(request, schedule_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class SchedulePauseApi(APIView):
    """``POST /api/v1/schedules/{id}/pause``: no fire time is recorded until resumed."""

    @extend_schema(request=None, responses={200: ScheduleDetailOutputSerializer})
    def post(self, request, schedule_id):
        return _detail(request, schedule_pause(schedule=_own(request, schedule_id)))


class ScheduleResumeApi(APIView):
    """``POST /api/v1/schedules/{id}/resume``: fires again from the next fire time
    after now (the times passed while paused are not caught up)."""

    @extend_schema(request=None, responses={200: ScheduleDetailOutputSerializer})
    def post(self, request, schedule_id):
        return _detail(request, schedule_resume(schedule=_own(request, schedule_id)))


class ScheduleTriggerApi(APIView):
    """``POST /api/v1/schedules/{id}/trigger``: one run now, outside the rule; the
    next fire time stays. ``429`` if the tenant is over a quota."""

    @extend_schema(request=None, responses={
        202: FireOutputSerializer,
        # A bodiless POST is not given 429 by the schema's defaults; this one answers it.
        429: OpenApiResponse(ErrorSerializer, description=ERRORS["429"])})
    def post(self, request, schedule_id):
        schedule = _own(request, schedule_id)
        with refusals():
            fire = schedule_trigger(schedule=schedule, now=platform_now())
        response = Response(FireOutputSerializer(fire).data, status=status.HTTP_202_ACCEPTED)
        response["Location"] = reverse("jobs:job-detail", kwargs={"job_id": fire.job_id})
        return response

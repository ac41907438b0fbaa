"""The job API (v1): submit, read, list, cancel; the task catalogue.

Views stay thin: they parse and answer; services decide.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.urls import reverse
from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.bulk import BulkInterrupted, BulkJob, BulkOutcome, job_submit_bulk
from jobs.catalogue import (
    CatalogueTask,
    InvalidParams,
    catalogue,
    catalogue_task,
    validate_params,
)
from jobs.models import Job
from jobs.selectors import job_get, job_list
from jobs.services import (
    IdempotencyConflict,
    InvalidSubmission,
    Link,
    NotCancellable,
    QuotaExceeded,
    RetryPolicy,
    SubmitOptions,
    job_cancel,
    job_submit,
)
from routing import topology
from switchyard.pagination import CursorPagination

IDEMPOTENCY_HEADER = "Idempotency-Key"


class StrictSerializer(serializers.Serializer):
    """Refuses keys it does not know: an option silently ignored is a bug waiting."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise ValidationError({key: [f"unknown field; accepted: "
                                             f"{', '.join(self.fields)}"] for key in unknown})
        return super().to_internal_value(data)


class TaskNameField(serializers.CharField):
    """A task name; checked against the catalogue by the view (``known_task``), so the
    error names ``/api/v1/tasks``. The schema lists the names the catalogue has."""

    def __init__(self, *, batch_tasks_only: bool = False, **kwargs):
        self.batch_tasks_only = batch_tasks_only
        super().__init__(max_length=200, **kwargs)


class TaskNameFieldScheme(OpenApiSerializerFieldExtension):
    target_class = "jobs.api.TaskNameField"

    def map_serializer_field(self, auto_schema, direction):
        names = [task.name for task in catalogue()
                 if task.accepts_batches or not self.target.batch_tasks_only]
        return {"type": "string", "enum": names, "description": "a name from /api/v1/tasks"}


class ExpiresField(serializers.Field):
    """Seconds from now (a number) or an ISO 8601 time with a time zone."""

    def to_internal_value(self, data):
        if isinstance(data, bool):
            self.fail("invalid")
        if isinstance(data, (int, float)):
            return float(data)
        return serializers.DateTimeField().to_internal_value(data)

    def to_representation(self, value):
        return value

    default_error_messages = {"invalid": "must be seconds (a number) or an ISO 8601 time"}


class RetryPolicySerializer(StrictSerializer):
    """Exponential (``backoff``, ``backoff_max``) or, with Celery's names, linear
    (``interval_start``, ``interval_step``, ``interval_max``); not both."""

    max_retries = serializers.IntegerField(min_value=0, max_value=25)
    backoff = serializers.FloatField(min_value=0, max_value=3600, required=False,
                                     help_text="seconds before the first retry, doubled each time")
    backoff_max = serializers.FloatField(min_value=0, max_value=86400, required=False,
                                         help_text="longest wait between runs (seconds)")
    interval_start = serializers.FloatField(min_value=0, max_value=3600, required=False)
    interval_step = serializers.FloatField(min_value=0, max_value=3600, required=False)
    interval_max = serializers.FloatField(min_value=0, max_value=86400, required=False)
    jitter = serializers.BooleanField(required=False, help_text=(
        "wait a random 50-100% of the computed time; default true for backoff, false for "
        "intervals"))

    def to_internal_value(self, data):
        values = super().to_internal_value(data)
        linear = {"interval_start", "interval_step", "interval_max"} & set(values)
        exponential = {"backoff", "backoff_max"} & set(values)
        if linear and exponential:
            raise ValidationError({sorted(linear)[0]: [
                "give backoff/backoff_max or interval_start/interval_step/interval_max, "
                "not both"]})
        values.setdefault("jitter", not linear)
        return RetryPolicy(**values)


class LinkField(serializers.Field):
    """A registered task run for the same tenant: ``"task.name"`` or ``{"task", "params"}``."""

    default_error_messages = {"invalid": 'a task name, or {{"task": "...", "params": {{...}}}}'}

    def to_internal_value(self, data):
        if isinstance(data, str):
            data = {"task": data}
        if not isinstance(data, dict) or not isinstance(data.get("task"), str) or (
                set(data) - {"task", "params"}):
            self.fail("invalid")
        task = catalogue_task(data["task"])
        if task is None:
            raise ValidationError({"task": [f"unknown task {data['task']!r}; see /api/v1/tasks"]})
        params = data.get("params", {})
        try:
            validate_params(task, params)
        except InvalidParams as exc:
            raise ValidationError({exc.field: [exc.message]}) from exc
        return Link(task=task.name, params=params)

    def to_representation(self, value):
        return value


class OptionsSerializer(StrictSerializer):
    """Celery's calling options, as the API accepts them."""

    priority = serializers.IntegerField(min_value=0, max_value=9, required=False,
                                        help_text="relative 0..9 inside the tenant's band")
    countdown = serializers.FloatField(min_value=0, required=False, help_text="seconds")
    eta = serializers.DateTimeField(required=False)
    expires = ExpiresField(required=False)
    retry_policy = RetryPolicySerializer(required=False)
    link = LinkField(required=False, help_text="task run on success")
    link_error = LinkField(required=False, help_text="task run when the job fails for good")

    #: Celery options whose job Switchyard does itself, and why they are not taken.
    DERIVED = {
        "queue": "the queue is the task's lane (see /api/v1/tasks); it cannot be chosen",
        "routing_key": "the routing key is <lane>.<tier>.<task>, derived from the task and "
                       "your tenant's tier; it cannot be chosen",
        "exchange": "every job goes through the 'tasks' exchange",
    }

    def to_internal_value(self, data):
        if isinstance(data, dict):
            derived = {k: [why] for k, why in self.DERIVED.items() if k in data}
            if data.get("retry") is False:
                derived["retry"] = ["an accepted job is always published until the broker "
                                    "takes it; retry cannot be false"]
            if derived:
                raise ValidationError(derived)
            if data.get("retry") is True:  # Celery's publish retry: always on here
                data = {k: v for k, v in data.items() if k != "retry"}
        return super().to_internal_value(data)

    def to_submit_options(self) -> SubmitOptions:
        return SubmitOptions(**self.validated_data)


def parse_options(data, serializer_class=OptionsSerializer) -> SubmitOptions:
    opts = serializer_class(data=data)
    if not opts.is_valid():
        raise ValidationError({"options": opts.errors})
    return opts.to_submit_options()


def idempotency_key(request) -> str:
    key = request.headers.get(IDEMPOTENCY_HEADER, "")
    if len(key) > 255:
        raise ValidationError({IDEMPOTENCY_HEADER: ["at most 255 characters"]})
    return key


def known_task(name: str) -> CatalogueTask:
    task = catalogue_task(name)
    if task is None:
        raise ValidationError({"task": [f"unknown task {name!r}; see /api/v1/tasks"]})
    return task


def quota_exceeded(exc: QuotaExceeded) -> Response:
    """``429`` with ``Retry-After``, saying which quota."""
    return Response({"detail": f"quota exceeded: {exc}"},
                    status=status.HTTP_429_TOO_MANY_REQUESTS,
                    headers={"Retry-After": str(exc.retry_after)})


def accepted(submit: Callable[[], tuple[Any, bool]], *, location: Callable[[Any], str],
             render: Callable[[Any], dict]) -> Response:
    """Run a submission service and answer as the API promises: 202 with
    ``Location`` (and ``Idempotent-Replayed`` for a replay), or 400/409/429."""
    try:
        record, created = submit()
    except InvalidSubmission as exc:
        raise ValidationError({exc.field: [exc.message]}) from exc
    except QuotaExceeded as exc:
        return quota_exceeded(exc)
    except IdempotencyConflict as exc:
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    headers = {"Location": location(record)}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return Response(render(record), status=status.HTTP_202_ACCEPTED, headers=headers)


def job_url(request, job_id) -> str:
    return request.build_absolute_uri(reverse("jobs:job-detail", kwargs={"job_id": job_id}))


class JobOutputSerializer(serializers.ModelSerializer):
    status_url = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = ["id", "task", "status", "lane", "tier", "priority", "routing_key", "params",
                  "attempts", "max_attempts", "result", "error", "submitted_at", "run_at",
                  "expires_at", "started_at", "finished_at", "retry_policy", "link",
                  "link_error", "parent", "batch", "chunk_index", "status_url"]

    def get_status_url(self, job: Job) -> str:
        return job_url(self.context["request"], job.id)


class JobPagination(CursorPagination):
    ordering = "-submitted_at"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


class JobListSubmitApi(APIView):
    """``POST /api/v1/jobs`` submits; ``GET /api/v1/jobs`` lists the caller's jobs."""

    pagination_class = JobPagination  # documents the list's pages in the schema

    class InputSerializer(StrictSerializer):
        task = TaskNameField()
        params = serializers.DictField(required=False, default=dict)
        options = serializers.DictField(required=False, default=dict)

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=Job.Status.choices, required=False)
        task = serializers.CharField(required=False)
        lane = serializers.ChoiceField(choices=list(topology.LANES_BY_NAME), required=False)
        batch = serializers.UUIDField(required=False, help_text="only this batch's chunks")

    @extend_schema(request=InputSerializer, responses={202: JobOutputSerializer},
                   parameters=[OpenApiParameter(IDEMPOTENCY_HEADER, str, OpenApiParameter.HEADER,
                                                required=False)],
                   examples=[OpenApiExample("a quick job", request_only=True, value={
                       "task": "demo.quick_task", "params": {"x": 1},
                       "options": {"priority": 7, "expires": 600}})])
    def post(self, request):
        body = self.InputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        task = known_task(data["task"])
        try:
            validate_params(task, data["params"], tenant=request.auth)
        except InvalidParams as exc:
            raise ValidationError({exc.field: [exc.message]}) from exc
        options = parse_options(data["options"])
        key = idempotency_key(request)
        return accepted(
            lambda: job_submit(tenant=request.auth, task=task.name, params=data["params"],
                               options=options, idempotency_key=key),
            location=lambda job: reverse("jobs:job-detail", kwargs={"job_id": job.id}),
            render=lambda job: JobOutputSerializer(job, context={"request": request}).data)

    @extend_schema(parameters=[FilterSerializer], responses={200: JobOutputSerializer(many=True)})
    def get(self, request):
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        jobs = job_list(tenant=request.auth, **filters.validated_data)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(jobs, request, view=self)
        return paginator.get_paginated_response(
            JobOutputSerializer(page, many=True, context={"request": request}).data)


class JobBulkSubmitApi(APIView):
    """``POST /api/v1/jobs/bulk``: many jobs in one request, each with its own
    task, params and options; published with pipelined publisher confirms."""

    ITEM_FIELDS = ("task", "params", "options")

    class InputSerializer(serializers.Serializer):
        jobs = serializers.ListField(child=serializers.DictField(), help_text=(
            "each {task, params?, options?} as for POST /api/v1/jobs"))

    class OutputSerializer(serializers.Serializer):
        accepted = serializers.IntegerField(help_text="jobs recorded")
        published = serializers.IntegerField(help_text="jobs the broker confirmed")
        scheduled = serializers.IntegerField(help_text="jobs waiting for countdown/eta")
        held = serializers.IntegerField(
            help_text="jobs past the tenant's fair-share window; the dispatcher publishes them "
                      "as the window frees")
        deferred = serializers.IntegerField(
            help_text="jobs the broker did not confirm in time; the dispatcher publishes them")
        dead = serializers.IntegerField(help_text="jobs no queue would take (unroutable)")
        jobs = serializers.ListField(child=serializers.UUIDField(),
                                     help_text="job ids, in the order submitted")

    @extend_schema(request=InputSerializer, responses={202: OutputSerializer},
                   examples=[OpenApiExample("two jobs", request_only=True, value={"jobs": [
                       {"task": "demo.quick_task", "params": {"x": 1}},
                       {"task": "demo.slow_task", "params": {"seconds": 2},
                        "options": {"priority": 9}}]})])
    def post(self, request):
        items = request.data.get("jobs") if isinstance(request.data, dict) else None
        unknown = sorted(set(request.data) - {"jobs"}) if isinstance(request.data, dict) else []
        if unknown:
            raise ValidationError({key: ["unknown field; accepted: jobs"] for key in unknown})
        limit = settings.SWITCHYARD_MAX_BULK_JOBS
        if not isinstance(items, list) or not items:
            raise ValidationError({"jobs": ["a non-empty list of {task, params, options}"]})
        if len(items) > limit:
            raise ValidationError({"jobs": [f"{len(items)} jobs; at most {limit} in one request "
                                            "(send several requests, or a batch)"]})
        jobs = [self._parse(index, item) for index, item in enumerate(items)]
        try:
            outcome = job_submit_bulk(tenant=request.auth, jobs=jobs)
        except InvalidSubmission as exc:
            raise ValidationError({exc.field: [exc.message]}) from exc
        except QuotaExceeded as exc:
            return quota_exceeded(exc)
        except BulkInterrupted as exc:  # some accepted: say which, ask for the rest again
            body = self._render(exc.outcome)
            body["detail"] = (f"the database failed after {exc.outcome.accepted} of "
                              f"{len(jobs)} jobs were accepted; submit the rest again")
            return Response(body, status=status.HTTP_503_SERVICE_UNAVAILABLE,
                            headers={"Retry-After": "5"})
        return Response(self._render(outcome), status=status.HTTP_202_ACCEPTED)

    def _parse(self, index: int, item) -> BulkJob:
        where = f"jobs.{index}"
        if not isinstance(item, dict):
            raise ValidationError({where: ["must be an object {task, params, options}"]})
        unknown = sorted(set(item) - set(self.ITEM_FIELDS))
        if unknown:
            raise ValidationError({f"{where}.{unknown[0]}": [
                f"unknown field; accepted: {', '.join(self.ITEM_FIELDS)}"]})
        name, params = item.get("task"), item.get("params", {})
        if not isinstance(name, str):
            raise ValidationError({f"{where}.task": ["a task name is required"]})
        task = catalogue_task(name)
        if task is None:
            raise ValidationError({f"{where}.task": [f"unknown task {name!r}; see /api/v1/tasks"]})
        if not isinstance(params, dict):
            raise ValidationError({f"{where}.params": ["must be an object"]})
        try:
            validate_params(task, params, field=f"{where}.params")
        except InvalidParams as exc:
            raise ValidationError({exc.field: [exc.message]}) from exc
        raw_options = item.get("options") or {}
        if not raw_options:
            return BulkJob(task=task.name, params=params)
        try:
            options = parse_options(raw_options)
        except ValidationError as exc:
            raise ValidationError({where: exc.detail}) from exc
        return BulkJob(task=task.name, params=params, options=options)

    @staticmethod
    def _render(outcome: BulkOutcome) -> dict:
        return {"accepted": outcome.accepted, "published": outcome.published,
                "scheduled": outcome.scheduled, "held": outcome.held,
                "deferred": outcome.deferred, "dead": outcome.dead,
                "jobs": [str(job_id) for job_id in outcome.job_ids]}


def _own_job(request, job_id) -> Job:
    job = job_get(tenant=request.auth, job_id=job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


class JobDetailApi(APIView):
    """``GET /api/v1/jobs/{id}``: one of the caller's jobs."""

    @extend_schema(responses={200: JobOutputSerializer})
    def get(self, request, job_id):
        return Response(JobOutputSerializer(_own_job(request, job_id),
                                            context={"request": request}).data)


class JobCancelApi(APIView):
    """``POST /api/v1/jobs/{id}/cancel``: a job that has not started never runs."""

    @extend_schema(request=None, responses={200: JobOutputSerializer})
    def post(self, request, job_id):
        try:
            job = job_cancel(job=_own_job(request, job_id))
        except NotCancellable as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(JobOutputSerializer(job, context={"request": request}).data)


class TaskCatalogueApi(APIView):
    """``GET /api/v1/tasks``: the tasks the API accepts, their lane and parameter schema."""

    class OutputSerializer(serializers.Serializer):
        name = serializers.CharField()
        lane = serializers.CharField()
        description = serializers.CharField()
        params_schema = serializers.DictField()
        accepts_batches = serializers.BooleanField()
        item_schema = serializers.DictField(allow_null=True)

    @extend_schema(responses={200: OutputSerializer(many=True)})
    def get(self, request):
        return Response(self.OutputSerializer(catalogue(), many=True).data)


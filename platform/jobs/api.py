"""The job API (v1): submit, submit in bulk, read, list, cancel; the task catalogue.

Run by the web. Views stay thin: they parse (``jobs.serializers``), call a
service or a selector, and answer (``jobs.api_support``).
"""
from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.api_support import (
    IDEMPOTENCY_HEADER,
    JobPagination,
    StrictSerializer,
    accepted,
    idempotency_key,
    own_or_404,
    paginated,
    refusals,
    refuse_unknown_fields,
)
from jobs.bulk import BulkInterrupted, job_submit_bulk
from jobs.catalogue import catalogue, validate_params
from jobs.models import Job
from jobs.selectors import job_get, job_list
from jobs.serializers import (
    JobOutputSerializer,
    TaskNameField,
    bulk_jobs,
    known_task,
    parse_options,
)
from jobs.submission import job_cancel, job_submit
from jobs.workflows import step_cancel
from routing import priorities, topology


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
        with refusals():
            validate_params(task, data["params"], tenant=request.auth)
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
        return paginated(self, request, job_list(tenant=request.auth, **filters.validated_data),
                         JobOutputSerializer)


class JobBulkSubmitApi(APIView):
    """``POST /api/v1/jobs/bulk``: many jobs in one request, each with its own
    task, params and options; published with pipelined publisher confirms."""

    class InputSerializer(serializers.Serializer):
        jobs = serializers.ListField(child=serializers.DictField(), help_text=(
            "each {task, params?, options?} as for POST /api/v1/jobs"))

    class OutputSerializer(serializers.Serializer):
        """Renders a ``jobs.bulk.BulkOutcome``."""

        accepted = serializers.IntegerField(help_text="jobs recorded")
        published = serializers.IntegerField(help_text="jobs the broker confirmed")
        scheduled = serializers.IntegerField(help_text="jobs waiting for countdown/eta")
        held = serializers.IntegerField(
            help_text="jobs past the tenant's fair-share window; the dispatcher publishes them "
                      "as the window frees")
        deferred = serializers.IntegerField(
            help_text="jobs the broker did not confirm in time or returned unrouted; the "
                      "dispatcher publishes them")
        returned = serializers.IntegerField(
            help_text="of the deferred jobs, those the broker returned because no queue was "
                      "bound for their routing key (a lane queue missing: see "
                      "switchyard_publications_returned_total)")
        jobs = serializers.ListField(child=serializers.UUIDField(), source="job_ids",
                                     help_text="job ids, in the order submitted")

    @extend_schema(request=InputSerializer, responses={202: OutputSerializer},
                   examples=[OpenApiExample("two jobs", request_only=True, value={"jobs": [
                       {"task": "demo.quick_task", "params": {"x": 1}},
                       {"task": "demo.slow_task", "params": {"seconds": 2},
                        "options": {"priority": 9}}]})])
    def post(self, request):
        refuse_unknown_fields(request.data, ["jobs"])
        items = request.data.get("jobs") if isinstance(request.data, dict) else None
        jobs = bulk_jobs(items)
        try:
            with refusals():
                outcome = job_submit_bulk(tenant=request.auth, jobs=jobs)
        except BulkInterrupted as exc:  # some accepted: say which, ask for the rest again
            body = self.OutputSerializer(exc.outcome).data
            body["detail"] = (f"the database failed after {exc.outcome.accepted} of "
                              f"{len(jobs)} jobs were accepted; submit the rest again")
            return Response(body, status=status.HTTP_503_SERVICE_UNAVAILABLE,
                            headers={"Retry-After": "5"})
        return Response(self.OutputSerializer(outcome).data, status=status.HTTP_202_ACCEPTED)


def _own_job(request, job_id) -> Job:
    return own_or_404(job_get(tenant=request.auth, job_id=job_id), "job", job_id)


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
        with refusals():
            job = _own_job(request, job_id)
            # A workflow's step is cancelled under its workflow's lock, and its end counted.
            job = step_cancel(job=job) if job.workflow_id else job_cancel(job=job)
        return Response(JobOutputSerializer(job, context={"request": request}).data)


class TaskCatalogueApi(APIView):
    """``GET /api/v1/tasks``: the tasks the API accepts, their lane and parameter schema,
    and for the caller where a Celery-native message of each goes (``switchyard_client``
    routes by it)."""

    class OutputSerializer(serializers.Serializer):
        name = serializers.CharField()
        lane = serializers.CharField()
        description = serializers.CharField()
        params_schema = serializers.DictField()
        accepts_batches = serializers.BooleanField()
        item_schema = serializers.DictField(allow_null=True)
        positional = serializers.ListField(
            child=serializers.CharField(),
            help_text="the parameter names positional arguments fill, in order")
        exchange = serializers.SerializerMethodField()
        routing_key = serializers.SerializerMethodField(
            help_text="where a native message of this task goes for the caller's tier")
        priority_band = serializers.SerializerMethodField(
            help_text="[low, high]: the caller's absolute AMQP priorities (higher first)")

        def get_exchange(self, task) -> str:
            return topology.EXCHANGE_NAME

        def get_routing_key(self, task) -> str:
            return topology.routing_key(task.lane, self.context["tier"].name, task.name)

        def get_priority_band(self, task) -> list[int]:
            tier = self.context["tier"]
            return [tier.low, tier.high]

    @extend_schema(responses={200: OutputSerializer(many=True)})
    def get(self, request):
        tier = priorities.tier(request.auth.tier)
        return Response(self.OutputSerializer(catalogue(), many=True,
                                              context={"tier": tier}).data)

"""The batch API (v1): submit up to 100,000 items, follow them, cancel the rest.

Run by the web. Items are checked with the task's compiled item schema, never
item by item through DRF fields: a 100,000-item body is parsed, validated and
recorded in well under the 3 s the API promises (see ``make bench``).
"""
from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.api_support import (
    IDEMPOTENCY_HEADER,
    CursorPagination,
    JobPagination,
    StrictSerializer,
    accepted,
    idempotency_key,
    own_or_404,
    paginated,
    refusals,
)
from jobs.batches import MAX_CHUNK_SIZE, batch_cancel, batch_submit
from jobs.catalogue import validate_items
from jobs.models import Batch, Job
from jobs.selectors import batch_chunks, batch_failures, batch_get, batch_list
from jobs.serializers import (
    BatchFailurePageSerializer,
    BatchOptionsSerializer,
    BatchOutputSerializer,
    BatchSummarySerializer,
    ChunkSerializer,
    ItemsField,
    TaskNameField,
    batch_representation,
    known_task,
    parse_options,
)
from jobs.workflow_api import parse_step
from jobs.workflow_submission import check_step_params


class BatchListSubmitApi(APIView):
    """``POST /api/v1/batches`` submits; ``GET /api/v1/batches`` lists the caller's batches."""

    pagination_class = CursorPagination  # documents the list's pages in the schema

    class InputSerializer(StrictSerializer):
        task = TaskNameField(batch_tasks_only=True)
        items = ItemsField()
        chunk_size = serializers.IntegerField(min_value=1, max_value=MAX_CHUNK_SIZE,
                                              required=False)
        options = serializers.DictField(required=False, default=dict)
        on_complete = serializers.DictField(required=False, help_text=(
            "{task, params, summary}: runs once every chunk has ended, whatever their "
            "outcome; the parameter named by summary receives the batch's counts"))

    @extend_schema(request=InputSerializer, responses={202: BatchOutputSerializer},
                   parameters=[OpenApiParameter(IDEMPOTENCY_HEADER, str, OpenApiParameter.HEADER,
                                                required=False)],
                   examples=[OpenApiExample("checksums in chunks", request_only=True, value={
                       "task": "demo.checksum", "items": [{"data": "a.jpg"}, {"data": "b.jpg"}],
                       "chunk_size": 1, "options": {"priority": 3}})])
    def post(self, request):
        body = self.InputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        task = known_task(data["task"])
        if not task.accepts_batches:
            raise ValidationError({"task": [f"{task.name} is not a batch task; batch tasks "
                                            "have an item_schema in /api/v1/tasks"]})
        with refusals():
            validate_items(task, data["items"], tenant=request.auth)
        options = parse_options(data["options"], BatchOptionsSerializer)
        on_complete = None
        if data.get("on_complete") is not None:
            on_complete = parse_step("on_complete", data["on_complete"], on_complete=True)
            with refusals():
                check_step_params(on_complete, tenant=request.auth)
        key = idempotency_key(request)
        return accepted(
            lambda: batch_submit(tenant=request.auth, task=task.name, items=data["items"],
                                 chunk_size=data.get("chunk_size"), options=options,
                                 idempotency_key=key, on_complete=on_complete),
            location=lambda batch: reverse("jobs:batch-detail", kwargs={"batch_id": batch.id}),
            render=lambda batch: batch_representation(request, batch))

    @extend_schema(responses={200: BatchSummarySerializer(many=True)})
    def get(self, request):
        return paginated(self, request, batch_list(tenant=request.auth), BatchSummarySerializer)


def _own_batch(request, batch_id) -> Batch:
    return own_or_404(batch_get(tenant=request.auth, batch_id=batch_id), "batch", batch_id)


class BatchDetailApi(APIView):
    """``GET /api/v1/batches/{id}``: progress, failed items, estimated completion."""

    @extend_schema(responses={200: BatchOutputSerializer})
    def get(self, request, batch_id):
        return Response(batch_representation(request, _own_batch(request, batch_id)))


class BatchCancelApi(APIView):
    """``POST /api/v1/batches/{id}/cancel``: chunks not started never run."""

    @extend_schema(request=None, responses={200: BatchOutputSerializer})
    def post(self, request, batch_id):
        batch = _own_batch(request, batch_id)
        with refusals():
            batch_cancel(batch=batch)
        return Response(batch_representation(request, batch))


class BatchFailuresApi(APIView):
    """``GET /api/v1/batches/{id}/failures?after=N``: failed items in index order."""

    class QuerySerializer(serializers.Serializer):
        after = serializers.IntegerField(min_value=-1, default=-1,
                                         help_text="last index of the previous page")
        limit = serializers.IntegerField(min_value=1, max_value=1000, default=100)

    @extend_schema(parameters=[QuerySerializer], responses={200: BatchFailurePageSerializer})
    def get(self, request, batch_id):
        batch = _own_batch(request, batch_id)
        query = self.QuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        found, next_after = batch_failures(batch, **query.validated_data)
        next_url = None
        if next_after is not None:
            next_url = request.build_absolute_uri(
                f"{request.path}?after={next_after}&limit={query.validated_data['limit']}")
        return Response({"results": found, "next": next_url})


class ChunkPagination(JobPagination):
    ordering = "chunk_index"
    page_size = 500
    max_page_size = 10_000


class BatchChunksApi(APIView):
    """``GET /api/v1/batches/{id}/chunks?status=``: each chunk's job, in order."""

    pagination_class = ChunkPagination  # documents the list's pages in the schema

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=Job.Status.choices, required=False)

    @extend_schema(parameters=[FilterSerializer], responses={200: ChunkSerializer(many=True)})
    def get(self, request, batch_id):
        batch = _own_batch(request, batch_id)
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        return paginated(self, request,
                         batch_chunks(batch=batch, status=filters.validated_data.get("status")),
                         ChunkSerializer)

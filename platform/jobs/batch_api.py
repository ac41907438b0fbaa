"""The batch API (v1): submit up to 100,000 items, follow them, cancel the rest.

Items are checked with the task's compiled item schema, never item by item
through DRF fields: a 100,000-item body is parsed, validated and recorded in
well under the 3 s the API promises (see ``make bench``).
"""
from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
)
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.api import (
    IDEMPOTENCY_HEADER,
    OptionsSerializer,
    StrictSerializer,
    TaskNameField,
    accepted,
    idempotency_key,
    job_url,
    known_task,
    parse_options,
)
from jobs.batches import (
    MAX_CHUNK_SIZE,
    batch_cancel,
    batch_failures,
    batch_progress,
    batch_submit,
    max_items,
)
from jobs.catalogue import InvalidParams, validate_items
from jobs.models import Batch, Job
from jobs.services import NotCancellable
from switchyard.pagination import CursorPagination

#: Failed items shown inline in a batch; the rest are paged at ``failures_url``.
INLINE_FAILURES = 100
BATCH_STATUSES = ["queued", "running", "succeeded", "failed", "completed_with_failures",
                  "cancelled"]


class BatchOptionsSerializer(OptionsSerializer):
    """The job options that make sense for every chunk (no link/link_error)."""

    class Meta:
        exclude_fields = ("link", "link_error")

    def get_fields(self):
        fields = super().get_fields()
        for name in self.Meta.exclude_fields:
            fields.pop(name)
        return fields


@extend_schema_field({"type": "array", "items": {}, "minItems": 1})
class ItemsField(serializers.Field):
    """A JSON array, checked for length only: items are validated by the task's schema."""

    default_error_messages = {"invalid": "must be a JSON array of items"}

    def to_internal_value(self, data):
        if not isinstance(data, list):
            self.fail("invalid")
        if not 1 <= len(data) <= max_items():
            raise ValidationError(f"give between 1 and {max_items()} items, got {len(data)}")
        return data

    def to_representation(self, value):
        return value


def _batch_url(request, name: str, batch: Batch) -> str:
    return request.build_absolute_uri(reverse(f"jobs:{name}", kwargs={"batch_id": batch.id}))


def batch_representation(request, batch: Batch) -> dict:
    progress = batch_progress(batch)
    failures, more = batch_failures(batch, limit=INLINE_FAILURES) if progress.failed else ([],
                                                                                           None)
    return {
        "id": str(batch.id),
        "task": batch.task,
        "status": progress.status,
        "lane": batch.lane,
        "tier": batch.tier,
        "priority": batch.priority,
        "total": progress.total,
        "done": progress.done,
        "failed": progress.failed,
        "cancelled": progress.cancelled,
        "pending": progress.pending,
        "percent": progress.percent,
        "chunk_size": batch.chunk_size,
        "chunk_count": batch.chunk_count,
        "chunks": progress.chunks,
        "options": batch.options,
        "submitted_at": batch.submitted_at,
        "started_at": progress.started_at,
        "finished_at": progress.finished_at,
        "estimated_completion_at": progress.estimated_completion_at,
        "cancelled_at": batch.cancelled_at,
        "failures": failures,
        "failures_truncated": more is not None,
        "status_url": _batch_url(request, "batch-detail", batch),
        "failures_url": _batch_url(request, "batch-failures", batch),
        "chunks_url": _batch_url(request, "batch-chunks", batch),
    }


class BatchFailureSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="the item's index in the batch")
    item = serializers.JSONField()
    error = serializers.CharField()


class BatchFailurePageSerializer(serializers.Serializer):
    results = BatchFailureSerializer(many=True)
    next = serializers.URLField(allow_null=True, help_text="the next page, if any")


class BatchOutputSerializer(serializers.Serializer):
    """Documents the batch representation (built by ``batch_representation``)."""

    id = serializers.UUIDField()
    task = serializers.CharField()
    status = serializers.ChoiceField(choices=BATCH_STATUSES)
    lane = serializers.CharField()
    tier = serializers.CharField()
    priority = serializers.IntegerField()
    total = serializers.IntegerField()
    done = serializers.IntegerField(help_text="items that succeeded")
    failed = serializers.IntegerField(help_text="items that failed (see failures)")
    cancelled = serializers.IntegerField()
    pending = serializers.IntegerField()
    percent = serializers.FloatField(help_text="items finished, in percent of total")
    chunk_size = serializers.IntegerField()
    chunk_count = serializers.IntegerField()
    chunks = serializers.DictField(child=serializers.IntegerField(),
                                   help_text="chunks per job status")
    options = serializers.DictField()
    submitted_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    estimated_completion_at = serializers.DateTimeField(allow_null=True)
    cancelled_at = serializers.DateTimeField(allow_null=True)
    failures = BatchFailureSerializer(many=True,
                                      help_text=f"the first {INLINE_FAILURES} failed items")
    failures_truncated = serializers.BooleanField()
    status_url = serializers.URLField()
    failures_url = serializers.URLField()
    chunks_url = serializers.URLField()


class BatchSummarySerializer(serializers.ModelSerializer):
    status_url = serializers.SerializerMethodField()

    class Meta:
        model = Batch
        fields = ["id", "task", "lane", "tier", "priority", "total_items", "chunk_size",
                  "chunk_count", "submitted_at", "cancelled_at", "status_url"]

    def get_status_url(self, batch: Batch) -> str:
        return _batch_url(self.context["request"], "batch-detail", batch)


class BatchPagination(CursorPagination):
    ordering = "-submitted_at"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


class BatchListSubmitApi(APIView):
    """``POST /api/v1/batches`` submits; ``GET /api/v1/batches`` lists the caller's batches."""

    pagination_class = BatchPagination  # documents the list's pages in the schema

    class InputSerializer(StrictSerializer):
        task = TaskNameField(batch_tasks_only=True)
        items = ItemsField()
        chunk_size = serializers.IntegerField(min_value=1, max_value=MAX_CHUNK_SIZE,
                                              required=False)
        options = serializers.DictField(required=False, default=dict)

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
        try:
            validate_items(task, data["items"], tenant=request.auth)
        except InvalidParams as exc:
            raise ValidationError({exc.field: [exc.message]}) from exc
        options = parse_options(data["options"], BatchOptionsSerializer)
        key = idempotency_key(request)
        return accepted(
            lambda: batch_submit(tenant=request.auth, task=task.name, items=data["items"],
                                 chunk_size=data.get("chunk_size"), options=options,
                                 idempotency_key=key),
            location=lambda batch: reverse("jobs:batch-detail", kwargs={"batch_id": batch.id}),
            render=lambda batch: batch_representation(request, batch))

    @extend_schema(responses={200: BatchSummarySerializer(many=True)})
    def get(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(Batch.objects.filter(tenant=request.auth), request,
                                           view=self)
        return paginator.get_paginated_response(
            BatchSummarySerializer(page, many=True, context={"request": request}).data)


def _own_batch(request, batch_id) -> Batch:
    batch = Batch.objects.filter(tenant=request.auth, id=batch_id).first()
    if batch is None:
        raise NotFound(f"no batch {batch_id}")
    return batch


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
        try:
            batch_cancel(batch=batch)
        except NotCancellable as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
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


class ChunkSerializer(serializers.ModelSerializer):
    job_id = serializers.UUIDField(source="id")
    index = serializers.IntegerField(source="chunk_index")
    status_url = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = ["index", "job_id", "status", "item_offset", "item_count", "failed_items",
                  "attempts", "error", "started_at", "finished_at", "status_url"]

    def get_status_url(self, job: Job) -> str:
        return job_url(self.context["request"], job.id)


class ChunkPagination(CursorPagination):
    ordering = "chunk_index"
    page_size = 500
    page_size_query_param = "page_size"
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
        chunks = Job.objects.filter(batch=batch).defer("params", "result")
        if filters.validated_data.get("status"):
            chunks = chunks.filter(status=filters.validated_data["status"])
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(chunks, request, view=self)
        return paginator.get_paginated_response(
            ChunkSerializer(page, many=True, context={"request": request}).data)

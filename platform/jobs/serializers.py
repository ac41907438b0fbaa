"""The API's serializers and input parsers for jobs and batches (``jobs.api``,
``jobs.batch_api``); ``media.api`` takes the options and batch answers from here too.

Run by the web. Input is parsed here into the services' own types
(``SubmitOptions``, ``RetryPolicy``, ``Link``, ``BulkJob``); items of a batch
are checked by the task's compiled item schema (``jobs.catalogue``), never
item by item through DRF fields.
"""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.urls import reverse
from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.exceptions import ValidationError

from jobs.api_support import StrictSerializer, refusals, refuse_unknown_fields
from jobs.batches import max_items
from jobs.bulk import BulkJob
from jobs.catalogue import (
    CatalogueTask,
    catalogue,
    catalogue_task,
    unknown_task_message,
    validate_params,
)
from jobs.models import Batch, Job, Workflow
from jobs.options import Link, RetryPolicy, SubmitOptions
from jobs.selectors import batch_failures, batch_progress

#: The fields of one job of a bulk submission.
BULK_JOB_FIELDS = ("task", "params", "options")


class TaskNameField(serializers.CharField):
    """A task name; checked against the catalogue by ``known_task``, so the error
    names ``/api/v1/tasks``. The schema lists the names the catalogue has."""

    def __init__(self, *, batch_tasks_only: bool = False, **kwargs):
        self.batch_tasks_only = batch_tasks_only
        super().__init__(max_length=200, **kwargs)


class TaskNameFieldScheme(OpenApiSerializerFieldExtension):
    target_class = "jobs.serializers.TaskNameField"

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
        task = known_task(data["task"])
        params = data.get("params", {})
        with refusals():
            validate_params(task, params)
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


def parse_options(data, serializer_class=OptionsSerializer, *,
                  field: str = "options") -> SubmitOptions:
    """``data`` as ``SubmitOptions``; ``400`` naming ``<field>.<option>`` otherwise."""
    opts = serializer_class(data=data)
    if not opts.is_valid():
        raise ValidationError({field: opts.errors})
    return opts.to_submit_options()


def known_task(name: Any, *, field: str = "task") -> CatalogueTask:
    """The catalogue's task ``name``; ``400`` naming ``field`` if the API does not take it."""
    task = catalogue_task(name) if isinstance(name, str) else None
    if task is None:
        raise ValidationError({field: [unknown_task_message(name)]})
    return task


def bulk_jobs(items: Any) -> list[BulkJob]:
    """The jobs of a ``POST /api/v1/jobs/bulk`` body, each checked as ``POST
    /api/v1/jobs`` checks one; ``400`` naming ``jobs.<i>.<field>`` for the first bad one."""
    limit = settings.SWITCHYARD_MAX_BULK_JOBS
    if not isinstance(items, list) or not items:
        raise ValidationError({"jobs": ["a non-empty list of {task, params, options}"]})
    if len(items) > limit:
        raise ValidationError({"jobs": [f"{len(items)} jobs; at most {limit} in one request "
                                        "(send several requests, or a batch)"]})
    return [_bulk_job(index, item) for index, item in enumerate(items)]


def _bulk_job(index: int, item: Any) -> BulkJob:
    where = f"jobs.{index}"
    if not isinstance(item, dict):
        raise ValidationError({where: ["must be an object {task, params, options}"]})
    refuse_unknown_fields(item, BULK_JOB_FIELDS, prefix=f"{where}.")
    name, params = item.get("task"), item.get("params", {})
    if not isinstance(name, str):
        raise ValidationError({f"{where}.task": ["a task name is required"]})
    task = known_task(name, field=f"{where}.task")
    if not isinstance(params, dict):
        raise ValidationError({f"{where}.params": ["must be an object"]})
    with refusals():
        validate_params(task, params, field=f"{where}.params")
    raw_options = item.get("options") or {}
    if not raw_options:
        return BulkJob(task=task.name, params=params)
    return BulkJob(task=task.name, params=params,
                   options=parse_options(raw_options, field=f"{where}.options"))


def job_url(request, job_id) -> str:
    """The absolute URL of a job's record."""
    return request.build_absolute_uri(reverse("jobs:job-detail", kwargs={"job_id": job_id}))


class JobOutputSerializer(serializers.ModelSerializer):
    status_url = serializers.SerializerMethodField()
    paused = serializers.SerializerMethodField(
        help_text="True while the job waits and its tenant's work is paused by an operator: "
                  "it is kept, and runs once the work is resumed.")

    class Meta:
        model = Job
        fields = ["id", "task", "status", "lane", "tier", "priority", "routing_key", "params",
                  "attempts", "max_attempts", "result", "error", "submitted_at", "run_at",
                  "expires_at", "started_at", "finished_at", "retry_policy", "link",
                  "link_error", "parent", "batch", "chunk_index", "paused", "status_url"]

    def get_status_url(self, job: Job) -> str:
        return job_url(self.context["request"], job.id)

    def get_paused(self, job: Job) -> bool:
        # The caller's own tenant, read for this request: no query per job of a page.
        tenant = getattr(self.context["request"], "auth", None)
        return bool(job.status in Job.NOT_STARTED and getattr(tenant, "paused_at", None))


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


def _on_complete(batch: Batch) -> str | None:
    """The id of the job the batch's ``on_complete`` runs as, if it has one."""
    if batch.workflow_id is None:
        return None
    return str(Workflow.objects.filter(id=batch.workflow_id)
               .values_list("on_complete_id", flat=True).first() or "") or None


def batch_representation(request, batch: Batch) -> dict:
    """A batch as the API shows it (``BatchOutputSerializer`` documents it): its
    record, its progress read from the chunks, and its first failed items."""
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
        "workflow": str(batch.workflow_id) if batch.workflow_id else None,
        "on_complete": _on_complete(batch),
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
    workflow = serializers.UUIDField(allow_null=True,
                                     help_text="the workflow running its on_complete")
    on_complete = serializers.UUIDField(allow_null=True,
                                        help_text="the job its on_complete runs as")
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

from __future__ import annotations

from django.contrib import admin, messages
from django.utils.html import format_html, format_html_join

from jobs.errors import NotCancellable
from jobs.models import Batch, Job, Workflow
from jobs.workflows import workflow_cancel


class ReadOnlyAdmin(admin.ModelAdmin):
    """Jobs and batches are read-only here: they change only through services and workers."""

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = ("id", "task", "tenant_name", "lane", "tier", "priority", "routing_key",
                    "status", "attempts", "submitted_at", "finished_at")
    list_filter = ("status", "lane", "tier", "task")
    search_fields = ("id", "task", "tenant_name", "batch__id", "workflow__id")


@admin.register(Batch)
class BatchAdmin(ReadOnlyAdmin):
    list_display = ("id", "task", "tenant_name", "lane", "tier", "priority", "total_items",
                    "chunk_count", "submitted_at", "cancelled_at")
    list_filter = ("lane", "tier", "task")
    search_fields = ("id", "task", "tenant_name")


@admin.register(Workflow)
class WorkflowAdmin(ReadOnlyAdmin):
    """Workflows: running ones oldest first; a stuck one is running with nothing waiting
    or running (``manage.py workflows list --stuck``, docs/runbooks/workflow-stuck.md)."""

    list_display = ("id", "kind", "tenant_name", "status", "step_count", "open_steps",
                    "submitted_at", "finished_at")
    list_filter = ("status", "kind")
    search_fields = ("id", "tenant_name")
    ordering = ("status", "submitted_at")
    actions = ["cancel_workflows"]
    #: Steps shown on a workflow's page (one may have 10,000; the API lists them all).
    SHOWN_STEPS = 200

    def get_readonly_fields(self, request, obj=None):
        return [*super().get_readonly_fields(request, obj), "steps"]

    @admin.display(description="steps")
    def steps(self, workflow: Workflow) -> str:
        rows = (workflow.steps.order_by("index").select_related("job")
                [:self.SHOWN_STEPS])
        body = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((step.name, step.job_id, step.job.status, ", ".join(step.depends_on),
              step.waiting_for, step.outcome or "-") for step in rows))
        return format_html(
            "<table><tr><th>step</th><th>job</th><th>status</th><th>depends on</th>"
            "<th>waiting for</th><th>counted as</th></tr>{}</table><p>{} of {} steps shown</p>",
            body, min(workflow.step_count, self.SHOWN_STEPS), workflow.step_count)

    @admin.action(description="Cancel the selected workflows (steps not yet started)")
    def cancel_workflows(self, request, queryset):
        cancelled = refused = 0
        for workflow in queryset:
            try:
                cancelled += workflow_cancel(workflow=workflow).cancelled
            except NotCancellable:
                refused += 1
        self.message_user(request, f"{cancelled} step(s) cancelled; {refused} workflow(s) "
                          "had already finished", messages.SUCCESS)

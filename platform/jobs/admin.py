from __future__ import annotations

from django.contrib import admin

from jobs.models import Batch, Job


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
    search_fields = ("id", "task", "tenant_name", "batch__id")


@admin.register(Batch)
class BatchAdmin(ReadOnlyAdmin):
    list_display = ("id", "task", "tenant_name", "lane", "tier", "priority", "total_items",
                    "chunk_count", "submitted_at", "cancelled_at")
    list_filter = ("lane", "tier", "task")
    search_fields = ("id", "task", "tenant_name")

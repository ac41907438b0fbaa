from __future__ import annotations

from django.contrib import admin

from jobs.models import Job


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    """Jobs are read-only here: they change only through services and workers."""

    list_display = ("id", "task", "tenant_name", "lane", "tier", "priority", "status",
                    "submitted_at", "finished_at")
    list_filter = ("status", "lane", "tier", "task")
    search_fields = ("id", "task", "tenant_name")

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

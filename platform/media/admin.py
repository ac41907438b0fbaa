from __future__ import annotations

from django.contrib import admin

from media.models import File


@admin.register(File)
class FileAdmin(admin.ModelAdmin):
    """Read-only: files change through their tasks, which keep storage and rows in step."""

    list_display = ("path", "tenant", "state", "size", "content_type", "updated_at")
    list_filter = ("state", "content_type")
    search_fields = ("name", "folder", "id")
    readonly_fields = [f.name for f in File._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

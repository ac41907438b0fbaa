from __future__ import annotations

from django.contrib import admin, messages

from schedules.models import Schedule, ScheduleFire
from schedules.services import schedule_pause, schedule_resume


class FireInline(admin.TabularInline):
    """The last fire records, read-only: they are written by the schedule pass only."""

    model = ScheduleFire
    fields = ("fire_at", "outcome", "reason", "detail", "job", "lateness", "triggered")
    readonly_fields = fields
    ordering = ("-fire_at",)
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = False

    def get_queryset(self, request):
        # An inline cannot be sliced; the newest 20 by id instead.
        qs = super().get_queryset(request)
        ids = list(qs.order_by("-fire_at").values_list("id", flat=True)[:20])
        return qs.filter(id__in=ids)


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    """Schedules per tenant with their next fire time; read-only (the API checks the task
    and the rule), with pause and resume as actions (the services move the next fire
    time as the API does)."""

    list_display = ("id", "tenant", "name", "task", "cron", "timezone", "every", "overlap",
                    "catch_up", "paused", "next_fire_at")
    list_filter = ("tenant", "paused", "overlap", "catch_up", "task")
    search_fields = ("id", "name", "task", "tenant__name")
    ordering = ("tenant__name", "next_fire_at")
    inlines = [FireInline]
    actions = ["pause", "resume"]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Pause the selected schedules")
    def pause(self, request, queryset):
        for schedule in queryset:
            schedule_pause(schedule=schedule)
        self.message_user(request, f"{queryset.count()} schedule(s) paused", messages.SUCCESS)

    @admin.action(description="Resume the selected schedules (from the next fire time)")
    def resume(self, request, queryset):
        for schedule in queryset:
            schedule_resume(schedule=schedule)
        self.message_user(request, f"{queryset.count()} schedule(s) resumed", messages.SUCCESS)

from __future__ import annotations

from django.contrib import admin

from tenants.models import ApiToken, Tenant


class ApiTokenInline(admin.TabularInline):
    model = ApiToken
    fields = ("prefix", "created_at", "revoked_at")
    readonly_fields = ("prefix", "created_at")
    extra = 0
    can_delete = False


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ("name", "tier", "weight", "max_queued_jobs", "submissions_per_minute",
                    "is_active", "created_at")
    # Changed at run time, no restart: the web reads the tenant per request, the
    # dispatcher reads weights on every pass (fair-share windows, jobs.fairness).
    list_editable = ("weight", "max_queued_jobs", "submissions_per_minute")
    list_filter = ("tier", "is_active")
    search_fields = ("name",)
    inlines = [ApiTokenInline]

from __future__ import annotations

from django.contrib import admin, messages

from routing.management import ManagementError
from tenants.models import ApiToken, BrokerUser, Tenant
from tenants.services import broker_users_regrant


class ApiTokenInline(admin.TabularInline):
    model = ApiToken
    fields = ("prefix", "created_at", "revoked_at")
    readonly_fields = ("prefix", "created_at")
    extra = 0
    can_delete = False


class BrokerUserInline(admin.TabularInline):
    model = BrokerUser
    fields = ("username", "service", "created_at", "rotated_at", "disabled_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # created with its password by manage.py tenant_broker_user


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ("name", "tier", "weight", "max_queued_jobs", "submissions_per_minute",
                    "max_storage_bytes", "is_active", "created_at")
    # Changed at run time, no restart: the web reads the tenant per request, the
    # dispatcher reads weights on every pass (fair-share windows, jobs.fairness).
    list_editable = ("weight", "max_queued_jobs", "submissions_per_minute", "max_storage_bytes")
    list_filter = ("tier", "is_active")
    search_fields = ("name",)
    inlines = [ApiTokenInline, BrokerUserInline]

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        if change and "tier" in form.changed_data:
            # Its broker users may publish only their tier's routing keys: follow the change.
            try:
                count = broker_users_regrant(tenant=obj)
            except ManagementError as exc:
                self.message_user(request, f"tier saved, but its broker users keep the old "
                                  f"tier's routing keys until `manage.py tenant_broker_user "
                                  f"{obj.name}` is run again: {exc}", messages.WARNING)
            else:
                if count:
                    self.message_user(request, f"{count} broker user(s) now publish "
                                      f"{obj.tier} routing keys")

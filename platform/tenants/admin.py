from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.template.response import TemplateResponse

from jobs import tenant_work
from routing import topology
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
                    "max_storage_bytes", "is_active", "paused_at", "created_at")
    # Changed at run time, no restart: the web reads the tenant per request, the
    # dispatcher reads weights on every pass (fair-share windows, jobs.fairness).
    list_editable = ("weight", "max_queued_jobs", "submissions_per_minute", "max_storage_bytes")
    list_filter = ("tier", "is_active")
    search_fields = ("name",)
    readonly_fields = ("paused_at", "pause_reason")
    inlines = [ApiTokenInline, BrokerUserInline]
    # The operator's flood commands (manage.py tenant_work), each behind a page that
    # shows what it will touch and asks to confirm.
    actions = ["pause_work", "resume_work", "cancel_work"]

    def _confirm(self, request, queryset, *, action: str, title: str, explanation: str,
                 count_label: str, count, confirm_label: str, **extra):
        rows = [{"tenant": tenant, "count": count(tenant)} for tenant in queryset]
        extra.setdefault("can_confirm", True)
        return TemplateResponse(request, "admin/tenants/tenant/work_confirm.html", {
            **self.admin_site.each_context(request), "title": title, "rows": rows,
            "explanation": explanation, "count_label": count_label, "action": action,
            "confirm_label": confirm_label, "opts": self.model._meta,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME, **extra})

    @admin.action(description="Pause waiting work of the selected tenants")
    def pause_work(self, request, queryset):
        if request.POST.get("confirm") != "yes":
            return self._confirm(
                request, queryset, action="pause_work", title="Pause waiting work",
                explanation="Nothing more of their work is published or started until "
                "resumed; what is in the broker is taken back and kept; running jobs "
                "finish; new submissions are accepted and held.",
                count_label="waiting jobs to hold", confirm_label="Yes, pause",
                count=lambda t: tenant_work.tenant_work_pause(tenant=t, dry_run=True).held,
                with_reason=True)
        for tenant in queryset:
            out = tenant_work.tenant_work_pause(tenant=tenant,
                                                reason=request.POST.get("reason", ""))
            self.message_user(request, f"paused {tenant.name}: {out.held} waiting job(s) "
                              f"held, {out.taken_back} taken back from the broker")
        return None

    @admin.action(description="Resume waiting work of the selected tenants")
    def resume_work(self, request, queryset):
        if request.POST.get("confirm") != "yes":
            return self._confirm(
                request, queryset, action="resume_work", title="Resume waiting work",
                explanation="The dispatcher publishes their held work again, under the "
                "usual fair-share rules.", count_label="held jobs to publish",
                confirm_label="Yes, resume",
                count=lambda t: tenant_work.tenant_work_resume(tenant=t, dry_run=True)
                .to_publish)
        for tenant in queryset:
            out = tenant_work.tenant_work_resume(tenant=tenant)
            self.message_user(request, f"resumed {tenant.name}: {out.to_publish} held "
                              "job(s) for the dispatcher to publish")
        return None

    @admin.action(description="Cancel work not yet started of the selected tenants")
    def cancel_work(self, request, queryset):
        # The page shows what its filters select (a dry run); "Count again" after a
        # change of filters, "Yes, cancel them" to cancel what they select.
        lane = request.POST.get("lane") or None
        task = (request.POST.get("task") or "").strip() or None
        older_than = (request.POST.get("older_than") or "").strip()
        problem = ""
        if lane is not None and lane not in topology.LANES_BY_NAME:
            problem = f"no lane {lane!r}"
        try:
            age = tenant_work.parse_age(older_than) if older_than else None
        except ValueError as exc:
            problem, age = str(exc), None
        filters = {"lane": lane, "task": task, "older_than": age}
        if problem or request.POST.get("confirm") != "yes" or request.POST.get("recount"):
            return self._confirm(
                request, queryset, action="cancel_work", title="Cancel work not yet started",
                explanation="Every job of theirs that has not started and that the filters "
                "select is cancelled and never runs; workflow steps are counted by their "
                "workflows, which may cancel the steps depending on them. Running jobs "
                "finish. This cannot be undone.",
                count_label="jobs to cancel", confirm_label="Yes, cancel them",
                count=lambda t: "?" if problem else tenant_work.tenant_work_cancel(
                    tenant=t, dry_run=True, **filters).jobs,
                with_filters=True, lanes=sorted(topology.LANES_BY_NAME), can_confirm=not problem,
                problem=problem,
                chosen={"lane": lane or "", "task": task or "", "older_than": older_than})
        where = tenant_work.cancel_scope(lane=lane, task=task, older_than=older_than)
        for tenant in queryset:
            count = tenant_work.tenant_work_cancel(tenant=tenant, **filters)
            self.message_user(request, f"cancelled {count.jobs} job(s) of {tenant.name}"
                              f"{where}: {count.steps} workflow step(s); "
                              f"{count.cascaded} more cancelled by their workflows")
        return None

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

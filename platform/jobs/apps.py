from __future__ import annotations

from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.utils.module_loading import autodiscover_modules

        from jobs import log_context, task  # noqa: F401 - connect the worker-side recorders

        # Import every app's tasks module now, in every process (web included):
        # submitting a job needs each task's declared lane.
        autodiscover_modules("tasks")

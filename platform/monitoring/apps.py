from __future__ import annotations

from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "monitoring"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings

        from monitoring import exporter, metrics

        metrics.configure(settings.SWITCHYARD_METRICS_DIR)
        if settings.SWITCHYARD_METRICS_ENABLED:
            metrics.connect()
            exporter.connect()

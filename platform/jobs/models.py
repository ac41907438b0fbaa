"""The job record: Switchyard's system of record for every task it accepted."""
from __future__ import annotations

import uuid

from django.db import models


class Job(models.Model):
    """One task submission. Its id is the Celery task id."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        STARTED = "started"
        RETRYING = "retrying"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"
        EXPIRED = "expired"
        DEAD = "dead"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.EXPIRED, Status.DEAD)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(
        "tenants.Tenant", null=True, blank=True, on_delete=models.PROTECT, related_name="jobs",
        help_text="Empty for work the platform submits for itself.",
    )
    tenant_name = models.CharField(max_length=63)
    task = models.CharField(max_length=200)
    lane = models.CharField(max_length=32)
    tier = models.CharField(max_length=16)
    priority = models.PositiveSmallIntegerField(
        help_text="Absolute RabbitMQ priority (higher first)."
    )
    routing_key = models.CharField(max_length=300)
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    worker = models.CharField(max_length=255, blank=True)
    idempotency_key = models.CharField(max_length=255, blank=True)
    request_fingerprint = models.CharField(
        max_length=64, blank=True, help_text="SHA-256 of the request, to refuse a reused key."
    )
    submitted_at = models.DateTimeField()
    run_at = models.DateTimeField(
        null=True, blank=True, help_text="Not published before this time (countdown / eta)."
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    published_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-submitted_at"]
        indexes = [
            models.Index(fields=["tenant", "status"]),
            models.Index(fields=["lane", "status"]),
            models.Index(fields=["status", "finished_at"]),
            # The dispatcher's scan: queued jobs not yet handed to the broker.
            models.Index(fields=["run_at"], name="jobs_unpublished",
                         condition=models.Q(published_at__isnull=True, status="queued")),
        ]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "idempotency_key"], name="jobs_idempotency",
                                    condition=~models.Q(idempotency_key="")),
        ]

    def __str__(self) -> str:
        return f"{self.task} [{self.status}] {self.id}"

"""Tenants (the platform's customers) and their API tokens."""
from __future__ import annotations

from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from routing.priorities import TIERS


class Tenant(models.Model):
    """A customer of the platform. Its tier decides its priority band, never its requests."""

    class Tier(models.TextChoices):
        PREMIUM = "premium", "Premium"
        STANDARD = "standard", "Standard"

    name = models.CharField(
        max_length=63,
        unique=True,
        validators=[
            RegexValidator(r"^[a-z0-9][a-z0-9_-]*$", "lower-case letters, digits, - and _")
        ],
        help_text="Stable name, carried in the tenant header of every task message.",
    )
    tier = models.CharField(max_length=16, choices=Tier.choices, default=Tier.STANDARD)
    is_active = models.BooleanField(default=True)
    weight = models.PositiveIntegerField(
        default=1, validators=[MinValueValidator(1)],
        help_text="Relative share of its tier's throughput (fair sharing).",
    )
    max_queued_jobs = models.PositiveIntegerField(
        default=100_000, help_text="Most jobs waiting (queued or retrying) at once; more is 429."
    )
    submissions_per_minute = models.PositiveIntegerField(
        default=6_000, help_text="Most job submissions in any 60 seconds; more is 429."
    )
    max_storage_bytes = models.PositiveBigIntegerField(
        default=50 * 1024**3,
        help_text="Most bytes of media kept at once: files (active and trashed) and uploads "
                  "waiting for their job; an upload or copy that would go past it is 413.",
    )
    paused_at = models.DateTimeField(
        null=True, blank=True,
        help_text="Its waiting work is paused: accepted and kept, none of it published or "
                  "started until resumed (manage.py tenant_work, jobs.tenant_work).")
    pause_reason = models.CharField(max_length=200, blank=True,
                                    help_text="Why an operator paused it.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.tier})"


# The model's choices and routing's tiers must never drift apart.
assert {c.value for c in Tenant.Tier} == {t.name for t in TIERS}, "Tenant.Tier != routing.TIERS"


class BrokerUser(models.Model):
    """A RabbitMQ user a tenant's service publishes Celery-native messages as.

    The worker takes a native message's tenant from its AMQP ``user_id``, which
    RabbitMQ validates against the connection's login (``jobs.senders``), never from
    a header. The password lives only in RabbitMQ (and the service's URL).
    """

    username = models.CharField(max_length=127, unique=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="broker_users")
    service = models.CharField(max_length=63, blank=True,
                               help_text="The service acting for the tenant, if one of several.")
    created_at = models.DateTimeField(auto_now_add=True)
    rotated_at = models.DateTimeField(null=True, blank=True,
                                      help_text="Last new password.")
    disabled_at = models.DateTimeField(
        null=True, blank=True,
        help_text="Removed from RabbitMQ; messages it sent before are dead-lettered.")

    def __str__(self) -> str:
        return self.username


class ApiToken(models.Model):
    """An API token. Only its SHA-256 is stored; the key is shown once, at creation."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="tokens")
    key_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=12, help_text="First characters, to tell tokens apart.")
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.tenant.name})"

"""A tenant's schedules and what each of their fire times gave (``schedules.firing``).

Read and written by the web (``schedules.api``) and the dispatcher's schedule pass.
"""
from __future__ import annotations

import uuid

from django.db import models

from jobs.models import Job


class Schedule(models.Model):
    """A tenant's periodic job: ``cron`` (five fields, read in
    ``timezone``) or ``every`` seconds, fired by the dispatcher's schedule pass.

    Each fire time gives at most one ``ScheduleFire`` row (a unique constraint), and
    the row, the job it submits and the move of ``next_fire_at`` are written in one
    transaction: two dispatchers never fire one time twice, and a dispatcher dying
    mid-fire leaves ``next_fire_at`` where it was, so the time is fired again.
    """

    class Overlap(models.TextChoices):
        SKIP = "skip", "skip a fire while the last run is unfinished"
        BUFFER_ONE = "buffer_one", "keep one fire waiting until the last run ends"
        ALLOW = "allow", "fire whatever the last run is doing"

    class CatchUp(models.TextChoices):
        SKIP = "skip", "fire times missed while no dispatcher ran are skipped"
        RUN_ONCE = "run_once", "fire times missed are caught up by one run"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE,
                               related_name="schedules")
    name = models.CharField(max_length=200, blank=True)
    task = models.CharField(max_length=200)
    params = models.JSONField(default=dict, blank=True)
    options = models.JSONField(default=dict, blank=True,
                               help_text="The job options as accepted (POST /api/v1/jobs).")
    cron = models.CharField(max_length=200, blank=True)
    timezone = models.CharField(max_length=64, default="UTC")
    every = models.PositiveIntegerField(null=True, blank=True, help_text="Seconds, >= 10.")
    overlap = models.CharField(max_length=16, choices=Overlap.choices, default=Overlap.SKIP)
    catch_up = models.CharField(max_length=16, choices=CatchUp.choices, default=CatchUp.SKIP)
    jitter = models.PositiveIntegerField(
        default=0, help_text="Each job runs up to this many seconds after its fire time.")
    start_at = models.DateTimeField(null=True, blank=True)
    end_at = models.DateTimeField(null=True, blank=True)
    paused = models.BooleanField(default=False)
    next_fire_at = models.DateTimeField(
        null=True, blank=True, help_text="Empty once the schedule has no fire time left.")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["created_at"]
        indexes = [
            # The dispatcher's pass: schedules due, soonest first.
            models.Index(fields=["next_fire_at"], name="schedules_due",
                         condition=models.Q(paused=False, next_fire_at__isnull=False)),
            models.Index(fields=["tenant", "created_at"]),
        ]

    def __str__(self) -> str:
        rule = self.cron and f"{self.cron} {self.timezone}" or f"every {self.every} s"
        return f"{self.name or self.task} ({rule})"


class ScheduleFire(models.Model):
    """What one fire time of a schedule gave: a job, a skip (and why), or a fire
    buffered behind an unfinished run (``overlap=buffer_one``)."""

    class Outcome(models.TextChoices):
        FIRED = "fired"
        SKIPPED = "skipped"
        BUFFERED = "buffered"

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="fires")
    fire_at = models.DateTimeField(help_text="The fire time (UTC), as the rule gives it.")
    triggered = models.BooleanField(default=False,
                                    help_text="A run asked for by POST .../trigger.")
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    reason = models.CharField(max_length=64, blank=True,
                              help_text="Why skipped: missed, overlap, quota, invalid.")
    detail = models.TextField(blank=True)
    job = models.OneToOneField(Job, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="schedule_fire")
    recorded_at = models.DateTimeField()
    lateness = models.FloatField(
        null=True, blank=True,
        help_text="Seconds from the fire time to its job's first start (jitter included).")
    observed = models.BooleanField(
        default=False, help_text="Its job started (lateness set) or ended without starting.")

    class Meta:
        ordering = ["-fire_at"]
        constraints = [
            # Exactly one outcome per (schedule, fire time), whatever runs the pass.
            models.UniqueConstraint(fields=["schedule", "fire_at"], name="schedule_fire_once",
                                    condition=models.Q(triggered=False)),
        ]
        indexes = [models.Index(fields=["schedule", "-fire_at"]),
                   models.Index(fields=["schedule"], name="schedule_fires_buffered",
                                condition=models.Q(outcome="buffered")),
                   # Fired, its job's start not yet seen (schedules.firing.schedule_observe_starts).
                   models.Index(fields=["id"], name="schedule_fires_unobserved",
                                condition=models.Q(outcome="fired", observed=False))]

    def __str__(self) -> str:
        return f"{self.schedule_id} @ {self.fire_at:%Y-%m-%d %H:%M:%S}: {self.outcome}"

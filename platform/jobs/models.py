"""The job record: Switchyard's system of record for every task it accepted.

A ``Batch`` is a set of items split into chunks; each chunk is one ``Job`` of the
batch's task, so a batch's progress is read from its chunks' records (no chord,
no counter to keep in step).
"""
from __future__ import annotations

import uuid

from django.db import models
from django.db.models import F
from django.db.models.functions import Now


class JobStatus(models.TextChoices):
    """Where a job stands (``Job.Status``)."""

    #: A workflow step waiting for the steps it depends on (``jobs.workflows``): never
    #: published, never started by a delivery; released to ``queued`` once they end.
    BLOCKED = "blocked"
    QUEUED = "queued"
    STARTED = "started"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    DEAD = "dead"


# The groups of states, defined once: code, queries, SQL (``states_sql``) and the
# partial indexes below all use these.
#: Accepted and not started: in the broker, or unpublished in the table (a countdown,
#: a retry's backoff, a job held by its tenant's window). Only these can be cancelled.
WAITING = (JobStatus.QUEUED, JobStatus.RETRYING)
#: Not finished: waiting, or started (a started job whose worker died runs again).
UNFINISHED = (*WAITING, JobStatus.STARTED)
#: Not started: waiting, or blocked behind a workflow step. Cancelling a workflow
#: cancels these.
NOT_STARTED = (*WAITING, JobStatus.BLOCKED)
#: Will never run again.
FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED,
            JobStatus.DEAD)


def start_values(worker: str) -> dict:
    """What a delivery that starts its job writes (``update(**start_values(...))``)."""
    # The database's clock, not this host's: the reaper compares started_at with it.
    return {"status": JobStatus.STARTED, "started_at": Now(), "attempts": F("attempts") + 1,
            "worker": worker}


def states_sql(states) -> str:
    """``states`` as an SQL list of literals (``'queued', 'retrying'``), for raw queries
    that must match a partial index's predicate."""
    return ", ".join(f"'{JobStatus(state).value}'" for state in states)


class Job(models.Model):
    """One task submission. Its id is the Celery task id."""

    Status = JobStatus
    WAITING = WAITING
    UNFINISHED = UNFINISHED
    NOT_STARTED = NOT_STARTED
    FINISHED = FINISHED

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
    received_as = models.CharField(
        max_length=300, blank=True,
        help_text="The routing key a Celery-native message came with, when the job runs "
                  "under another (its lane, tier or band corrected).")
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

    retry_policy = models.JSONField(
        null=True, blank=True, help_text="max_retries, backoff, backoff_max, jitter (seconds)."
    )
    max_attempts = models.PositiveSmallIntegerField(
        default=1, help_text="1 + retry_policy.max_retries: runs allowed for failures."
    )
    publications = models.PositiveIntegerField(
        default=0, help_text="Times handed to the broker; an older message is not run."
    )
    link = models.JSONField(null=True, blank=True, help_text="{task, params} run on success.")
    link_error = models.JSONField(
        null=True, blank=True, help_text="{task, params} run when the job fails for good."
    )
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children",
        help_text="The job whose link or link_error submitted this one.",
    )
    batch = models.ForeignKey(
        "jobs.Batch", null=True, blank=True, on_delete=models.CASCADE, related_name="chunks"
    )
    workflow = models.ForeignKey(
        "jobs.Workflow", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs",
        db_index=False, help_text="The workflow this job is a step of (jobs.workflows).")
    chunk_index = models.PositiveIntegerField(null=True, blank=True)
    item_offset = models.PositiveIntegerField(
        null=True, blank=True, help_text="Index of the chunk's first item in its batch."
    )
    item_count = models.PositiveIntegerField(null=True, blank=True)
    failed_items = models.PositiveIntegerField(
        default=0, help_text="Items the chunk's task reported failed."
    )

    class Meta:
        ordering = ["-submitted_at"]
        indexes = [
            models.Index(fields=["batch", "chunk_index"]),
            models.Index(fields=["status", "started_at"], name="jobs_started",
                         condition=models.Q(status="started")),
            models.Index(fields=["tenant", "status"]),
            # The rate quota: a tenant's submissions in the last minute.
            models.Index(fields=["tenant", "submitted_at"], name="jobs_tenant_submitted"),
            models.Index(fields=["lane", "status"]),
            models.Index(fields=["status", "finished_at"]),
            # The dispatcher's scan: queued jobs not yet handed to the broker.
            models.Index(fields=["run_at"], name="jobs_unpublished_waiting",
                         condition=models.Q(published_at__isnull=True,
                                            status__in=list(WAITING))),
            # Fair sharing (jobs.fairness). Jobs in the broker (published, not
            # started): a tenant's window, the standard jobs the dispatcher may
            # promote. Small: at most the windows' sum in a windowed lane.
            models.Index(fields=["lane", "tier", "published_at"], name="jobs_in_broker",
                         condition=models.Q(published_at__isnull=False,
                                            status__in=list(WAITING))),
            # A tenant's held jobs, in the order the dispatcher releases them.
            models.Index(fields=["tenant", "lane", "tier", "-priority", "submitted_at"],
                         name="jobs_held",
                         condition=models.Q(published_at__isnull=True,
                                            status__in=list(WAITING))),
            # A workflow's steps (most jobs are in none: the index stays small).
            models.Index(fields=["workflow", "status"], name="jobs_in_workflow",
                         condition=models.Q(workflow__isnull=False)),
            # Starts per lane over the last seconds: the standard tier's share.
            models.Index(fields=["lane", "started_at"], name="jobs_lane_started",
                         condition=models.Q(started_at__isnull=False)),
        ]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "idempotency_key"], name="jobs_idempotency",
                                    condition=~models.Q(idempotency_key="")),
        ]

    def __str__(self) -> str:
        return f"{self.task} [{self.status}] {self.id}"


class Batch(models.Model):
    """Items submitted together for one task, run as chunks (one job per chunk)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="batches")
    tenant_name = models.CharField(max_length=63)
    task = models.CharField(max_length=200)
    lane = models.CharField(max_length=32)
    tier = models.CharField(max_length=16)
    priority = models.PositiveSmallIntegerField()
    total_items = models.PositiveIntegerField()
    chunk_size = models.PositiveIntegerField()
    chunk_count = models.PositiveIntegerField()
    options = models.JSONField(default=dict, blank=True, help_text="The options as accepted.")
    idempotency_key = models.CharField(max_length=255, blank=True)
    request_fingerprint = models.CharField(max_length=64, blank=True)
    submitted_at = models.DateTimeField()
    cancelled_at = models.DateTimeField(null=True, blank=True)
    workflow = models.OneToOneField(
        "jobs.Workflow", null=True, blank=True, on_delete=models.SET_NULL, related_name="batch",
        help_text="Runs the batch's on_complete task once every chunk has ended.")

    class Meta:
        ordering = ["-submitted_at"]
        indexes = [models.Index(fields=["tenant", "submitted_at"])]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "idempotency_key"],
                                    name="batches_idempotency",
                                    condition=~models.Q(idempotency_key="")),
        ]

    def __str__(self) -> str:
        return f"{self.task} x{self.total_items} {self.id}"


class WorkflowStatus(models.TextChoices):
    """Where a workflow stands (``Workflow.Status``)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Workflow(models.Model):
    """Steps run in the order their dependencies give (``jobs.workflows``): a DAG
    submitted to ``POST /api/v1/workflows``, a Celery chain or chord from the native
    path, or a batch with an ``on_complete`` task.

    Every step is a ``Job`` (with a ``WorkflowStep`` row), recorded when the workflow
    is accepted: a step whose dependencies have not all ended is ``blocked``. The row
    counts the steps not yet ended (``open_steps``, the ``on_complete`` step aside);
    it is changed only under its row lock, in the transaction that records a step's
    end, so each step is counted once and what waits on it is released once.
    """

    class Kind(models.TextChoices):
        STEPS = "steps", "steps (REST)"
        CHAIN = "chain", "Celery chain"
        CHORD = "chord", "Celery chord"
        BATCH = "batch", "batch on_complete"

    Status = WorkflowStatus

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", null=True, blank=True,
                               on_delete=models.PROTECT, related_name="workflows")
    tenant_name = models.CharField(max_length=63)
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.STEPS)
    status = models.CharField(max_length=16, choices=WorkflowStatus.choices,
                              default=WorkflowStatus.RUNNING)
    step_count = models.PositiveIntegerField()
    open_steps = models.PositiveIntegerField(
        help_text="Steps not yet ended, the on_complete step aside.")
    on_complete = models.OneToOneField(
        "jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="Runs once after every other step ended, whatever their outcome.")
    reason = models.TextField(blank=True, help_text="Why it failed or was cancelled.")
    idempotency_key = models.CharField(max_length=255, blank=True)
    request_fingerprint = models.CharField(max_length=64, blank=True)
    submitted_at = models.DateTimeField()
    cancelled_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-submitted_at"]
        indexes = [models.Index(fields=["tenant", "submitted_at"]),
                   models.Index(fields=["status", "submitted_at"], name="workflows_running",
                                condition=models.Q(status="running")),
                   # Finished in the last hour (dashboard), and retention.
                   models.Index(fields=["finished_at"], name="workflows_finished")]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "idempotency_key"],
                                    name="workflows_idempotency",
                                    condition=~models.Q(idempotency_key="")),
        ]

    def __str__(self) -> str:
        return f"{self.kind} workflow [{self.status}] {self.id}"


class OnFailure(models.TextChoices):
    """What a step's failure does to the steps that depend on it."""

    FAIL_WORKFLOW = "fail_workflow", "cancel its descendants; the workflow fails"
    CONTINUE = "continue", "its dependents run (its result is null)"


class WorkflowStep(models.Model):
    """A job's place in its workflow: its name, what it waits for and what waits on it."""

    OnFailure = OnFailure

    job = models.OneToOneField("jobs.Job", primary_key=True, on_delete=models.CASCADE,
                               related_name="step")
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="steps")
    name = models.CharField(max_length=200)
    index = models.PositiveIntegerField(help_text="Its place in the request.")
    depends_on = models.JSONField(default=list, blank=True, help_text="Names of its upstreams.")
    dependents = models.JSONField(default=list, blank=True,
                                  help_text="Job ids of the steps that depend on it.")
    inputs = models.JSONField(
        default=dict, blank=True,
        help_text="Parameter -> step name (its result) or list of names (their results).")
    summary_param = models.CharField(
        max_length=200, blank=True,
        help_text="on_complete only: the parameter receiving the workflow's summary.")
    options = models.JSONField(default=dict, blank=True,
                               help_text="Its submit options as accepted, applied at release.")
    on_failure = models.CharField(max_length=16, choices=OnFailure.choices,
                                  default=OnFailure.FAIL_WORKFLOW)
    is_on_complete = models.BooleanField(default=False)
    waiting_for = models.PositiveIntegerField(default=0,
                                              help_text="Upstream steps not yet ended.")
    outcome = models.CharField(
        max_length=16, blank=True,
        help_text="Its job's final status once the workflow counted it (counted once).")

    class Meta:
        ordering = ["index"]
        constraints = [models.UniqueConstraint(fields=["workflow", "name"],
                                               name="workflow_step_names")]
        indexes = [
            # The sweep: steps whose job ended on a path that left the counting to it.
            models.Index(fields=["workflow"], name="workflow_steps_open",
                         condition=models.Q(outcome="")),
        ]

    def __str__(self) -> str:
        return f"{self.name} of {self.workflow_id}"


class ChordHeader(models.Model):
    """A header task of a registered Celery chord, by its frozen task id: the header's
    message, when first admitted, finds its chord and body here in one primary-key read
    (``jobs.workflow_submission.chord_join``), whatever the chord's size."""

    job_id = models.UUIDField(primary_key=True)
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="headers")
    body_id = models.UUIDField(help_text="The chord's body: the step this header releases.")

    def __str__(self) -> str:
        return f"header {self.job_id} of chord {self.workflow_id}"


class PendingConfirm(models.Model):
    """Jobs written as published by a bulk submission whose broker confirms were
    not yet all seen.

    A bulk submission records its jobs already marked published (one COPY, no
    per-job UPDATE afterwards), then publishes them. This row, written in the
    same transaction, is deleted once the broker has answered for every job;
    jobs it did not confirm are set back to unpublished for the dispatcher. A
    row that outlives ``SWITCHYARD_BULK_CONFIRM_GRACE`` means the submitting
    process died in between: the dispatcher then sets its still-queued jobs back
    to unpublished and publishes them again (``jobs.dispatch.job_reclaim_unconfirmed``).
    """

    created_at = models.DateTimeField(db_index=True)
    job_ids = models.JSONField(help_text="Ids of the jobs not yet confirmed.")

    def __str__(self) -> str:
        return f"{len(self.job_ids)} job(s) awaiting confirms since {self.created_at:%H:%M:%S}"

"""The job state machine, driven by hypothesis through the real services on the real database.

Every transition a job can take goes through the function the platform calls for it:
``job_submit``, ``job_cancel``, ``job_begin`` (a worker's delivery, with the broker's
``redelivered`` flag and the message's publication number), ``job_record_success``,
``job_record_failure``, ``job_record_dead``, ``job_publish_due`` (the dispatcher, which
also expires jobs) and ``job_reap_lost``. Hypothesis picks any sequence of them; after
every step each job's record must match a small model of the rules in docs/architecture.md
and hold the invariants: a finished job never changes again, attempts and publication
numbers never go down, a cancelled job never starts, priority stays in the tier's band.

Needs RabbitMQ: the dispatcher really publishes (into this run's vhost).
"""
from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

import pytest
from celery.exceptions import Reject
from django.conf import settings as django_settings
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

import routing.celery_config as routing_celery
from jobs.dispatch import job_publish_due, job_reap_lost
from jobs.errors import NotCancellable
from jobs.models import Job
from jobs.options import RetryPolicy, SubmitOptions
from jobs.outcomes import (
    LOST_DELIVERY_ALLOWANCE,
    job_record_dead,
    job_record_failure,
    job_record_success,
)
from jobs.submission import job_cancel, job_submit
from jobs.task import job_begin
from routing import priorities, topology
from switchyard.celery import app
from tenants.models import Tenant

pytestmark = [pytest.mark.rabbitmq, pytest.mark.django_db]

S = Job.Status
WAITING = {S.QUEUED, S.RETRYING}
FINISHED = set(Job.FINISHED)
TASK = "demo.quick_task"
#: The broker user the platform's own messages come from in this run (guest).
PLATFORM = routing_celery.broker_user(django_settings.CELERY_BROKER_URL)
#: Transitions the run took, (from, to): the test fails if a kind it must exercise is missing.
TAKEN: set[tuple[str, str]] = set()


@dataclass
class Expected:
    """What the rules say the record must hold."""

    status: str = S.QUEUED
    attempts: int = 0
    publications: int = 0
    published: bool = False
    max_attempts: int = 1
    retries: bool = False
    expires_at: dt.datetime | None = None
    history: list[str] = field(default_factory=list)


class JobStates(RuleBasedStateMachine):
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        run = uuid.uuid4().hex[:8]
        self.tenants = {
            tier.name: Tenant.objects.create(name=f"fuzz-{tier.name}-{run}", tier=tier.name,
                                             max_queued_jobs=10_000,
                                             submissions_per_minute=10_000)
            for tier in priorities.TIERS}
        self.expected: dict[str, Expected] = {}
        self.clock = timezone.now()

    # -- transitions -------------------------------------------------------------------------

    @initialize(target=jobs)
    def a_job_waiting_for_its_retry(self):
        """Every run starts with one job in ``retrying``, the state reached by the longest path."""
        job_id = self.submit(priorities.STANDARD, priority=5, retries=2, expires=False)
        self.run(job_id, "fail")
        assert self.expected[job_id].status == S.RETRYING
        return job_id

    @rule(target=jobs, tier=st.sampled_from(priorities.TIERS), priority=st.integers(0, 9),
          retries=st.integers(0, 2), expires=st.booleans())
    def submit(self, tier, priority, retries, expires):
        options = SubmitOptions(
            priority=priority, expires=3600.0 if expires else None,
            retry_policy=RetryPolicy(max_retries=retries, jitter=False) if retries else None)
        job, created = job_submit(tenant=self.tenants[tier.name], task=TASK, params={"x": 1},
                                  options=options)
        assert created and job.status == S.QUEUED
        self.expected[str(job.id)] = Expected(max_attempts=1 + retries, retries=bool(retries),
                                              expires_at=job.expires_at)
        return str(job.id)

    @rule(job_id=jobs)
    def cancel(self, job_id):
        exp = self.expected[job_id]
        try:
            job_cancel(job=Job.objects.get(id=job_id))
        except NotCancellable:
            assert exp.status not in WAITING
        else:
            assert exp.status in WAITING
            self._moves(exp, S.CANCELLED)

    @rule(job_id=jobs, redelivered=st.booleans(), copy=st.sampled_from(["latest", "older",
                                                                        "unnumbered"]))
    def deliver(self, job_id, redelivered, copy):
        """A worker receives a copy of the job's message (``job_begin``)."""
        exp = self.expected[job_id]
        number = {"latest": exp.publications, "older": exp.publications - 1,
                  "unnumbered": None}[copy]
        task = app.tasks[TASK]
        # Sent by the platform (the user this process logs in as), as send_job sends it.
        request = {"id": job_id, "hostname": "quick@fuzz", "properties": {"user_id": PLATFORM},
                   "delivery_info": {"redelivered": redelivered,
                                     "routing_key": topology.routing_key("quick", "standard",
                                                                         TASK)}}
        if number is not None:
            request["switchyard_publication"] = number
        task.push_request(**request)
        try:
            began = job_begin(task=task, task_id=job_id, args=(), kwargs={"x": 1}) is not None
            rejected = False
        except Reject:
            began, rejected = False, True
        finally:
            task.pop_request()
        runnable = (exp.status in WAITING or (redelivered and exp.status == S.STARTED)) and (
            number is None or number >= exp.publications)
        deliveries_left = exp.attempts < exp.max_attempts + LOST_DELIVERY_ALLOWANCE
        assert began == (runnable and deliveries_left), (exp, copy, redelivered)
        assert rejected == (runnable and not deliveries_left), (exp, copy, redelivered)
        if began:
            exp.attempts += 1
            self._moves(exp, S.STARTED)
        elif rejected:  # a poison message: dead, its message rejected into <lane>.dead
            self._moves(exp, S.DEAD)

    @rule(job_id=jobs, outcome=st.sampled_from(["succeed", "fail", "fail for good"]))
    def run(self, job_id, outcome):
        """The usual path: the latest copy is delivered, the task runs and reports."""
        self.deliver(job_id, redelivered=False, copy="latest")
        if outcome == "succeed":
            self.succeed(job_id)
        else:
            self.fail(job_id, retryable=outcome == "fail")

    @rule(job_id=jobs)
    def poison(self, job_id):
        """The message kills its worker on every delivery: redelivered until given up."""
        exp = self.expected[job_id]
        for _ in range(exp.max_attempts + LOST_DELIVERY_ALLOWANCE + 1):
            self.deliver(job_id, redelivered=True, copy="latest")
        assert exp.status in FINISHED  # dead (or finished before): never cycling for ever

    @rule(job_id=jobs)
    def succeed(self, job_id):
        exp = self.expected[job_id]
        recorded = job_record_success(job_id=job_id, result={"ok": True})
        assert recorded == (exp.status == S.STARTED)
        if recorded:
            self._moves(exp, S.SUCCEEDED)

    @rule(job_id=jobs, retryable=st.booleans())
    def fail(self, job_id, retryable):
        exp = self.expected[job_id]
        status = job_record_failure(job_id=job_id, error="ValueError: fuzz", retryable=retryable)
        if exp.status != S.STARTED:
            assert status is None
            return
        retry = retryable and exp.retries and exp.attempts < exp.max_attempts
        assert status == (S.RETRYING if retry else S.FAILED)
        if retry:
            exp.published = False
        self._moves(exp, status)

    @rule(job_id=consumes(jobs))
    def kill(self, job_id):
        """The platform gives up on a job (``job_record_dead``, as for a poison message)."""
        exp = self.expected[job_id]
        marked = job_record_dead(job=Job.objects.get(id=job_id), reason="fuzz",
                                 runnable=(S.QUEUED, S.RETRYING, S.STARTED))
        assert marked == (exp.status in WAITING | {S.STARTED})
        if marked:
            self._moves(exp, S.DEAD)

    @rule(minutes=st.sampled_from([1, 120]))
    def dispatch(self, minutes):
        """The dispatcher's pass ``minutes`` from now: publishes what is due, expires the rest."""
        now = self.clock + dt.timedelta(minutes=minutes)
        job_publish_due(now=now, limit=10_000)
        for exp in self.expected.values():
            if exp.status in WAITING and not exp.published:
                if exp.expires_at is not None and exp.expires_at <= now:
                    self._moves(exp, S.EXPIRED)
                else:
                    exp.published = True
                    exp.publications += 1

    @rule()
    def reap(self):
        """The dispatcher's search for lost workers, a day later: every started job is lost."""
        job_reap_lost(now=self.clock + dt.timedelta(days=1), limit=10_000)
        for exp in self.expected.values():
            if exp.status == S.STARTED:
                if exp.attempts >= exp.max_attempts + LOST_DELIVERY_ALLOWANCE:
                    self._moves(exp, S.DEAD)
                else:
                    exp.published = False
                    self._moves(exp, S.QUEUED)

    @staticmethod
    def _moves(exp: Expected, status: str) -> None:
        assert exp.status not in FINISHED, f"a finished job moved: {exp.history} -> {status}"
        TAKEN.add((exp.status, status))
        exp.history.append(status)
        exp.status = status

    # -- what must hold after every step ------------------------------------------------------

    @invariant()
    def records_follow_the_rules(self):
        records = Job.objects.in_bulk([uuid.UUID(i) for i in self.expected])
        for job_id, exp in self.expected.items():
            job = records[uuid.UUID(job_id)]
            seen = (job.status, job.attempts, job.publications, job.published_at is not None)
            assert seen == (exp.status, exp.attempts, exp.publications, exp.published), (
                job_id, exp)
            assert (job.finished_at is not None) == (job.status in FINISHED), job.status
            if S.CANCELLED in exp.history:
                assert exp.history[-1] == S.CANCELLED and S.STARTED not in exp.history[
                    exp.history.index(S.CANCELLED):]
            tier = priorities.tier(job.tenant.tier)
            assert job.tier == tier.name and job.priority in tier
            assert topology.parse_routing_key(job.routing_key) == ("quick", tier.name, TASK)


def test_job_state_machine_follows_its_rules(lanes_empty):
    TAKEN.clear()
    run_state_machine_as_test(JobStates, settings=settings(
        max_examples=100, stateful_step_count=30, deadline=None, derandomize=True,
        database=None, suppress_health_check=list(HealthCheck)))
    must = {(S.QUEUED, S.STARTED), (S.STARTED, S.SUCCEEDED), (S.STARTED, S.FAILED),
            (S.STARTED, S.RETRYING), (S.RETRYING, S.STARTED), (S.QUEUED, S.CANCELLED),
            (S.QUEUED, S.EXPIRED), (S.STARTED, S.QUEUED), (S.STARTED, S.DEAD)}
    assert must <= TAKEN, f"not exercised: {sorted(must - TAKEN)}"

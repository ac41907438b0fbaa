"""Nothing accepted is lost when the broker loses or refuses a message it was handed.

Two defences, on the real broker: task messages are published ``mandatory``, so a
message no queue is bound for comes back and its job stays unpublished instead of
``queued`` for ever (``switchyard.amqp``); and the dispatcher's census of each lane
queue against the job table publishes again the jobs whose message the broker
confirmed and then lost (``jobs.reconcile``). The drills break a lane under load
(purge it; delete and re-declare it; a worker of another release rejecting a task
it does not know) and count every accepted job: each must end in a final state,
none run twice (docs/reliability.md).
"""
from __future__ import annotations

import datetime as dt
import io
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import transaction
from kombu import Connection

from jobs.bulk import BulkJob, job_submit_bulk
from jobs.dispatch import job_publish_due
from jobs.models import Job
from jobs.publishing import PUBLISH_GRACE
from jobs.reconcile import job_reconcile
from jobs.signals import job_event
from jobs.submission import job_submit
from routing import broker, topology
from routing.apply import apply_topology
from switchyard.amqp import Unroutable
from switchyard.clock import platform_now
from tenants.models import Tenant
from tests import drills
from tests.processes import wait_until
from tests.test_lanes import start_lane

pytestmark = [pytest.mark.rabbitmq]


@pytest.fixture
def tenant(transactional_db):
    return Tenant.objects.create(name="census", tier="premium", submissions_per_minute=1_000_000,
                                 max_queued_jobs=1_000_000)


@pytest.fixture
def events():
    seen: list[dict] = []
    job_event.connect(lambda sender=None, **kw: seen.append(kw), dispatch_uid="lost-probe",
                      weak=False)
    yield seen
    job_event.disconnect(dispatch_uid="lost-probe")


def _unbind(broker_url: str, lane: str) -> None:
    with Connection(broker_url) as conn:
        conn.default_channel.queue_unbind(lane, topology.EXCHANGE_NAME, topology.binding_key(lane))


def _bind(broker_url: str, lane: str) -> None:
    with Connection(broker_url) as conn:
        conn.default_channel.queue_bind(lane, topology.EXCHANGE_NAME, topology.binding_key(lane))


def _purge(broker_url: str, queue: str) -> int:
    with Connection(broker_url) as conn:
        return conn.default_channel.queue_purge(queue) or 0


def _messages_seen_by_management(management, queue: str, expected: int) -> None:
    """Wait until the management API's figures (up to its statistics interval old)
    show ``expected`` messages in ``queue``."""
    wait_until(lambda: (management.queue(settings.TEST_VHOST, queue) or {}).get("messages")
               == expected, 30, f"the management API to show {expected} in {queue}")


def _publish_one(tenant: Tenant) -> None:
    """A first publish on this process's connection (which Celery may use to declare
    the lane's queue and binding, once per connection)."""
    with transaction.atomic():
        job, _ = job_submit(tenant=tenant, task="demo.quick_task", params={"x": 0})
    job.refresh_from_db()
    assert job.published_at is not None
    _purge(settings.CELERY_BROKER_URL, "quick")


def test_a_publish_no_queue_is_bound_for_leaves_the_job_unpublished(
        tenant, lanes_empty, events):
    # Given the quick lane's binding removed (a queue being re-declared, a topology mistake)
    # after this process published to it
    _publish_one(tenant)
    _unbind(lanes_empty, "quick")
    try:
        # When a job is accepted for it
        with transaction.atomic():
            job, _ = job_submit(tenant=tenant, task="demo.quick_task", params={"x": 1})
        job.refresh_from_db()
        # Then the broker's return is noticed: the job is not recorded as published
        assert (job.status, job.published_at) == (Job.Status.QUEUED, None)
        assert [e["event"] for e in events if e["event"] == "returned"] == ["returned"]
        # And the dispatcher cannot publish it either while nothing is bound (publishers
        # declare nothing: the operator's topology is the only one)
        assert job_publish_due(now=platform_now() + PUBLISH_GRACE) == 0
        job.refresh_from_db()
        assert job.published_at is None
    finally:
        _bind(lanes_empty, "quick")
    # And once the binding is back, the dispatcher publishes it to its queue
    assert job_publish_due(now=platform_now() + PUBLISH_GRACE) == 1
    with Connection(lanes_empty) as conn:
        message = conn.default_channel.basic_get("quick", no_ack=True)
    assert message.properties["application_headers"]["id"] == str(job.id)


def test_a_returned_publish_raises_instead_of_being_confirmed(tenant, lanes_empty):
    from jobs.publishing import publish_job
    _publish_one(tenant)
    job = Job.objects.filter(tenant=tenant).get()
    _unbind(lanes_empty, "quick")
    try:
        with pytest.raises(Unroutable, match="no queue is bound for routing key 'quick."):
            publish_job(job)
        # The same producer and channel go on working for routable messages
        with transaction.atomic():
            slow, _ = job_submit(tenant=tenant, task="demo.slow_task", params={"seconds": 0})
        slow.refresh_from_db()
        assert slow.published_at is not None
    finally:
        _bind(lanes_empty, "quick")


def test_the_census_publishes_again_the_jobs_a_purge_lost_and_only_those(
        tenant, lanes_empty, management, events):
    # Given six quick jobs published and confirmed, no worker running
    outcome = job_submit_bulk(tenant=tenant, enforce_quotas=False, jobs=[
        BulkJob("demo.quick_task", {"x": 1})] * 6)
    assert outcome.published == 6
    _messages_seen_by_management(management, "quick", 6)
    later = platform_now() + dt.timedelta(seconds=settings.SWITCHYARD_RECONCILE_AGE + 1)
    # When nothing was lost, the census changes nothing
    quick, = [c for c in job_reconcile(now=later) if c.lane == "quick"]
    assert (quick.recorded, quick.in_broker, quick.missing) == (6, 6, 0)
    assert Job.objects.filter(id__in=outcome.job_ids, published_at__isnull=True).count() == 0
    # When the queue is purged (the broker confirmed, then lost them)
    assert _purge(lanes_empty, "quick") == 6
    _messages_seen_by_management(management, "quick", 0)
    # Then the census finds all six missing and sets them back to unpublished
    quick, = [c for c in job_reconcile(now=later) if c.lane == "quick"]
    assert (quick.recorded, quick.in_broker, quick.missing) == (6, 0, 6)
    assert Job.objects.filter(id__in=outcome.job_ids, published_at__isnull=True).count() == 6
    assert sum(e["count"] for e in events if e["event"] == "recovered") == 6
    # And the dispatcher publishes them again, with a new publication number
    assert job_publish_due(now=later) == 6
    with Connection(lanes_empty) as conn:
        channel = conn.default_channel
        got = [channel.basic_get("quick", no_ack=True) for _ in range(6)]
    assert sorted(m.properties["application_headers"]["id"] for m in got) == sorted(
        map(str, outcome.job_ids))
    assert {m.properties["application_headers"]["switchyard_publication"] for m in got} == {2}


def test_the_census_counts_only_jobs_older_than_the_management_figures(
        tenant, lanes_empty, management):
    # Given jobs just published and the queue emptied before the figures caught up
    outcome = job_submit_bulk(tenant=tenant, enforce_quotas=False, jobs=[
        BulkJob("demo.quick_task", {"x": 1})] * 3)
    _purge(lanes_empty, "quick")
    _messages_seen_by_management(management, "quick", 0)
    # When the census runs before they are SWITCHYARD_RECONCILE_AGE old
    quick, = [c for c in job_reconcile() if c.lane == "quick"]
    # Then they are not counted yet (the figures could predate them): nothing changes
    assert (quick.recorded, quick.missing) == (0, 0)
    assert Job.objects.filter(id__in=outcome.job_ids, published_at__isnull=True).count() == 0


def test_the_census_changes_nothing_when_the_management_api_cannot_be_read(
        tenant, lanes_empty, monkeypatch):
    outcome = job_submit_bulk(tenant=tenant, enforce_quotas=False, jobs=[
        BulkJob("demo.quick_task", {"x": 1})] * 2)
    _purge(lanes_empty, "quick")
    monkeypatch.setenv("RABBITMQ_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:9")
    later = platform_now() + dt.timedelta(seconds=settings.SWITCHYARD_RECONCILE_AGE + 1)
    assert job_reconcile(now=later) == []
    assert Job.objects.filter(id__in=outcome.job_ids, published_at__isnull=True).count() == 0


# -- Drills: real roles, a lane broken under load ---------------------------------------

DRILL_ENV = {"SWITCHYARD_RECONCILE_EVERY": "2", "SWITCHYARD_RECONCILE_AGE": "8"}


def _submit(tenant: Tenant, task: str, n: int, seconds: float) -> list[str]:
    outcome = job_submit_bulk(tenant=tenant, enforce_quotas=False,
                              jobs=[BulkJob(task, {"seconds": seconds})] * n)
    return [str(i) for i in outcome.job_ids]


def _finish(name: str, accepted: list[str], witness_dir: Path, started: float, roles,
            notes: str) -> drills.Figures:
    wait_until(lambda: drills.all_finished(accepted), 180, "every accepted job to finish",
               interval=1, roles=roles)
    recovered = Job.objects.filter(id__in=accepted, publications__gt=1).count()
    figures = drills.record(drills.count(
        name, submitted=len(accepted), job_ids=accepted, witness_dir=witness_dir,
        started=started, recovered=recovered,
        left=sum(n for q, n in drills.left_in_queues().items() if not q.endswith(".dead")),
        notes=notes))
    assert (figures.lost, figures.duplicated) == (0, 0), figures.line()
    assert Job.objects.filter(id__in=accepted).exclude(
        status=Job.Status.SUCCEEDED).count() == 0
    return figures


@pytest.mark.workers
def test_drill_a_lane_purged_and_then_deleted_under_load_loses_nothing(
        start_role, management, witness_dir, tenant):
    """Purge ``quick`` while a backlog drains; then delete it and declare it again."""
    env = {"SWITCHYARD_WITNESS_DIR": str(witness_dir)}
    roles = [start_role("dispatcher", **DRILL_ENV)]
    roles.append(start_lane(start_role, management, "quick", 2, **env))
    started = time.monotonic()
    accepted = _submit(tenant, "demo.witness", 400, 0.02)
    wait_until(lambda: len(drills.witnessed_runs(witness_dir)) >= 50, 60, "the backlog to drain",
               roles=roles)
    # When the queue is purged with most of the backlog in it
    purged = _purge(settings.CELERY_BROKER_URL, "quick")
    assert purged > 0
    # And, while the census republishes, more is accepted; then the queue is deleted and
    # declared again with the jobs of a second burst in it
    accepted += _submit(tenant, "demo.witness", 200, 0.02)
    management.request("DELETE", f"queues/{management.q(settings.TEST_VHOST)}/quick")
    time.sleep(1)
    accepted += _submit(tenant, "demo.witness", 50, 0.02)  # returned: no queue is bound
    _declare_topology()
    figures = _finish("lane-purged-and-deleted", accepted, witness_dir, started, roles,
                      notes=f"{purged} messages purged from quick, then quick deleted and "
                            "declared again")
    assert figures.recovered >= purged


def _declare_topology() -> None:
    """What the operator's ``python -m routing apply`` does: declare every exchange,
    lane and binding again."""
    connection = broker.connect(settings.CELERY_BROKER_URL)
    try:
        result = apply_topology(connection, io.StringIO())
    finally:
        connection.close()
    assert not result.refused, result.refused


@pytest.mark.workers
def test_drill_jobs_an_older_release_rejects_as_unknown_run_on_the_newer_one(
        start_role, management, witness_dir, tenant):
    """A rolling deploy: a task's messages reach a worker of the release before it."""
    env = {"SWITCHYARD_WITNESS_DIR": str(witness_dir)}
    roles = [start_role("dispatcher", **DRILL_ENV)]
    # Given only a worker of an older release on the lane, which has no such task
    old = start_lane(start_role, management, "quick", 1, SWITCHYARD_DEMO_TASKS="", **env)
    started = time.monotonic()
    accepted = _submit(tenant, "demo.witness", 100, 0.01)
    # When it rejects every one of them (Celery: unknown task, to the dead-letter queue)
    wait_until(lambda: drills.left_in_queues()["quick.dead"] == len(accepted), 60,
               "the older worker to reject the jobs", roles=[*roles, old])
    assert Job.objects.filter(id__in=accepted, status=Job.Status.QUEUED).count() == len(accepted)
    old.stop()
    # Then, once the newer release's worker consumes, the census publishes them again
    roles.append(start_lane(start_role, management, "quick", 2, **env))
    figures = _finish("unknown-task-in-a-rolling-deploy", accepted, witness_dir, started, roles,
                      notes="rejected as unknown by a worker of the previous release, "
                            "then run by the new one")
    assert figures.recovered == len(accepted)

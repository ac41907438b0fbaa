"""``manage.py dlq replay`` replays only what ended: never a job that is running or waiting."""
from __future__ import annotations

import pytest
from django.db.models.functions import Now
from kombu import Connection, Exchange

from jobs.dlq import dlq_replay
from jobs.models import Job
from jobs.submission import job_submit
from routing import topology
from tenants.models import Tenant
from tests.processes import wait_until

pytestmark = pytest.mark.rabbitmq


def dead_copy(broker_url: str, job: Job) -> None:
    """A dead-lettered copy of ``job``'s message, as ``<lane>.dead`` holds one."""
    with Connection(broker_url) as conn:
        conn.Producer(exchange=Exchange(topology.DLX_NAME, type="topic", no_declare=True)).publish(
            [[], job.params, {}], routing_key=job.routing_key, declare=[],
            headers={"id": str(job.id), "task": job.task, "tenant": job.tenant_name})


def test_a_dead_copy_of_a_running_or_waiting_job_is_not_replayed(db, broker_url, lanes_empty,
                                                                  management, settings):
    # Given three jobs with a dead copy each: one running, one waiting, one dead
    tenant = Tenant.objects.create(name="acme", tier="standard")
    running, waiting, dead = (job_submit(tenant=tenant, task="demo.quick_task",
                                         params={"x": i})[0] for i in range(3))
    Job.objects.filter(id=running.id).update(status=Job.Status.STARTED, attempts=1,
                                             worker="quick@host", started_at=Now())
    Job.objects.filter(id=dead.id).update(status=Job.Status.DEAD, finished_at=Now(),
                                          error="gave up")
    for job in (running, waiting, dead):
        dead_copy(broker_url, Job.objects.get(id=job.id))
    wait_until(lambda: (management.queue(settings.TEST_VHOST, "quick.dead") or {}).get(
        "messages") == 3, 15, "three dead copies")
    # When an operator replays all three
    report = dlq_replay("quick", job_ids=[str(running.id), str(waiting.id), str(dead.id)])
    # Then only the dead one is replayed; the running one keeps its run, the waiting one
    # its place, and both copies stay in the queue for the operator to look at
    assert report.replayed == [str(dead.id)]
    skipped = dict(report.skipped)
    assert "is running on quick@host" in skipped[str(running.id)]
    assert "waiting to run again" in skipped[str(waiting.id)]
    assert Job.objects.get(id=running.id).status == Job.Status.STARTED
    assert Job.objects.get(id=running.id).attempts == 1
    assert Job.objects.get(id=dead.id).status == Job.Status.QUEUED

"""The lanes and tiers on the real broker, with real worker processes.

What a platform user notices: a quick task is not delayed by a slow backlog;
premium work is served before standard work in the same lane; a message the
platform cannot trust is never executed and never silently dropped.
"""
from __future__ import annotations

import pickle
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from kombu import Connection, Exchange, Producer, Queue

from jobs.bulk import BulkJob, job_submit_bulk
from jobs.models import Job
from jobs.submission import job_submit
from routing import topology
from switchyard.worker import REASON_HEADER
from tenants.models import Tenant
from tenants.services import broker_user_issue
from tests.processes import wait_until

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers]


def consumers_on(management, queue: str) -> int:
    info = management.queue(settings.TEST_VHOST, queue) or {}
    return info.get("consumers", 0)


def start_lane(start_role, management, lane: str, concurrency: int, **env):
    """A worker of ``lane`` with ``concurrency`` processes, once it consumes."""
    worker = start_role("worker", lane,
                        **{f"SWITCHYARD_{lane.upper()}_CONCURRENCY": str(concurrency), **env})
    wait_until(lambda: consumers_on(management, lane) >= 1, 60, f"a consumer on {lane}",
               roles=[worker])
    return worker


def job_status(job_id) -> str:
    return Job.objects.values_list("status", flat=True).get(id=job_id)


def _without_fair_windows(settings) -> None:
    """The broker's own ordering is under test: every job of the backlog goes to
    the queue at once (fair-share windows would keep most in the job table)."""
    settings.SWITCHYARD_FAIR_WINDOW = {name: 0 for name in settings.SWITCHYARD_FAIR_WINDOW}


def test_quick_task_completes_while_slow_backlog_sits(start_role, management, settings):
    # Given a standard tenant with 2,000 slow jobs queued behind one busy slow worker
    _without_fair_windows(settings)
    tenant = Tenant.objects.create(name="flooder", tier="standard")
    outcome = job_submit_bulk(tenant=tenant, jobs=[
        BulkJob(task="demo.slow_task", params={"seconds": 0.5})] * 2000, enforce_quotas=False)
    assert (outcome.accepted, outcome.published) == (2000, 2000)
    slow = start_lane(start_role, management, "slow", concurrency=1)
    quick = start_lane(start_role, management, "quick", concurrency=2)

    # When the same tenant submits quick jobs one after another
    latencies = []
    for i in range(5):
        job, _ = job_submit(tenant=tenant, task="demo.quick_task", params={"x": i})
        wait_until(lambda j=job: job_status(j.id) == Job.Status.SUCCEEDED, 15,
                   f"quick job {i}", roles=[slow, quick])
        done = Job.objects.get(id=job.id)
        assert done.result == i
        latencies.append((done.finished_at - done.submitted_at).total_seconds())

    # Then each finished long before the backlog could have drained (2,000 x 0.5 s)
    # and the backlog is still there.
    assert max(latencies) < 5.0, latencies
    still_queued = Job.objects.filter(lane="slow", status=Job.Status.QUEUED).count()
    assert still_queued > 1900


def test_backlog_of_mixed_tiers_is_served_premium_first(start_role, management, settings):
    # Given a slow backlog of 40 standard and 40 premium jobs, interleaved, no worker yet
    _without_fair_windows(settings)
    standard = Tenant.objects.create(name="std-co", tier="standard")
    premium = Tenant.objects.create(name="prem-co", tier="premium")
    for _ in range(40):
        for tenant in (standard, premium):
            job_submit(tenant=tenant, task="demo.slow_task", params={"seconds": 0})
    wait_until(lambda: management.queue(settings.TEST_VHOST, "slow")["messages"] == 80, 15,
               "80 messages in slow")

    # When one slow worker with one process drains it
    worker = start_lane(start_role, management, "slow", concurrency=1)
    wait_until(lambda: Job.objects.filter(status=Job.Status.SUCCEEDED).count() == 80, 60,
               "all 80 jobs to succeed", roles=[worker])

    # Then every premium job started before any standard job
    order = list(Job.objects.order_by("started_at").values_list("tier", flat=True))
    assert order == ["premium"] * 40 + ["standard"] * 40, order
    assert set(Job.objects.filter(tier="premium").values_list("priority", flat=True)) <= set(
        range(5, 10))
    assert set(Job.objects.filter(tier="standard").values_list("priority", flat=True)) <= set(
        range(0, 5))


class _Tripwire:
    """Unpickling this creates a file: proof that a worker deserialised pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def publish_and_collect_dead(broker_url: str, body, *, task: str, routing_key: str,
                             content_type: str, content_encoding: str, tier: str = "standard",
                             tenant: str = "outsider", timeout: float = 20):
    """Publish one raw task message as a foreign client would; return (its id, what
    arrived in the lane's dead-letter queue), waiting up to ``timeout`` seconds."""
    task_id = str(uuid.uuid4())
    dead_queue = topology.dead_queue_name(topology.parse_routing_key(routing_key)[0])
    with Connection(broker_url) as conn:
        Producer(conn.default_channel).publish(
            body, exchange=Exchange(topology.EXCHANGE_NAME, type="topic"),
            routing_key=routing_key, serializer=None,
            content_type=content_type, content_encoding=content_encoding,
            headers={"task": task, "id": task_id, "lang": "py", "argsrepr": "()",
                     "kwargsrepr": "{}", "tenant": tenant, "tier": tier},
        )
        bound = Queue(dead_queue, no_declare=True)(conn.default_channel)
        dead = wait_until(lambda: bound.get(no_ack=True), timeout, f"a message in {dead_queue}")
    return task_id, dead


def test_pickle_message_is_dead_lettered_and_never_executed(start_role, management, tmp_path,
                                                            broker_url):
    # Given a quick worker, and a rogue client publishing a pickle body for a real task
    worker = start_lane(start_role, management, "quick", concurrency=1)
    tripwire = tmp_path / "unpickled"
    body = pickle.dumps(((_Tripwire(str(tripwire)),), {}, {}))
    # When the worker receives it
    task_id, dead = publish_and_collect_dead(
        broker_url, body, task="demo.quick_task", routing_key="quick.premium.demo.quick_task",
        content_type="application/x-python-serialize", content_encoding="binary",
        tier="premium")

    # Then it sits in quick.dead with the reason, was never unpickled nor run
    assert dead.headers["id"] == task_id
    assert "application/x-python-serialize" in dead.headers[REASON_HEADER]
    assert dead.body == body
    worker.assert_running()
    assert not tripwire.exists()
    assert not Job.objects.filter(id=task_id).exists()


def test_pickle_from_a_real_tenant_never_runs_where_json_would(start_role, management,
                                                               tmp_path, broker_url):
    # Given a quick worker logging every run of demo.witness, and a real tenant
    Tenant.objects.create(name="acme", tier="standard")
    witness = tmp_path / "witness"
    witness.mkdir()
    worker = start_role("worker", "quick", SWITCHYARD_QUICK_CONCURRENCY="1",
                        SWITCHYARD_WITNESS_DIR=str(witness))
    wait_until(lambda: consumers_on(management, "quick") >= 1, 60, "a consumer on quick",
               roles=[worker])
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    # When a rogue client sends a well-formed protocol-2 call of it, pickled
    body = pickle.dumps(((), {"seconds": 0}, embed))
    task_id, dead = publish_and_collect_dead(
        broker_url, body, task="demo.witness", routing_key="quick.standard.demo.witness",
        content_type="application/x-python-serialize", content_encoding="binary",
        tenant="acme")
    # Then it is dead-lettered with the reason, unread: no job, no run
    assert dead.headers["id"] == task_id and dead.body == body
    assert "application/x-python-serialize" in dead.headers[REASON_HEADER]
    assert not Job.objects.filter(id=task_id).exists()

    # And the same call in JSON, from the tenant's broker user, does run (the witness
    # would have seen the pickle's run)
    json_id = str(uuid.uuid4())
    user, tenant_url = broker_user_issue(tenant=Tenant.objects.get(name="acme"))
    with Connection(tenant_url) as conn:
        Producer(conn.default_channel, auto_declare=False).publish(
            [[], {"seconds": 0}, embed],
            exchange=Exchange(topology.EXCHANGE_NAME, type="topic", no_declare=True),
            routing_key="quick.standard.demo.witness", serializer="json", declare=[],
            user_id=user.username,
            headers={"task": "demo.witness", "id": json_id, "lang": "py", "argsrepr": "()",
                     "kwargsrepr": "{}", "tier": "standard"})
    wait_until(lambda: Job.objects.filter(id=json_id, status="succeeded").exists(), 30,
               "the JSON call to succeed", roles=[worker])
    runs = [line for log in witness.iterdir() for line in log.read_text().split()]
    assert runs == [json_id]


def test_message_for_unknown_task_is_dead_lettered(start_role, management, broker_url):
    # Given a quick worker and a JSON message naming a task nobody registered
    start_lane(start_role, management, "quick", concurrency=1)
    body = b'[[], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'
    task_id, dead = publish_and_collect_dead(
        broker_url, body, task="no.such.task", routing_key="quick.standard.no.such.task",
        content_type="application/json", content_encoding="utf-8")
    # Then the worker rejects it into quick.dead rather than dropping it
    assert dead.headers["id"] == task_id
    assert dead.headers["x-death"][0]["reason"] == "rejected"


def test_corrupt_json_body_is_dead_lettered_not_dropped(start_role, management, broker_url):
    # Given a quick worker and a message whose JSON body is cut short
    start_lane(start_role, management, "quick", concurrency=1)
    task_id, dead = publish_and_collect_dead(
        broker_url, b'[[], {"x": 1', task="demo.quick_task",
        routing_key="quick.standard.demo.quick_task",
        content_type="application/json", content_encoding="utf-8")
    # Then stock Celery would have acked it away; Switchyard keeps it, with the reason
    assert dead.headers["id"] == task_id
    assert "undecodable" in dead.headers[REASON_HEADER]
    assert not Job.objects.filter(id=task_id).exists()

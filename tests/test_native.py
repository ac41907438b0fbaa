"""Celery-native submission: a plain Celery client, held to its tenant's record."""
from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from kombu import Connection, Queue

from jobs.models import Job
from tenants.models import Tenant
from tests.processes import wait_until
from tests.test_lanes import start_lane

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers]

CLIENT = Path(__file__).with_name("native_client.py")


def native_send(broker_url: str, *, task: str, routing_key: str, tenant: str, priority: int,
                kwargs: str = "{}") -> str:
    task_id = str(uuid.uuid4())
    # The client runs with no access to the project: only the virtualenv's Celery.
    subprocess.run([sys.executable, str(CLIENT), broker_url, task, routing_key, tenant,
                    str(priority), task_id, kwargs], check=True, timeout=60,
                   env={"PATH": "/usr/bin:/bin"}, cwd="/")
    return task_id


def test_plain_celery_client_runs_a_platform_task(start_role, management, broker_url):
    Tenant.objects.create(name="native-co", tier="premium")
    worker = start_lane(start_role, management, "quick", concurrency=1)
    task_id = native_send(broker_url, task="demo.quick_task",
                          routing_key="quick.premium.demo.quick_task", tenant="native-co",
                          priority=8, kwargs='{"x": "from celery"}')
    wait_until(lambda: Job.objects.filter(id=task_id, status="succeeded").exists(), 30,
               "the native job to succeed", roles=[worker])
    job = Job.objects.get(id=task_id)
    assert (job.tenant.name, job.tier, job.priority, job.attempts) == ("native-co", "premium",
                                                                       8, 1)
    assert job.result == "from celery"


def test_standard_tenant_claiming_premium_gains_nothing(start_role, management, broker_url):
    # Given a standard tenant that claims the premium key and priority 9 ...
    Tenant.objects.create(name="sneaky", tier="standard")
    worker = start_lane(start_role, management, "quick", concurrency=1)
    task_id = native_send(broker_url, task="demo.quick_task",
                          routing_key="quick.premium.demo.quick_task", tenant="sneaky",
                          priority=9, kwargs='{"x": 1}')
    # Then it ran once, recorded and re-published in the standard band
    wait_until(lambda: Job.objects.filter(id=task_id, status="succeeded").exists(), 30,
               "the job to run after re-publication", roles=[worker])
    job = Job.objects.get(id=task_id)
    assert job.tier == "standard" and job.priority in range(0, 5)
    assert job.routing_key == "quick.standard.demo.quick_task"
    assert job.attempts == 1


def test_cheating_message_waits_behind_legitimate_work_of_its_band(start_role, management,
                                                                   broker_url):
    # Given premium work queued legitimately, then a standard tenant's message
    # claiming priority 9 on the premium key, with no worker running yet
    from jobs.submission import job_submit

    premium = Tenant.objects.create(name="payer", tier="premium")
    Tenant.objects.create(name="sneaky2", tier="standard")
    legit = [job_submit(tenant=premium, task="demo.quick_task", params={"x": i})[0].id
             for i in range(5)]
    cheat = native_send(broker_url, task="demo.quick_task",
                        routing_key="quick.premium.demo.quick_task", tenant="sneaky2",
                        priority=9)
    wait_until(lambda: management.queue(settings.TEST_VHOST, "quick")["messages"] == 6, 15,
               "six messages in quick")
    # When one worker process drains the lane
    worker = start_lane(start_role, management, "quick", concurrency=1)
    wait_until(lambda: Job.objects.filter(status="succeeded").count() == 6, 30, "all six",
               roles=[worker])
    # Then every legitimate premium job started before the cheater's
    started = dict(Job.objects.values_list("id", "started_at"))
    assert all(started[j] < started[uuid.UUID(cheat)] for j in legit)


def test_unknown_tenant_is_dead_lettered_with_the_reason(start_role, management, broker_url):
    worker = start_lane(start_role, management, "quick", concurrency=1)
    task_id = native_send(broker_url, task="demo.quick_task",
                          routing_key="quick.standard.demo.quick_task", tenant="nobody",
                          priority=2)
    wait_until(lambda: Job.objects.filter(id=task_id, status="dead").exists(), 30,
               "the job to be recorded dead", roles=[worker])
    assert "unknown or inactive tenant 'nobody'" in Job.objects.get(id=task_id).error
    with Connection(broker_url) as conn:
        bound = Queue("quick.dead", no_declare=True)(conn.default_channel)
        dead = wait_until(lambda: bound.get(no_ack=True), 15, "the message in quick.dead")
    assert dead.headers["id"] == task_id

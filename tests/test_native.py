"""Celery-native submission: a plain Celery client, publishing as its tenant's broker user,
held to its tenant's record and to the job table whatever its message says.

Each client is ``tests/native_client.py``, run with no access to the project's code; its
broker user is created by the same service ``manage.py tenant_broker_user`` uses.
"""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from kombu import Connection, Queue

from jobs.models import Job
from jobs.submission import job_submit
from tenants.models import Tenant
from tenants.services import broker_user_disable, broker_user_issue
from tests.processes import wait_until
from tests.test_lanes import start_lane

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers]

CLIENT = Path(__file__).with_name("native_client.py")


def tenant_with_user(name: str, tier: str, **fields) -> tuple[Tenant, str]:
    """A tenant and the AMQP URL of its broker user (on this run's vhost)."""
    tenant = Tenant.objects.create(name=name, tier=tier, **fields)
    _, url = broker_user_issue(tenant=tenant)
    return tenant, url


def native_send(url: str, *, check: bool = True, **spec) -> str:
    """Publish one message with the plain client; its task id."""
    spec.setdefault("task_id", str(uuid.uuid4()))
    # The client runs with no access to the project: only the virtualenv's Celery.
    done = subprocess.run([sys.executable, str(CLIENT), url, json.dumps(spec)], timeout=60,
                          env={"PATH": "/usr/bin:/bin"}, cwd="/", capture_output=True,
                          text=True)
    if check:
        assert done.returncode == 0, done.stderr
    return spec["task_id"] if done.returncode == 0 else done.stderr


def dead_letters(broker_url: str, lane: str, ids) -> dict:
    """The messages of ``<lane>.dead`` whose task id is among ``ids``, once all are there
    (every message read on the way is consumed)."""
    found: dict = {}
    with Connection(broker_url) as conn:
        bound = Queue(f"{lane}.dead", no_declare=True)(conn.default_channel)

        def drained():
            while (message := bound.get(no_ack=True)) is not None:
                found[message.headers["id"]] = message
            return set(ids) <= set(found)
        wait_until(drained, 15, f"{sorted(ids)} in {lane}.dead")
    return found


def test_plain_celery_client_runs_a_platform_task(start_role, management):
    _, url = tenant_with_user("native-co", "premium")
    worker = start_lane(start_role, management, "quick", concurrency=1)
    task_id = native_send(url, task="demo.quick_task", routing_key="quick.premium.demo.quick_task",
                          priority=8, kwargs={"x": "from celery"})
    wait_until(lambda: Job.objects.filter(id=task_id, status="succeeded").exists(), 30,
               "the native job to succeed", roles=[worker])
    job = Job.objects.get(id=task_id)
    assert (job.tenant.name, job.tier, job.priority, job.attempts) == ("native-co", "premium",
                                                                       8, 1)
    assert job.result == "from celery" and job.received_as == ""


def test_positional_arguments_fill_the_parameters_and_a_link_gets_the_result(
        start_role, management):
    # Given the field report's calls: slow_task.delay(0.2), quick_task.apply_async(args=[...],
    # link=quick_task.s())
    tenant, url = tenant_with_user("reports", "standard")
    slow = start_lane(start_role, management, "slow", concurrency=1)
    quick = start_lane(start_role, management, "quick", concurrency=1)
    slow_id = native_send(url, task="demo.slow_task", routing_key="slow.standard.demo.slow_task",
                          args=[0.2])
    parent = native_send(url, task="demo.quick_task",
                         routing_key="quick.standard.demo.quick_task", args=["hello"],
                         link={"task": "demo.quick_task"})
    # Then both run with their arguments as parameters, and the link runs on the result
    wait_until(lambda: Job.objects.filter(parent_id=parent, status="succeeded").exists(), 30,
               "the linked job", roles=[slow, quick])
    wait_until(lambda: Job.objects.filter(id=slow_id, status="succeeded").exists(), 30,
               "the slow job", roles=[slow])
    assert Job.objects.get(id=slow_id).params == {"seconds": 0.2}
    assert Job.objects.get(id=parent).params == {"x": "hello"}
    child = Job.objects.get(parent_id=parent)
    assert (child.params, child.result, child.tenant) == ({"x": "hello"}, "hello", tenant)


def test_a_countdown_is_kept_in_the_job_table_not_in_a_worker(start_role, management,
                                                              broker_url):
    # Given a worker and a dispatcher, and a native message due in an hour, one due in 2 s
    _, url = tenant_with_user("later-co", "standard")
    worker = start_lane(start_role, management, "quick", concurrency=1)
    dispatcher = start_role("dispatcher")
    key = "quick.standard.demo.quick_task"
    later = native_send(url, task="demo.quick_task", routing_key=key, countdown=3600)
    soon = native_send(url, task="demo.quick_task", routing_key=key, countdown=2,
                       kwargs={"x": 2})
    # Then the first is recorded for later and its message acknowledged: no worker holds it
    wait_until(lambda: Job.objects.filter(id=later, run_at__isnull=False).exists(), 30,
               "the delayed job recorded", roles=[worker])
    wait_until(lambda: management.queue(settings.TEST_VHOST, "quick")["messages"] == 0, 30,
               "no message held unacknowledged", roles=[worker, dispatcher])
    assert Job.objects.get(id=later).status == "queued"
    # And the second runs once due, published by the dispatcher
    wait_until(lambda: Job.objects.filter(id=soon, status="succeeded").exists(), 30,
               "the short countdown to run", roles=[worker, dispatcher])
    job = Job.objects.get(id=soon)
    assert job.started_at >= job.run_at and job.publications == 1


def test_a_standard_tenant_asking_for_priority_9_runs_in_its_band(start_role, management):
    # Given a standard tenant that asks for 9 on its own key (the broker lets it publish
    # its own tier's keys only) ...
    _, url = tenant_with_user("sneaky", "standard")
    worker = start_lane(start_role, management, "quick", concurrency=1)
    task_id = native_send(url, task="demo.quick_task",
                          routing_key="quick.standard.demo.quick_task", priority=9,
                          kwargs={"x": 1})
    # Then it ran once, recorded and re-published in the standard band
    wait_until(lambda: Job.objects.filter(id=task_id, status="succeeded").exists(), 30,
               "the job to run after re-publication", roles=[worker])
    job = Job.objects.get(id=task_id)
    assert job.tier == "standard" and job.priority in range(0, 5)
    assert job.attempts == 1 and job.publications == 1


def test_cheating_message_waits_behind_legitimate_work_of_the_premium_band(
        start_role, management):
    # Given premium work queued legitimately, then a standard tenant's message with
    # priority 9, with no worker running yet
    premium = Tenant.objects.create(name="payer", tier="premium")
    _, url = tenant_with_user("sneaky2", "standard")
    legit = [job_submit(tenant=premium, task="demo.quick_task", params={"x": i})[0].id
             for i in range(5)]
    cheat = native_send(url, task="demo.quick_task", routing_key="quick.standard.demo.quick_task",
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


def test_forgeries_gain_nothing(start_role, management, broker_url):
    # Given two tenants with their broker users, a queued job of the premium one, and a
    # worker not yet running
    victim, victim_url = tenant_with_user("victim", "premium")
    _, url = tenant_with_user("forger", "standard")
    job, _ = job_submit(tenant=victim, task="demo.quick_task", params={"x": "victim's"})
    wait_until(lambda: Job.objects.filter(id=job.id, published_at__isnull=False).exists(), 10,
               "the victim's job in the broker")
    std = "quick.standard.demo.quick_task"
    # When the forger tries: the premium routing key, another user's user_id ...
    premium_key = native_send(url, check=False, task="demo.quick_task",
                              routing_key="quick.premium.demo.quick_task")
    other_user = native_send(url, check=False, task="demo.quick_task", routing_key=std,
                             user_id=victim_url.split("//")[1].split(":")[0])
    # ... the victim's name in the tenant header, a message with the victim's job id and
    # its own kwargs, a Celery builtin
    header = native_send(url, task="demo.quick_task", routing_key=std, kwargs={"x": "mine"},
                         headers={"tenant": "victim"}, priority=9)
    stolen = native_send(url, task="demo.quick_task", routing_key=std, task_id=str(job.id),
                         kwargs={"x": "forged"}, headers={"switchyard_publication": 5})
    builtin = native_send(url, task="celery.starmap", routing_key="quick.standard.celery.starmap",
                          kwargs={"task": {"task": "demo.quick_task"}, "it": [[1]] * 3})
    worker = start_lane(start_role, management, "quick", concurrency=1)
    wait_until(lambda: Job.objects.filter(id=job.id, status="succeeded").exists(), 30,
               "the victim's job", roles=[worker])
    wait_until(lambda: Job.objects.filter(id=header, status="succeeded").exists(), 30,
               "the forger's own job", roles=[worker])
    # Then the broker refused the first two outright
    assert "ACCESS_REFUSED" in premium_key and "PRECONDITION_FAILED" in other_user
    # The header gained nothing: the job is the forger's, in the standard band
    mine = Job.objects.get(id=header)
    assert (mine.tenant.name, mine.tier) == ("forger", "standard") and mine.priority <= 4
    # The victim's job ran once, with its own params: the stolen id ran nothing
    victims = Job.objects.get(id=job.id)
    assert (victims.attempts, victims.result, victims.tenant) == (1, "victim's", victim)
    # (the forged copy may be taken after both jobs ran: its refusal is waited for)
    assert stolen == str(job.id)
    wait_until(lambda: f"delivery of job {job.id} (tenant victim)" in worker.log(), 30,
               "the forged delivery's refusal in the worker's log", roles=[worker])
    assert Job.objects.get(id=job.id).attempts == 1
    # The builtin never ran: dead-lettered with the reason, no job, no starmap run
    dead_letters(broker_url, "quick", [builtin])
    assert not Job.objects.filter(id=builtin).exists()
    assert Job.objects.count() == 2  # the victim's and the forger's own
    assert "is not a Switchyard task" in worker.log()


def test_refused_messages_are_dead_lettered_with_the_reason(start_role, management,
                                                           broker_url):
    # Given a tenant at its quota, a message of a broker user disabled since, and a worker
    _, url = tenant_with_user("refused-co", "standard")
    full, full_url = tenant_with_user("full-co", "standard", max_queued_jobs=0)
    gone, gone_url = tenant_with_user("gone-co", "standard")
    key = "quick.standard.demo.quick_task"
    before = native_send(gone_url, task="demo.quick_task", routing_key=key)
    broker_user_disable(user=gone.broker_users.get())
    worker = start_lane(start_role, management, "quick", concurrency=1)
    # When it sends: no user_id, bad params, an internal task, and over its quota
    cases = {
        native_send(url, task="demo.quick_task", routing_key=key, user_id=""):
            "has no user_id property",
        native_send(url, task="demo.slow_task", routing_key="slow.standard.demo.slow_task",
                    kwargs={"seconds": "long"}):
            "params.seconds: must be number",
        native_send(url, task="jobs.prune_finished", routing_key="quick.standard.jobs."
                    "prune_finished"):
            "is not in the catalogue",
        native_send(full_url, task="demo.quick_task", routing_key=key):
            "quota exceeded",
        native_send(url, task="demo.quick_task", routing_key=key, args=[1, 2]):
            "takes 1 positional argument(s) (x), got 2",
        before: "was disabled",
    }
    slow = start_lane(start_role, management, "slow", concurrency=1)
    # Then each is recorded dead with the reason and its message is in <lane>.dead
    for task_id, reason in cases.items():
        wait_until(lambda task_id=task_id: Job.objects.filter(id=task_id, status="dead").exists(),
                   30, f"job {task_id} dead ({reason})", roles=[worker, slow])
        assert reason in Job.objects.get(id=task_id).error
    assert Job.objects.get(id=list(cases)[3]).tenant == full
    by_lane: dict[str, list[str]] = {}
    for task_id in cases:
        by_lane.setdefault(Job.objects.get(id=task_id).lane, []).append(task_id)
    for lane, ids in by_lane.items():
        dead_letters(broker_url, lane, ids)


def test_the_platforms_own_app_turns_calls_into_jobs(start_role, management):
    # Given code inside the platform (a view, a command) calling tasks as the first field
    # report does: delay(), apply_async(args=..., queue=...), apply_async(kwargs=..., a
    # tenant named in the headers, countdown=...)
    from demo.tasks import quick_task

    acme = Tenant.objects.create(name="acme", tier="premium")
    worker = start_lane(start_role, management, "quick", concurrency=1)
    dispatcher = start_role("dispatcher")
    own = quick_task.delay(100)
    queued = quick_task.apply_async(args=[7], queue="quick_tasks", priority=9)
    later = quick_task.apply_async(kwargs={"x": 3}, headers={"tenant": "acme"}, countdown=1)
    # Then each is a job that runs: the platform's own two, the tenant's once due
    ids = [own.id, queued.id, later.id]
    wait_until(lambda: Job.objects.filter(id__in=ids, status="succeeded").count() == 3, 30,
               "the three jobs", roles=[worker, dispatcher])
    jobs = {str(j.id): j for j in Job.objects.filter(id__in=ids)}
    assert (jobs[own.id].tenant, jobs[own.id].tenant_name, jobs[own.id].result) == (
        None, "system", 100)
    assert (jobs[queued.id].params, jobs[queued.id].lane) == ({"x": 7}, "quick")
    assert jobs[queued.id].priority <= 4  # the platform's work is in the standard band
    tenant_job = jobs[later.id]
    assert (tenant_job.tenant, tenant_job.tier, tenant_job.result) == (acme, "premium", 3)
    assert tenant_job.run_at is not None and tenant_job.started_at >= tenant_job.run_at

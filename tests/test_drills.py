"""Runbook drills on the real broker: create the condition, then run the runbook's own commands.

The commands are read from docs/runbooks/*.md (``tests/runbooks.py``), so a
runbook whose commands stop working fails here. Every drill works in the
run's vhost or one of its own, and its processes log in as the users the
definitions give their roles (``tests/deploy_support.py``): the workers with
their lane's least privilege, the operator commands as ``switchyard-operator``.
"""
from __future__ import annotations

import json
import logging
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest
from django.conf import settings

from jobs.models import Job
from jobs.submission import job_submit
from routing import topology
from routing.management import Management, with_vhost
from tenants.models import Tenant
from tests import runbooks
from tests.deploy_support import imported_users, platform_users
from tests.processes import BIN, REPO, Role, role_env, wait_until

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers]
logging.getLogger("pika").setLevel(logging.WARNING)


@pytest.fixture
def users(broker_vhost, management: Management, lanes_empty):
    """The definitions' users on the run's vhost: ``{role: AMQP URL}``."""
    with imported_users(management, broker_vhost) as urls:
        yield urls


def queue_depth(url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def test_poison_message_lands_in_slow_dead_and_replays_after_the_fix(
        start_role, users, tmp_path: Path):
    operator = role_env(users["operator"])
    book = "poison-messages.md"
    # Given a worker of the slow lane, logged in with its own least privilege
    worker = start_role("worker", "slow", CELERY_BROKER_URL=users["worker-slow"],
                        SWITCHYARD_PLATFORM_BROKER_USERS=platform_users(users),
                        SWITCHYARD_SLOW_CONCURRENCY="1")
    tenant = Tenant.objects.create(name="acme", tier="premium")
    marker = tmp_path / "bug-not-fixed-yet"
    marker.write_text("the task kills its worker while this file exists")

    # When a job's task kills its worker process on every delivery
    job, _ = job_submit(tenant=tenant, task="demo.poison", params={"marker": str(marker)})
    wait_until(lambda: Job.objects.get(id=job.id).status == Job.Status.DEAD, 120,
               "the poison job to be given up", roles=[worker])

    # Then it is dead and its message waits in slow.dead (confirm, as the runbook says)
    dead = Job.objects.get(id=job.id)
    assert dead.attempts == dead.max_attempts + 2 and "slow.dead" in dead.error
    wait_until(lambda: queue_depth(users["operator"], "slow.dead") == 1, 10, "slow.dead")
    listed = runbooks.run(runbooks.find(book, r"dlq list --lane slow", "Confirm"), operator)
    assert listed.returncode == 0, listed.stderr
    assert "slow.dead: 1 message(s)" in listed.stdout
    line = next(row for row in listed.stdout.splitlines() if str(job.id) in row)
    assert "demo.poison" in line and "tenant=acme tier=premium job=dead" in line
    shown = runbooks.run(runbooks.find(book, r"dlq show --lane slow JOB_ID"), operator,
                         JOB_ID=str(job.id))
    assert shown.returncode == 0, shown.stderr
    details = json.loads(shown.stdout)
    assert details["job"]["tenant"] == "acme" and details["task"] == "demo.poison"
    assert details["headers"]["x-death"][0]["queue"] == "slow"
    worker.assert_running()  # the lane kept its worker: only pool processes died

    # When the fix is deployed and the runbook's replay runs
    marker.unlink()
    replayed = runbooks.run(runbooks.find(book, r"dlq replay --lane slow JOB_ID", "Fix"),
                            operator, JOB_ID=str(job.id))
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert f"replayed {job.id}" in replayed.stdout

    # Then the same job record runs again, for the same tenant and tier, and succeeds
    wait_until(lambda: Job.objects.get(id=job.id).status == Job.Status.SUCCEEDED, 60,
               "the replayed job to succeed", roles=[worker])
    after = Job.objects.get(id=job.id)
    assert (after.tenant_id, after.tier, after.priority) == (tenant.id, "premium", job.priority)
    assert Job.objects.count() == 1  # no new job
    assert after.worker.startswith("slow@") and after.attempts == 1
    verify = runbooks.run(runbooks.find(book, r"dlq list --lane slow", "Verify"), operator)
    assert "slow.dead: 0 message(s)" in verify.stdout
    status = runbooks.run(runbooks.find(book, r"manage.py shell", "Verify"), operator,
                          JOB_ID=str(job.id))
    assert status.stdout.strip() == "succeeded", status.stderr


def test_replay_refuses_a_succeeded_job_and_purge_needs_yes(users, transactional_db):
    operator = role_env(users["operator"])
    tenant = Tenant.objects.create(name="done", tier="standard")
    job, _ = job_submit(tenant=tenant, task="demo.quick_task", params={"x": 1})
    Job.objects.filter(id=job.id).update(status=Job.Status.SUCCEEDED)
    # Given a dead copy of a job that already succeeded (published straight to the DLX)
    connection = pika.BlockingConnection(pika.URLParameters(users["operator"]))
    connection.channel().basic_publish(
        topology.DLX_NAME, job.routing_key, b'[[], {"x": 1}, {}]',
        pika.BasicProperties(headers={"id": str(job.id), "task": "demo.quick_task"},
                             content_type="application/json"))
    connection.close()
    wait_until(lambda: queue_depth(users["operator"], "quick.dead") == 1, 10, "quick.dead")

    replay = runbooks.run(runbooks.find("poison-messages.md", r"replay --lane slow --all"),
                          operator)
    replay_quick = runbooks.run(f"python platform/manage.py dlq replay --lane quick {job.id}",
                                operator)
    unconfirmed = runbooks.run("python platform/manage.py dlq purge --lane quick", operator)
    depth_before_purge = queue_depth(users["operator"], "quick.dead")
    purged = runbooks.run("python platform/manage.py dlq purge --lane quick --yes", operator)

    assert replay.returncode == 0 and "0 replayed" in replay.stdout  # slow.dead was empty
    assert replay_quick.returncode == 1
    assert f"skipped {job.id}: its job is succeeded" in replay_quick.stderr
    assert Job.objects.get(id=job.id).status == Job.Status.SUCCEEDED
    assert unconfirmed.returncode == 1 and "--yes" in unconfirmed.stderr
    assert depth_before_purge == 1
    assert purged.returncode == 0 and "purged 1 message(s) from quick.dead" in purged.stdout


def test_drifted_priority_queue_is_found_by_verify_and_recreated_without_loss(
        broker_url, management: Management, transactional_db, tmp_path: Path):
    book = "topology-drift.md"
    vhost = f"{settings.TEST_VHOST}-drift-{secrets.token_hex(3)}"
    management.create_vhost(vhost)
    url = with_vhost(broker_url, vhost)
    env = role_env(url)
    try:
        applied = subprocess.run([sys.executable, "-m", "routing", "apply", "--url", url],
                                 cwd=REPO, capture_output=True, text=True, timeout=60)
        assert applied.returncode == 0, applied.stderr
        # Given `slow` re-declared by an old release with x-max-priority 5, holding messages
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_delete("slow")
        channel.queue_declare("slow", durable=True, arguments={
            **topology.lane_queue_arguments("slow"), "x-max-priority": 5})
        channel.queue_bind("slow", topology.EXCHANGE_NAME, "slow.#")
        sent = {}
        for n in range(40):
            body = f"message-{n}".encode()
            sent[body] = n % 10
            channel.basic_publish(topology.EXCHANGE_NAME, f"slow.standard.t{n}", body,
                                  pika.BasicProperties(priority=n % 10, delivery_mode=2))
        connection.close()

        # Then applying the topology (make run, a deploy) refuses it (the runbook's symptom);
        # workers and publishers declare nothing, so they cannot notice (docs/security.md)
        refused = subprocess.run([sys.executable, "-m", "routing", "apply", "--url", url],
                                 cwd=REPO, capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0
        assert "inequivalent arg 'x-max-priority'" in refused.stdout

        # Confirm: verify names the difference and its fix
        verify = runbooks.run(runbooks.find(book, r"routing verify$", "Confirm"), env)
        assert verify.returncode == 1
        assert ("queue 'slow': argument x-max-priority is 5, declared 9 -- fix: "
                "python -m routing apply --recreate slow") in verify.stdout

        # Fix: the runbook's steps, in order
        drained = runbooks.run(runbooks.find(book, r"manage.py drain slow$", "Fix"), env)
        assert drained.returncode == 0, drained.stdout + drained.stderr
        assert "nothing to drain" in drained.stdout
        recreated = runbooks.run(runbooks.find(book, r"apply --recreate slow$", "Fix"), env)
        assert recreated.returncode == 0, recreated.stdout + recreated.stderr
        assert "it holds 40 message(s)" in recreated.stdout
        applied_again = runbooks.run(runbooks.find(book, r"routing apply$", "Fix"), env)
        assert applied_again.returncode == 0

        # Verify: in sync, and every message is there, now ordered on the full 0..9 scale
        verify = runbooks.run(runbooks.find(book, r"routing verify$", "Verify"), env)
        assert verify.returncode == 0, verify.stdout
        queue = management.queue(vhost, "slow")
        assert queue["arguments"]["x-max-priority"] == 9
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        received = []
        while True:
            method, properties, body = channel.basic_get("slow", auto_ack=True)
            if method is None:
                break
            received.append((properties.priority, body))
        connection.close()
        assert sorted(body for _, body in received) == sorted(sent)
        assert [p for p, _ in received] == sorted(sent.values(), reverse=True)
        assert all(sent[body] == priority for priority, body in received)

        # And the lane's worker starts now
        worker = Role("worker-slow-repaired", ["worker", "slow"], env, tmp_path)
        try:
            wait_until(lambda: (management.queue(vhost, "slow") or {}).get("consumers") == 1,
                       60, "the worker to consume slow", interval=0.5, roles=[worker])
        finally:
            worker.stop()
    finally:
        management.delete_vhost(vhost)


def test_drain_stops_a_lane_without_losing_its_in_flight_task(start_role, users):
    operator = role_env(users["operator"])
    # Given a slow worker (one process) running a task, and another job waiting behind it
    worker = start_role("worker", "slow", CELERY_BROKER_URL=users["worker-slow"],
                        SWITCHYARD_PLATFORM_BROKER_USERS=platform_users(users),
                        SWITCHYARD_SLOW_CONCURRENCY="1")
    tenant = Tenant.objects.create(name="drained", tier="standard")
    running, _ = job_submit(tenant=tenant, task="demo.slow_task", params={"seconds": 10})
    wait_until(lambda: Job.objects.get(id=running.id).status == Job.Status.STARTED, 60,
               "the first job to start", roles=[worker])
    waiting, _ = job_submit(tenant=tenant, task="demo.slow_task", params={"seconds": 0.1})
    # (the containers' health check pings the worker by name, with the lane's own login)
    health = [str(BIN / "healthcheck"), "worker", "slow"]
    assert subprocess.run(health, env=role_env(users["worker-slow"]), capture_output=True,
                          timeout=60).returncode == 0

    # When the lane is drained, as the runbooks say
    started = time.monotonic()
    drained = runbooks.run(runbooks.find("topology-drift.md", r"manage.py drain slow$"),
                           operator)

    # Then the running task finished, the worker stopped cleanly, the waiting job is untouched
    assert drained.returncode == 0, drained.stdout + drained.stderr
    assert "1 task(s) still running or reserved" in drained.stdout  # it did wait for one
    assert "drained slow: no task lost, 1 worker(s) stopped" in drained.stdout
    assert Job.objects.get(id=running.id).status == Job.Status.SUCCEEDED
    assert worker.proc.wait(30) == 0
    assert time.monotonic() - started < 60
    assert Job.objects.get(id=waiting.id).status == Job.Status.QUEUED
    assert queue_depth(users["operator"], "slow") == 1
    assert subprocess.run(health, env=role_env(users["worker-slow"]), capture_output=True,
                          timeout=60).returncode != 0

    # And a new worker picks the waiting job up: nothing was lost
    again = start_role("worker", "slow", name="worker-slow-again",
                       CELERY_BROKER_URL=users["worker-slow"],
                       SWITCHYARD_PLATFORM_BROKER_USERS=platform_users(users))
    wait_until(lambda: Job.objects.get(id=waiting.id).status == Job.Status.SUCCEEDED, 60,
               "the waiting job to run after the drain", roles=[again])

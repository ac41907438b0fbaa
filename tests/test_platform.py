"""The whole platform as `make run` starts it: every role, then what RabbitMQ 4.x will demand.

RabbitMQ 4.3 refuses transient non-exclusive queues, global QoS and
``x-queue-mode``. This machine runs 3.10, which accepts all three, so the test
reads what the running platform really declared and asks for, through the
management API, and fails on anything 4.3 would refuse.
"""
from __future__ import annotations

import base64
import socket
import urllib.error
import urllib.request

import pytest
from django.conf import settings

from jobs.models import Job
from jobs.options import SubmitOptions
from jobs.submission import job_submit
from routing import topology
from tenants.models import Tenant
from tests.processes import wait_until

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str, auth: str | None = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_all_roles_run_and_declare_only_what_rabbitmq_4_accepts(start_role, management):
    vhost = settings.TEST_VHOST
    web_port, flower_port = free_port(), free_port()
    flower_auth = "ops:s3cret-for-this-test"
    roles = [
        start_role("web", WEB_BIND=f"127.0.0.1:{web_port}", WEB_WORKERS="1"),
        start_role("worker", "slow", SWITCHYARD_SLOW_CONCURRENCY="2"),
        start_role("worker", "quick", SWITCHYARD_QUICK_CONCURRENCY="3"),
        start_role("beat", SWITCHYARD_VAR_DIR=str(settings.VAR_DIR)),
        start_role("dispatcher"),
        start_role("flower", FLOWER_PORT=str(flower_port), FLOWER_BASIC_AUTH=flower_auth),
    ]

    # The web answers, Flower answers only with its password.
    wait_until(lambda: http_status(f"http://127.0.0.1:{web_port}/healthz") == 200, 60,
               "web /healthz", roles=roles)
    flower = f"http://127.0.0.1:{flower_port}/"
    wait_until(lambda: http_status(flower) == 401, 60, "Flower asking for a login", roles=roles)
    assert http_status(flower, "ops:wrong") == 401
    assert http_status(flower, flower_auth) == 200
    # Its Prometheus metrics too (stock Flower serves them without the login)
    assert http_status(flower + "metrics") == 401
    assert http_status(flower + "metrics", flower_auth) == 200

    # A job runs end to end on each lane.
    tenant = Tenant.objects.create(name="smoke", tier="premium")
    quick, _ = job_submit(tenant=tenant, task="demo.quick_task", params={"x": "hi"})
    slow, _ = job_submit(tenant=tenant, task="demo.slow_task", params={"seconds": 0.1})
    later, _ = job_submit(tenant=tenant, task="demo.quick_task", params={"x": 2},
                          options=SubmitOptions(countdown=0.5))  # through the dispatcher
    wait_until(lambda: Job.objects.filter(id__in=[quick.id, slow.id, later.id],
                                          status=Job.Status.SUCCEEDED).count() == 3,
               60, "a job on each lane and a delayed one to succeed", roles=roles)
    assert Job.objects.get(id=quick.id).result == "hi"
    assert Job.objects.get(id=quick.id).worker.startswith("quick@")
    assert Job.objects.get(id=slow.id).worker.startswith("slow@")

    # Every queue any role declared is durable or exclusive, and none uses x-queue-mode.
    def all_declared():
        names = {q["name"] for q in management.queues(vhost)}
        has_events = any(n.startswith("celeryev.") for n in names)
        has_pidbox = any(n.endswith(f".{topology.CONTROL_EXCHANGE_NAME}") for n in names)
        return names if has_events and has_pidbox else None

    wait_until(all_declared, 30, "event and control queues to be declared", roles=roles)
    queues = management.queues(vhost)
    transient_shared = [q["name"] for q in queues if not q["durable"] and not q["exclusive"]]
    assert transient_shared == [], f"RabbitMQ 4.3 refuses these queues: {transient_shared}"
    assert [q["name"] for q in queues if "x-queue-mode" in q.get("arguments", {})] == []

    # Each lane's consumer has a per-consumer prefetch equal to its concurrency,
    # and no channel asks for global QoS.
    def lane_consumers():
        found = {c["queue"]["name"]: c for c in management.consumers(vhost)
                 if c["queue"]["name"] in ("slow", "quick")}
        return found if len(found) == 2 else None

    consumers = wait_until(lane_consumers, 30, "consumers on both lanes", roles=roles)
    assert consumers["slow"]["prefetch_count"] == 2
    assert consumers["quick"]["prefetch_count"] == 3
    channels = wait_until(lambda: management.channels(vhost), 30, "channel statistics")
    assert [c["name"] for c in channels if c.get("global_prefetch_count", 0)] == []

    for role in roles:
        role.assert_running()

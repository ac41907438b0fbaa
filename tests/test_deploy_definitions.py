"""The broker's users and permissions in ``deploy/rabbitmq/definitions.json``.

A broker that loads definitions at boot creates no ``guest``, so the file
carries one user per role with least privilege. Checked here: the committed
file holds no secret, passwords come only from the environment and are hashed
the way RabbitMQ checks them, every grant reaches exactly the queues its role
needs, and (on the real broker) the document imports and the grants hold.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from routing import access, definitions, topology
from routing.management import Management
from tests.deploy_support import imported_users, management_url, platform_users

REPO = Path(__file__).resolve().parents[1]
COMMITTED = json.loads((REPO / definitions.COMMITTED_PATH).read_text())
QUEUES = [spec.name for spec in topology.queue_specs()]


def readable(grant: access.Grant, names: list[str]) -> list[str]:
    return [n for n in names if grant.read and re.fullmatch(grant.read, n)]


def env_with_passwords(**overrides: str) -> dict[str, str]:
    env = {g.password_variable: f"a-real-password-for-{g.role}" for g in access.grants()}
    env.update(overrides)
    return env


def test_committed_definitions_have_every_role_and_no_secret():
    users = {u["name"]: u for u in COMMITTED["users"]}

    assert set(users) == {g.user for g in access.grants()}
    assert "guest" not in users
    for user in users.values():
        # Empty hash: RabbitMQ refuses password logins for this user until one is set.
        assert user["password_hash"] == ""
        assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
        assert "administrator" not in user["tags"]
    assert {p["user"] for p in COMMITTED["permissions"]} == set(users)


def test_each_worker_reads_only_its_own_lane_and_publishers_read_no_queue():
    for lane in topology.LANES:
        assert readable(access.grant(f"worker-{lane.name}"), QUEUES) == [lane.queue]
    for role in ("web", "dispatcher", "beat", "flower", "keda"):
        assert readable(access.grant(role), QUEUES) == [], role
    # Publishers write to the task exchange, never straight to the dead-letter exchange.
    for role in ("web", "dispatcher", "beat"):
        assert re.fullmatch(access.grant(role).write, topology.EXCHANGE_NAME)
        assert not re.fullmatch(access.grant(role).write, topology.DLX_NAME)
    assert access.grant("keda").tags == ("management",)
    assert (access.grant("keda").configure, access.grant("keda").write) == ("", "")


def test_passwords_are_refused_when_unset_placeholder_or_short():
    env = env_with_passwords(SWITCHYARD_RABBITMQ_PASSWORD_WEB="change-me",
                             SWITCHYARD_RABBITMQ_PASSWORD_BEAT="short")
    del env["SWITCHYARD_RABBITMQ_PASSWORD_KEDA"]

    with pytest.raises(access.MissingPasswords) as refused:
        access.passwords_from_env(env)

    message = str(refused.value)
    assert "SWITCHYARD_RABBITMQ_PASSWORD_WEB is still the placeholder" in message
    assert "SWITCHYARD_RABBITMQ_PASSWORD_BEAT is shorter than 16" in message
    assert "SWITCHYARD_RABBITMQ_PASSWORD_KEDA is not set" in message


def test_definitions_with_passwords_hash_them_as_rabbitmq_checks_them():
    env = {**os.environ, **env_with_passwords()}
    result = subprocess.run([sys.executable, "-m", "routing", "definitions",
                             "--passwords-from-env"], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env=env)

    assert result.returncode == 0, result.stderr
    rendered = json.loads(result.stdout)
    for user in rendered["users"]:
        raw = base64.b64decode(user["password_hash"])
        salt, digest = raw[:4], raw[4:]
        password = f"a-real-password-for-{user['name'].removeprefix('switchyard-')}"
        assert digest == hashlib.sha256(salt + password.encode()).digest()
        assert password not in result.stdout
    # Everything but the hashes is the committed document.
    for user in rendered["users"]:
        user["password_hash"] = ""
    assert rendered == COMMITTED


def test_definitions_with_a_missing_password_exit_1_naming_it():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_RABBITMQ_")}
    result = subprocess.run([sys.executable, "-m", "routing", "definitions",
                             "--passwords-from-env"], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env=env)

    assert result.returncode == 1
    assert result.stdout == ""
    assert "SWITCHYARD_RABBITMQ_PASSWORD_WORKER_SLOW is not set" in result.stderr


def refused(url: str, action) -> bool:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        action(connection.channel())
    except ChannelClosedByBroker as exc:
        return exc.reply_code == 403
    finally:
        if connection.is_open:
            connection.close()
    return False


def publish_to(exchange: str):
    """A confirmed publish, so a refusal is reported on this call, not a later one."""
    def act(channel) -> None:
        channel.confirm_delivery()
        channel.basic_publish(exchange, "quick.standard.demo.quick_task", b"{}")
    return act


@pytest.mark.rabbitmq
def test_definitions_import_and_each_user_can_only_do_its_job(topology_applied, broker_vhost,
                                                              management: Management):
    from kombu import Connection, Producer

    with imported_users(management, broker_vhost) as urls:
        # The web's publish, as the platform's Celery app does it: declare nothing
        # (the operator declared the topology), publish to tasks.
        with Connection(urls["web"], connect_timeout=5) as conn:
            Producer(conn).publish({"x": 1}, exchange=topology.EXCHANGE_NAME,
                                   routing_key="slow.standard.demo.slow_task", declare=[])
        # ... but it can neither consume nor purge a lane, nor publish to the DLX.
        for publisher in ("web", "dispatcher", "beat"):
            assert not refused(urls[publisher], publish_to(topology.EXCHANGE_NAME)), publisher
            assert refused(urls[publisher], publish_to(topology.DLX_NAME)), publisher
            assert refused(urls[publisher], lambda ch: ch.basic_get("quick")), publisher
        assert refused(urls["web"], lambda ch: ch.basic_get("slow"))
        assert refused(urls["web"], lambda ch: ch.queue_purge("slow"))
        assert refused(urls["web"], lambda ch: ch.exchange_declare(topology.DLX_NAME,
                                                                   passive=False,
                                                                   exchange_type="topic",
                                                                   durable=True))
        # The slow lane's worker consumes slow (the message above), not quick.
        connection = pika.BlockingConnection(pika.URLParameters(urls["worker-slow"]))
        method, _, body = connection.channel().basic_get("slow", auto_ack=True)
        connection.close()
        assert method is not None and json.loads(body) == {"x": 1}
        assert refused(urls["worker-slow"], lambda ch: ch.basic_get("quick"))
        assert refused(urls["worker-quick"], lambda ch: ch.basic_get("slow"))
        # KEDA reads queue depths over HTTP and no message over AMQP.
        keda = Management.from_url(management_url(urls["keda"], management))
        assert keda.get(f"queues/{Management.q(broker_vhost)}/slow")["name"] == "slow"
        assert refused(urls["keda"], lambda ch: ch.basic_get("slow"))
        # The operator can read everything (python -m routing verify, dlq).
        operator = Management.from_url(management_url(urls["operator"], management))
        assert {q["name"] for q in operator.queues(broker_vhost)} >= set(QUEUES)


@pytest.mark.workers
def test_roles_run_end_to_end_with_their_own_logins(start_role, broker_vhost, management):
    """The dispatcher publishes, a quick worker runs and Flower watches, each logged in as
    the definitions' user for its role, nothing more."""
    import base64
    import socket
    import urllib.request

    from jobs.models import Job
    from jobs.options import SubmitOptions
    from jobs.submission import job_submit
    from tenants.models import Tenant
    from tests.processes import wait_until

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    auth = "ops:flower-password-for-this-test"

    def flower(path: str) -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except OSError:
            return 0, b""

    with imported_users(management, broker_vhost) as urls:
        roles = [
            start_role("dispatcher", CELERY_BROKER_URL=urls["dispatcher"]),
            start_role("worker", "quick", CELERY_BROKER_URL=urls["worker-quick"],
                       SWITCHYARD_QUICK_CONCURRENCY="1",
                       SWITCHYARD_PLATFORM_BROKER_USERS=platform_users(urls)),
            start_role("flower", CELERY_BROKER_URL=urls["flower"], FLOWER_PORT=str(port),
                       FLOWER_BASIC_AUTH=auth),
        ]
        tenant = Tenant.objects.create(name="least", tier="premium")
        # A delayed job: only the dispatcher publishes it.
        job, _ = job_submit(tenant=tenant, task="demo.quick_task", params={"x": "ok"},
                            options=SubmitOptions(countdown=0.5))
        wait_until(lambda: Job.objects.get(id=job.id).status == Job.Status.SUCCEEDED, 60,
                   "the dispatched job to run on the quick worker", roles=roles)
        # Flower reaches the worker through control commands, and the broker's queues.
        workers = wait_until(lambda: (lambda b: b if b"quick@" in b else None)(
            flower("/api/workers?refresh=1")[1]), 60, "Flower to list the quick worker",
            interval=1, roles=roles)
        # ... and shows no role's broker password (the workers' configuration is in it)
        for role_url in urls.values():
            password = unquote(urlsplit(role_url).password or "")
            assert password.encode() not in workers, "a broker password is on Flower's page"
        assert b'"CELERY_BROKER_URL": "amqp://' in workers and b":********@" in workers
        assert flower("/broker")[0] == 200
        for role in roles:
            assert "ACCESS_REFUSED" not in role.log(), role.name

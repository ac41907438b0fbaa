"""Every role's broker grant on the real broker: each operation it does not need is
``ACCESS_REFUSED``, each one it needs works, end to end.

RabbitMQ matches a permission regex against a bare name, whatever the kind of resource:
``configure`` on ``tasks`` allows declaring (and deleting) a *queue* named ``tasks`` as
well as the exchange. The grants (``routing.access``) are imported from the generated
definitions into the run's own vhost with users of a per-test prefix
(``tests.deploy_support.imported_users``), deleted afterwards.

Probes that could change the topology if a grant allowed them are made harmless
without changing what RabbitMQ checks (it checks the permission first): lanes hold a
message and are deleted ``if_empty``, exchanges have a binding and are deleted
``if_unused``, bindings are made and removed with keys no task message carries. An
allowed probe then answers ``PRECONDITION_FAILED`` or succeeds; only ``403`` counts as
refused.
"""
from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pika
import pytest
from django.conf import settings
from kombu import Connection, Producer
from pika.exceptions import ChannelClosedByBroker

from routing import access, topology
from routing.management import Management
from tests.deploy_support import imported_users, management_url, platform_users
from tests.processes import REPO, role_env, wait_until

pytestmark = pytest.mark.rabbitmq

LANES = [lane.queue for lane in topology.LANES]
EXCHANGES = [exchange.name for exchange in topology.EXCHANGES]
#: Celery's default control exchange: nobody but the operator may use it either.
CELERY_DEFAULT_CONTROL = "celery.pidbox"
#: A queue bound to every exchange with a key no message carries, so that a delete
#: ``if_unused`` that a grant allowed would be refused for being in use.
ANCHOR = "probe.anchor"
NO_MESSAGE_KEY = "probe.never"
#: A name each role may configure, if any: its own private queue.
OWN_QUEUE = {
    **{f"worker-{lane.name}": f"{lane.name}@probe.{topology.CONTROL_EXCHANGE_NAME}"
       for lane in topology.LANES},
    "flower": f"{topology.EVENT_EXCHANGE_NAME}.probe",
}
TENANT = "tenant"
ROLES = [g.role for g in access.grants() if g.role != "operator"] + [TENANT]


# -- probes: each opens its own connection, so a refusal closes only its channel ---------


def outcome(url: str, action: Callable[[pika.adapters.blocking_connection.BlockingChannel],
                                       object]) -> str:
    """``refused`` (403), ``ok``, or the broker's other answer."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        action(connection.channel())
    except ChannelClosedByBroker as exc:
        return "refused" if exc.reply_code == 403 else f"{exc.reply_code} {exc.reply_text}"
    finally:
        if connection.is_open:
            connection.close()
    return "ok"


def declare_queue(name: str):
    return lambda ch: ch.queue_declare(name, exclusive=True, auto_delete=True)


def eavesdrop(ch) -> None:
    """The attack: a queue named like the exchange, bound with ``#``, read."""
    ch.queue_declare(topology.EXCHANGE_NAME, exclusive=True, auto_delete=True)
    ch.queue_bind(topology.EXCHANGE_NAME, topology.EXCHANGE_NAME, "#")
    ch.basic_get(topology.EXCHANGE_NAME)


def own_queue_bound_to_tasks(name: str):
    def act(ch) -> None:
        ch.queue_declare(name, exclusive=True, auto_delete=True)
        ch.queue_bind(name, topology.EXCHANGE_NAME, "#")
    return act


def bind_lane(lane: str):
    return lambda ch: ch.queue_bind(lane, topology.EXCHANGE_NAME, NO_MESSAGE_KEY)


def unbind_lane(lane: str):
    return lambda ch: ch.queue_unbind(lane, topology.EXCHANGE_NAME, NO_MESSAGE_KEY)


def delete_queue(name: str):
    return lambda ch: ch.queue_delete(name, if_empty=True)


def delete_exchange(name: str):
    return lambda ch: ch.exchange_delete(name, if_unused=True)


def declare_exchange(exchange) -> Callable:
    return lambda ch: ch.exchange_declare(exchange.name, exchange_type=exchange.type,
                                          durable=exchange.durable)


def publish(exchange: str, routing_key: str = NO_MESSAGE_KEY, body: bytes = b"{}"):
    """A confirmed publish, so a refusal is reported on this call."""
    def act(ch) -> None:
        ch.confirm_delivery()
        ch.basic_publish(exchange, routing_key, body)
    return act


def forbidden(role: str) -> dict[str, Callable]:
    """Every operation ``role`` must be refused, by name."""
    grant = access.grant(role) if role != TENANT else None
    own_lane = role.removeprefix("worker-") if role.startswith("worker-") else None
    probes: dict[str, Callable] = {"eavesdrop on tasks": eavesdrop}
    for name in EXCHANGES + [CELERY_DEFAULT_CONTROL]:
        probes[f"declare queue {name}"] = declare_queue(name)
    for exchange in topology.EXCHANGES:
        probes[f"declare exchange {exchange.name}"] = declare_exchange(exchange)
        probes[f"delete exchange {exchange.name}"] = delete_exchange(exchange.name)
    for spec in topology.queue_specs():
        probes[f"delete queue {spec.name}"] = delete_queue(spec.name)
        if spec.name != own_lane:
            probes[f"consume {spec.name}"] = lambda ch, q=spec.name: ch.basic_get(q)
            probes[f"purge {spec.name}"] = lambda ch, q=spec.name: ch.queue_purge(q)
    for lane in LANES:
        probes[f"bind {lane} to tasks"] = bind_lane(lane)
        probes[f"unbind {lane} from tasks"] = unbind_lane(lane)
    if role in OWN_QUEUE:
        probes["bind its own queue to tasks"] = own_queue_bound_to_tasks(OWN_QUEUE[role])
    if own_lane is None:  # a worker dead-letters what it cannot decode
        probes[f"publish to {topology.DLX_NAME}"] = publish(topology.DLX_NAME)
    if role != "flower":
        probes[f"broadcast to {topology.CONTROL_EXCHANGE_NAME}"] = publish(
            topology.CONTROL_EXCHANGE_NAME)
    probes[f"broadcast to {CELERY_DEFAULT_CONTROL}"] = publish(CELERY_DEFAULT_CONTROL)
    if not role.startswith("worker-"):
        probes[f"reply on {topology.REPLY_EXCHANGE_NAME}"] = publish(
            topology.REPLY_EXCHANGE_NAME)
        if role not in ("web", "dispatcher", "beat", TENANT):
            probes[f"publish to {topology.EXCHANGE_NAME}"] = publish(
                topology.EXCHANGE_NAME, "quick.standard.demo.quick_task")
    if grant is None or not re.fullmatch(grant.write, topology.EVENT_EXCHANGE_NAME):
        probes[f"send events to {topology.EVENT_EXCHANGE_NAME}"] = publish(
            topology.EVENT_EXCHANGE_NAME, "worker.heartbeat")
    return probes


CASES = [(role, what) for role in ROLES for what in forbidden(role)]


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def role_urls(topology_applied, broker_vhost, management: Management) -> Iterator[dict[str, str]]:
    """``{role: AMQP URL}`` for every role of the definitions and a tenant's user, and
    an anchor queue bound to every exchange; removed afterwards."""
    guest = pika.BlockingConnection(pika.URLParameters(topology_applied))
    channel = guest.channel()
    channel.queue_declare(ANCHOR, durable=True)
    for name in EXCHANGES:
        channel.queue_bind(ANCHOR, name, NO_MESSAGE_KEY)
    tenant_user = f"{settings.SWITCHYARD_BROKER_USER_PREFIX}probe-{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(18)
    management.put_user(tenant_user, password)
    grant = access.TenantGrant(user=tenant_user, tier="standard")
    management.set_permissions(broker_vhost, tenant_user, configure=grant.configure,
                               write=grant.write, read=grant.read)
    management.set_topic_permissions(broker_vhost, tenant_user, exchange=grant.topic_exchange,
                                     write=grant.topic_write, read=grant.topic_read)
    try:
        with imported_users(management, broker_vhost) as urls:
            yield {**urls, TENANT: f"amqp://{quote(tenant_user, safe='')}:{password}"
                                   f"@127.0.0.1:5672/{quote(broker_vhost, safe='')}"}
    finally:
        management.delete_user(tenant_user)
        channel.queue_delete(ANCHOR)
        guest.close()


@pytest.fixture
def lanes_hold_a_message(lanes_empty: str) -> None:
    """One message in every queue of the topology (purged after the test)."""
    with Connection(lanes_empty) as conn:
        producer = Producer(conn.default_channel)
        for spec in topology.queue_specs():
            producer.publish({"sentinel": spec.name}, exchange="", routing_key=spec.name,
                             declare=[])


# -- the rule, on the grants themselves ---------------------------------------------------


def test_no_role_may_configure_a_name_it_may_read_but_its_own_private_queues():
    names = EXCHANGES + [spec.name for spec in topology.queue_specs()] + [
        CELERY_DEFAULT_CONTROL, f"reply.{CELERY_DEFAULT_CONTROL}"]
    for grant in access.grants():
        if grant.role == "operator":  # declares the topology: everything on its vhost
            continue
        for name in names:
            assert not (grant.configure and re.fullmatch(grant.configure, name)), (
                f"{grant.role} may declare or delete {name!r}")
        for name in names:
            assert not (grant.write and grant.read and re.fullmatch(grant.write, name)
                        and re.fullmatch(grant.read, name)), (
                f"{grant.role} may both bind to and from {name!r}")
    # Only Flower (and the operator) may broadcast control commands.
    broadcasters = {g.role for g in access.grants()
                    if g.write and re.fullmatch(g.write, topology.CONTROL_EXCHANGE_NAME)}
    assert broadcasters == {"flower", "operator"}


# -- refused on the broker ----------------------------------------------------------------


@pytest.mark.parametrize(("role", "what"), CASES, ids=[f"{r}: {w}" for r, w in CASES])
def test_each_role_is_refused_what_it_does_not_need(role, what, role_urls,
                                                    lanes_hold_a_message, management):
    assert outcome(role_urls[role], forbidden(role)[what]) == "refused"
    # Whatever happened, the topology is whole (a delete would have been refused
    # if_empty / if_unused; a binding would carry a key no message has).
    assert management.queue(settings.TEST_VHOST, "slow") is not None
    assert management.exchange(settings.TEST_VHOST, topology.EXCHANGE_NAME) is not None


def test_publishers_and_tenants_may_publish_to_tasks(
        role_urls, lanes_empty, management):
    for role in ("web", "dispatcher", "beat", TENANT):
        assert outcome(role_urls[role], publish(
            topology.EXCHANGE_NAME, "quick.standard.demo.quick_task",
            json.dumps({"from": role}).encode())) == "ok", role
    for role in ("web", "dispatcher", "beat"):
        assert outcome(role_urls[role], publish(topology.EVENT_EXCHANGE_NAME,
                                                "task.sent")) == "ok", role
    wait_until(lambda: management.queue(settings.TEST_VHOST, "quick")["messages"] == 4, 10,
               "the four messages in quick")


def test_keda_reads_depths_and_no_message(role_urls, broker_vhost, management):
    keda = Management.from_url(management_url(role_urls["keda"], management))
    assert {q["name"] for q in keda.queues(broker_vhost)} >= set(LANES)
    assert outcome(role_urls["keda"], lambda ch: ch.basic_get("slow")) == "refused"


# -- needed on the broker, end to end -----------------------------------------------------


def celery_ping(url: str) -> set[str]:
    """``celery -A switchyard inspect ping`` logged in with ``url``, as an operator or
    Flower sends it: the names of the workers that answered."""
    env = role_env(url, PYTHONPATH=f"{REPO / 'platform'}:{REPO}")
    result = subprocess.run([sys.executable, "-m", "celery", "-A", "switchyard", "inspect",
                             "ping", "--timeout", "3", "--json"], cwd=REPO / "platform",
                            env=env, capture_output=True, text=True, timeout=60)
    if "ACCESS_REFUSED" in result.stdout + result.stderr:
        raise RuntimeError(f"ACCESS_REFUSED: {result.stderr[-500:]}")
    if result.returncode != 0:
        return set()  # no answer yet
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    return set(json.loads(lines[-1])) if lines else set()


@pytest.mark.workers
def test_each_role_does_its_job_with_its_own_login(role_urls, start_role, monkeypatch,
                                                   management):
    """Publishers' jobs run on their lane's worker; the workers answer control commands
    and send events to Flower's login; a worker may not send control commands itself."""
    from amqp.exceptions import AccessRefused

    from jobs import submission
    from jobs.models import Job
    from jobs.publishing import publish_job
    from switchyard.celery import app
    from tenants.models import Tenant

    workers = [start_role("worker", lane.name, CELERY_BROKER_URL=role_urls[f"worker-{lane.name}"],
                          SWITCHYARD_SLOW_CONCURRENCY="1", SWITCHYARD_QUICK_CONCURRENCY="1",
                          SWITCHYARD_PLATFORM_BROKER_USERS=platform_users(role_urls))
               for lane in topology.LANES]
    # Given jobs recorded but not yet published (the test publishes them itself)
    monkeypatch.setattr(submission, "publish_after_commit", lambda job: None)
    tenant = Tenant.objects.create(name="grants", tier="premium")
    jobs = {}
    for role in ("web", "dispatcher", "beat"):
        for task in ("demo.quick_task", "demo.slow_task"):
            params = {"x": role} if task == "demo.quick_task" else {"seconds": 0.01}
            job, _ = submission.job_submit(tenant=tenant, task=task, params=params)
            jobs[(role, task)] = job
    # When each publisher publishes them through the platform's Celery app, as its login
    for (role, _), job in jobs.items():
        with Connection(role_urls[role], transport_options={"confirm_publish": True}) as conn:
            publish_job(job, producer=Producer(conn.default_channel))
    # Then each runs on its lane's worker
    wait_until(lambda: Job.objects.filter(id__in=[j.id for j in jobs.values()],
                                          status=Job.Status.SUCCEEDED).count() == len(jobs),
               90, "every publisher's job to run", roles=workers)
    for (role, task), job in jobs.items():
        lane = "quick" if task == "demo.quick_task" else "slow"
        assert Job.objects.get(id=job.id).worker.startswith(f"{lane}@"), (role, task)

    # Flower's login: control commands reach every worker and come back.
    def pong():
        answered = celery_ping(role_urls["flower"])
        return answered if {n.split("@")[0] for n in answered} >= set(LANES) else None

    wait_until(pong, 60, "both lanes' workers to answer Flower's ping", interval=1,
               roles=workers)
    # ... and it reads their events through its own queue.
    seen: list[str] = []
    with Connection(role_urls["flower"]) as conn:
        def on_event(event) -> None:
            seen.append(event["type"])
            receiver.should_stop = True

        receiver = app.events.Receiver(conn, handlers={"*": on_event})
        receiver.capture(timeout=15, wakeup=False)  # raises TimeoutError on no event
    assert seen[0].startswith("worker-"), seen
    # A worker's login may not send control commands, nor read the events.
    for lane in topology.LANES:
        url = role_urls[f"worker-{lane.name}"]
        with pytest.raises(RuntimeError, match="ACCESS_REFUSED"):
            celery_ping(url)
        with Connection(url) as conn, pytest.raises(AccessRefused):
            app.events.Receiver(conn, handlers={}).capture(limit=1, timeout=2)
    for worker in workers:
        worker.assert_running()
        assert "ACCESS_REFUSED" not in worker.log(), worker.name

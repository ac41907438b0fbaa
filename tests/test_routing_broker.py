"""``python -m routing apply | verify | apply --recreate`` against the real RabbitMQ.

Each test gets a vhost of its own (created and deleted here), because these
tests declare queues wrongly on purpose: a broken ``slow`` must never leak
into another test. The CLI runs as a real process, as an operator runs it.
"""
from __future__ import annotations

import itertools
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from django.conf import settings
from pika.adapters.blocking_connection import BlockingChannel

from routing import definitions, priorities, topology
from routing.management import Management, vhost_of, with_vhost

pytestmark = pytest.mark.rabbitmq

REPO = Path(__file__).resolve().parents[1]
LANE_ARGUMENTS = topology.lane_queue_arguments("slow")
WITHOUT_PRIORITY = {k: v for k, v in LANE_ARGUMENTS.items() if k != "x-max-priority"}


def routing(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "routing", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )


def fix_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The difference lines of ``verify``'s output (each carries its fix)."""
    return [line for line in result.stdout.splitlines() if " -- fix: " in line]


@pytest.fixture
def url(broker_url: str, management: Management) -> Iterator[str]:
    """AMQP URL of an empty vhost of this test's own."""
    name = f"{settings.TEST_VHOST}-{secrets.token_hex(4)}"
    management.create_vhost(name)
    try:
        yield with_vhost(broker_url, name)
    finally:
        management.delete_vhost(name)


@pytest.fixture
def channel(url: str) -> Iterator[BlockingChannel]:
    """A channel on the test's vhost, publishing with confirms (publish returns when stored)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    ch = connection.channel()
    ch.confirm_delivery()
    yield ch
    if connection.is_open:
        connection.close()


def applied(url: str) -> None:
    result = routing("apply", "--url", url)
    assert result.returncode == 0, result.stdout + result.stderr


def ready(channel: BlockingChannel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def drain(channel: BlockingChannel, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
    """Every message of ``queue``, in the order the broker delivers them."""
    messages = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return messages
        messages.append((properties, body))


def publish(channel: BlockingChannel, key: str, body: bytes, priority: int = 0,
            **props: object) -> None:
    channel.basic_publish(topology.EXCHANGE_NAME, key, body, mandatory=True,
                          properties=pika.BasicProperties(priority=priority, delivery_mode=2,
                                                          **props))


def test_apply_then_verify_reports_in_sync(url: str) -> None:
    applied(url)

    result = routing("verify", "--url", url)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"OK: vhost '{vhost_of(url)}' matches the topology")


def test_apply_twice_changes_nothing_and_keeps_messages(
    url: str, channel: BlockingChannel, management: Management
) -> None:
    # Given an applied topology holding messages
    applied(url)
    for n in range(3):
        publish(channel, f"slow.standard.job{n}", b"payload")
    # When apply runs again
    result = routing("apply", "--url", url)
    # Then it succeeds, declares nothing new and the messages are still there
    assert result.returncode == 0, result.stdout + result.stderr
    names = {q["name"] for q in management.queues(vhost_of(url))}
    assert names == {spec.name for spec in topology.queue_specs()}
    assert ready(channel, "slow") == 3


@pytest.mark.parametrize(("key", "lane"), [("slow.premium.x.y", "slow"),
                                            ("quick.standard.z", "quick")])
def test_a_task_key_reaches_only_its_lane(url: str, channel: BlockingChannel, key: str,
                                          lane: str) -> None:
    applied(url)

    publish(channel, key, key.encode())

    for spec in topology.queue_specs():
        expected = [key.encode()] if spec.name == lane else []
        assert [body for _, body in drain(channel, spec.name)] == expected, spec.name


def test_the_broker_routes_every_lane_and_tier_as_queues_for_key_says(
    url: str, channel: BlockingChannel
) -> None:
    # The pure routing tests rely on queues_for_key; this pins it to the real exchange.
    applied(url)
    names = [spec.name for spec in topology.queue_specs()]
    for lane, tier, task in itertools.product(topology.LANES, priorities.TIERS,
                                              ("t", "media.thumbnail")):
        key = topology.routing_key(lane.name, tier.name, task)
        publish(channel, key, key.encode())
        reached = [name for name in names if drain(channel, name)]
        assert reached == topology.queues_for_key(key), key


def test_a_rejected_message_lands_in_the_lane_dead_queue(
    url: str, channel: BlockingChannel
) -> None:
    # Given a message waiting in slow
    applied(url)
    publish(channel, "slow.premium.media.thumbnail", b"doomed", priority=7)
    # When a worker rejects it without requeueing
    method, _, _ = channel.basic_get("slow", auto_ack=False)
    channel.basic_reject(method.delivery_tag, requeue=False)
    # Then it is dead-lettered to slow.dead (dead-lettering is asynchronous) and nowhere else
    deadline = time.monotonic() + 5
    while not (dead := drain(channel, "slow.dead")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [body for _, body in dead] == [b"doomed"]
    assert dead[0][0].headers["x-death"][0]["queue"] == "slow"
    assert ready(channel, "quick.dead") == 0 and ready(channel, "slow") == 0


def test_apply_and_verify_catch_a_lane_declared_without_max_priority(
    url: str, channel: BlockingChannel
) -> None:
    # Given slow declared by hand without x-max-priority (as an old deploy did)
    channel.queue_declare("slow", durable=True, arguments=WITHOUT_PRIORITY)
    # When apply runs
    applied_result = routing("apply", "--url", url)
    # Then it refuses slow, points to --recreate, and still declares everything else
    assert applied_result.returncode == 1
    assert "PRECONDITION_FAILED" in applied_result.stdout
    assert "python -m routing apply --recreate slow" in applied_result.stderr
    # When verify runs
    result = routing("verify", "--url", url)
    # Then the one difference is slow's missing x-max-priority, with its fix
    assert result.returncode == 1
    [line] = fix_lines(result)
    assert "queue 'slow'" in line and "x-max-priority" in line
    assert "python -m routing apply --recreate slow" in line


def test_verify_reports_a_missing_binding_and_queue_and_apply_fixes_them(
    url: str, channel: BlockingChannel
) -> None:
    # Given quick no longer bound, and quick.dead deleted
    applied(url)
    channel.queue_unbind("quick", topology.EXCHANGE_NAME, topology.binding_key("quick"))
    channel.queue_delete("quick.dead")
    # When verify runs
    result = routing("verify", "--url", url)
    # Then both are listed, each fixed by apply
    assert result.returncode == 1
    lines = fix_lines(result)
    assert len(lines) == 3, result.stdout  # the queue, its binding, quick's binding
    assert any("queue 'quick.dead': missing" in line for line in lines)
    assert any("binding tasks --[quick.#]--> quick: missing" in line for line in lines)
    assert all(line.split(" -- fix: ")[1].startswith("python -m routing apply --url")
               for line in lines)
    # And running the fix makes verify pass
    applied(url)
    assert routing("verify", "--url", url).returncode == 0


def test_verify_reports_an_extra_argument_and_a_foreign_queue_on_tasks(
    url: str, channel: BlockingChannel
) -> None:
    # Given slow.dead with an argument the topology does not declare, and a foreign
    # queue bound to tasks that copies every task message
    channel.queue_declare("slow.dead", durable=True,
                          arguments={**topology.dead_queue_arguments("slow"),
                                     "x-max-length": 1000})
    applied_result = routing("apply", "--url", url)
    channel.queue_declare("audit", durable=True)
    channel.queue_bind("audit", topology.EXCHANGE_NAME, "#")
    # When verify runs
    result = routing("verify", "--url", url)
    # Then both are reported with their fixes
    assert applied_result.returncode == 1
    assert result.returncode == 1
    lines = fix_lines(result)
    assert len(lines) == 2, result.stdout
    assert "queue 'slow.dead': argument x-max-length=1000" in lines[0]
    assert "python -m routing apply --recreate slow.dead" in lines[0]
    assert "binding tasks --[#]--> audit" in lines[1] and "curl" in lines[1]


def test_recreate_fixes_the_arguments_and_loses_no_message(
    url: str, channel: BlockingChannel, management: Management
) -> None:
    # Given slow declared without x-max-priority, holding 50 messages of mixed priorities
    channel.queue_declare("slow", durable=True, arguments=WITHOUT_PRIORITY)
    assert routing("apply", "--url", url).returncode == 1  # the rest declared, slow bound
    sent = {}
    for n in range(50):
        body = f"task-{n}".encode()
        sent[body] = n % 10
        publish(channel, f"slow.premium.media.t{n}", body, priority=n % 10,
                headers={"tenant": f"t{n}", "seq": n}, correlation_id=f"id-{n}",
                content_type="application/json")
    assert ready(channel, "slow") == 50
    # When the operator re-creates it
    result = routing("apply", "--recreate", "slow", "--url", url)
    # Then it reports the move, and the queue holds every message under the right arguments
    assert result.returncode == 0, result.stdout + result.stderr
    assert "moved 50 message(s) slow -> slow.recreate" in result.stdout
    assert "it holds 50 message(s)" in result.stdout
    assert routing("verify", "--url", url).returncode == 0
    assert management.queue(vhost_of(url), "slow.recreate") is None
    assert management.queue(vhost_of(url), "slow")["arguments"] == LANE_ARGUMENTS
    # And consuming gives every message, higher priorities first, properties intact
    received = drain(channel, "slow")
    assert sorted(body for _, body in received) == sorted(sent)
    priorities_seen = [props.priority for props, _ in received]
    assert priorities_seen == sorted(priorities_seen, reverse=True)
    for props, body in received:
        n = int(body.decode().split("-")[1])
        assert props.priority == sent[body]
        assert props.headers == {"tenant": f"t{n}", "seq": n}
        assert props.correlation_id == f"id-{n}"
        assert props.content_type == "application/json" and props.delivery_mode == 2


def test_recreate_refuses_a_queue_with_a_consumer(
    url: str, channel: BlockingChannel, management: Management
) -> None:
    # Given a wrongly declared slow with 5 messages and a worker consuming it
    channel.queue_declare("slow", durable=True, arguments=WITHOUT_PRIORITY)
    for n in range(5):
        channel.basic_publish("", "slow", f"m{n}".encode())
    worker = pika.BlockingConnection(pika.URLParameters(url))
    worker_channel = worker.channel()
    worker_channel.basic_qos(prefetch_count=1)
    worker_channel.basic_consume("slow", lambda *_: None)
    try:
        # When the operator tries to re-create it
        result = routing("apply", "--recreate", "slow", "--url", url)
    finally:
        worker.close()  # its unacked message goes back to slow
    # Then it is refused with what to do, and nothing was touched
    assert result.returncode == 1
    assert "has 1 consumer(s)" in result.stderr and "Stop" in result.stderr
    assert "'slow'" in result.stderr
    assert management.queue(vhost_of(url), "slow.recreate") is None
    assert management.queue(vhost_of(url), "slow")["arguments"] == WITHOUT_PRIORITY
    assert ready(channel, "slow") == 5


def test_the_generated_definitions_import_into_a_broker_that_then_verifies(
    url: str, management: Management
) -> None:
    # Given the definitions generated for this test's vhost (without their users: users are
    # node-wide, and tests/test_deploy_definitions.py imports them under names of its own)
    defs = json.loads(definitions.render(vhost_of(url)))
    defs["users"], defs["permissions"] = [], []
    # When RabbitMQ imports them (what load_definitions does at boot)
    management.request("POST", "definitions", defs)
    # Then the broker matches the topology without any apply
    result = routing("verify", "--url", url)
    assert result.returncode == 0, result.stdout + result.stderr

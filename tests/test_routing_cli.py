"""``python -m routing`` without a broker: show, definitions, help, refusals, unreachable.

Every command runs as a real process from the repository root, as an operator
or a deploy script would run it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from routing import definitions, priorities, table, topology

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / definitions.COMMITTED_PATH
UNREACHABLE_URL = "amqp://guest:guest@127.0.0.1:1//"


def routing(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "routing", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
    )


def test_show_lists_every_queue_binding_and_tier_band() -> None:
    result = routing("show")

    assert result.returncode == 0, result.stderr
    for spec in topology.queue_specs():
        line = next(row for row in result.stdout.splitlines() if row.startswith(spec.name + " "))
        assert spec.exchange in line and spec.binding_key in line
        for key, value in spec.arguments.items():
            assert f"{key}={value}" in line
    for lane in topology.LANES:
        assert f"soft {lane.soft_time_limit}s / hard {lane.time_limit}s" in result.stdout
    for tier in priorities.TIERS:
        assert f"{tier.name}" in result.stdout and f"{tier.low}..{tier.high}" in result.stdout
    assert "HIGHER priority number is delivered first" in result.stdout


def test_show_markdown_is_the_markdown_function_and_a_table_per_queue() -> None:
    result = routing("show", "--markdown")

    assert result.returncode == 0, result.stderr
    assert result.stdout == table.markdown()
    for spec in topology.queue_specs():
        assert f"| `{spec.name}` | `{spec.exchange}` | `{spec.binding_key}` |" in result.stdout


def test_definitions_file_is_in_sync_with_the_topology() -> None:
    assert COMMITTED.exists() and COMMITTED.read_text() == definitions.render(), (
        f"{definitions.COMMITTED_PATH} is out of date with routing/topology.py; regenerate it: "
        f"python -m routing definitions > {definitions.COMMITTED_PATH}"
    )


def test_definitions_command_prints_the_committed_file() -> None:
    result = routing("definitions")

    assert result.returncode == 0, result.stderr
    assert result.stdout == COMMITTED.read_text()


def test_definitions_are_valid_on_rabbitmq_4() -> None:
    defs = json.loads(definitions.render())

    assert "x-queue-mode" not in json.dumps(defs)  # refused by RabbitMQ 4.3
    assert {q["name"] for q in defs["queues"]} == {s.name for s in topology.queue_specs()}
    for queue in defs["queues"]:
        # Durable and classic stated: a 4.x node may default new queues to quorum.
        assert queue["durable"] is True and queue["auto_delete"] is False
        assert queue["arguments"]["x-queue-type"] == "classic"
    lanes = [q for q in defs["queues"] if not q["name"].endswith(".dead")]
    for queue in lanes:
        assert queue["arguments"]["x-max-priority"] == priorities.MAX_PRIORITY
        assert queue["arguments"]["x-dead-letter-exchange"] == topology.DLX_NAME
    assert {(b["source"], b["destination"], b["routing_key"]) for b in defs["bindings"]} == {
        (s.exchange, s.name, s.binding_key) for s in topology.queue_specs()
    }


def test_definitions_for_another_vhost_put_every_object_in_it() -> None:
    defs = json.loads(routing("definitions", "--vhost", "staging").stdout)

    assert defs["vhosts"] == [{"name": "staging"}]
    for kind in ("exchanges", "queues", "bindings"):
        assert {item["vhost"] for item in defs[kind]} == {"staging"}


@pytest.mark.parametrize("command", [[], ["show"], ["apply"], ["verify"], ["definitions"]])
def test_help_of_every_command(command: list[str]) -> None:
    result = routing(*command, "--help")

    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: python -m routing {' '.join(command)}".rstrip())
    if not command:
        for name in ("show", "apply", "verify", "definitions"):
            assert name in result.stdout


def test_routing_runs_where_django_cannot_be_imported() -> None:
    # Given an interpreter in which `import django` fails
    code = (
        "import sys; sys.modules['django'] = None\n"
        "from routing.cli import main\n"
        "sys.exit(main(['show']))\n"
    )
    # When routing is imported and run there
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    # Then it works: routing is pure Python + kombu + pika
    assert result.returncode == 0, result.stderr
    assert "slow.dead" in result.stdout


def test_recreate_refuses_a_queue_outside_the_topology() -> None:
    result = routing("apply", "--recreate", "payments", "--url", UNREACHABLE_URL)

    # Refused before any connection is tried (exit 1, not 2), naming the valid queues.
    assert result.returncode == 1
    assert "'payments' is not part of the topology" in result.stderr
    assert "slow, slow.dead, quick, quick.dead" in result.stderr


def test_apply_against_an_unreachable_broker_exits_2_without_traceback() -> None:
    result = routing("apply", "--url", UNREACHABLE_URL)

    assert result.returncode == 2
    assert "cannot connect to RabbitMQ" in result.stderr
    assert "127.0.0.1:1" in result.stderr and "Connection refused" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "guest:guest" not in result.stderr  # the password is masked


def test_verify_with_an_unreachable_management_api_exits_2() -> None:
    result = routing("verify", env={"RABBITMQ_MANAGEMENT_URL": "http://guest:guest@127.0.0.1:1"})

    assert result.returncode == 2
    assert "management API" in result.stderr and "unreachable" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.rabbitmq
def test_ping_answers_ok_on_the_runs_broker(broker_url):
    result = subprocess.run([sys.executable, "-m", "routing", "ping", "--url", broker_url],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: RabbitMQ answers")


def test_ping_says_how_to_start_rabbitmq_when_it_is_down():
    result = subprocess.run(
        [sys.executable, "-m", "routing", "ping", "--url", "amqp://guest:guest@127.0.0.1:1//"],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "rabbitmq-server -detached" in result.stderr
    assert "Traceback" not in result.stderr

"""``python -m routing verify``: find every difference between a broker and the topology.

Reads the live broker through the management HTTP API, because AMQP cannot
read a queue's arguments back (a passive declare ignores them), and lists
each difference with the command that removes it:

* a missing exchange, queue or binding: ``python -m routing apply``;
* a queue with other arguments or not durable: ``apply --recreate <queue>``
  (RabbitMQ never changes an existing queue's arguments);
* an exchange of another type or durability: delete it, then ``apply``;
* any other binding on ``tasks``/``tasks.dlx`` (a foreign queue, or a lane
  queue bound with a second key) receives copies of task messages: it is
  listed with the management API call that removes it.
"""
from __future__ import annotations

import shlex
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from . import topology
from .commands import routing_command
from .management import Management
from .recreate import temporary_queue_name


@dataclass(frozen=True)
class Difference:
    """One way the broker differs from the topology, and the command that fixes it."""

    subject: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.problem} -- fix: {self.fix}"


def _show(value: object) -> str:
    return "none" if value is None else repr(value)


def _exchange_differences(mgmt: Management, vhost: str, url: str | None) -> Iterator[Difference]:
    apply = routing_command("apply", url=url)
    for exchange in topology.EXCHANGES:
        subject = f"exchange {exchange.name!r}"
        live = mgmt.exchange(vhost, exchange.name)
        if live is None:
            yield Difference(subject, "missing", apply)
            continue
        # An exchange's type and flags are fixed at creation: delete, then apply.
        delete = (
            f"curl -u {mgmt.user} -X DELETE {mgmt.base}/api/exchanges/"
            f"{Management.q(vhost)}/{Management.q(exchange.name)} && {apply}"
        )
        expected = {
            "type": exchange.type,
            "durable": exchange.durable,
            "auto_delete": exchange.auto_delete,
            "internal": False,
        }
        for key, want in expected.items():
            if live.get(key) != want:
                yield Difference(
                    subject, f"{key} is {_show(live.get(key))}, declared {want!r}", delete
                )


def _queue_differences(
    queue: dict[str, Any], spec: topology.QueueSpec, url: str | None
) -> Iterator[Difference]:
    subject = f"queue {spec.name!r}"
    recreate = routing_command("apply", "--recreate", spec.name, url=url)
    declared = spec.to_kombu()
    for key, want in (
        ("durable", declared.durable),
        ("auto_delete", declared.auto_delete),
        ("exclusive", declared.exclusive),
    ):
        if queue.get(key) != want:
            yield Difference(subject, f"{key} is {_show(queue.get(key))}, declared {want!r}",
                             recreate)
    live = queue.get("arguments") or {}
    for key in sorted(set(spec.arguments) | set(live)):
        if key not in live:
            problem = f"argument {key} is missing (declared {spec.arguments[key]!r})"
        elif key not in spec.arguments:
            problem = f"argument {key}={live[key]!r} is not declared by the topology"
        elif live[key] != spec.arguments[key]:
            problem = f"argument {key} is {live[key]!r}, declared {spec.arguments[key]!r}"
        else:
            continue
        yield Difference(subject, problem, recreate)


def _binding_key(binding: dict[str, Any]) -> tuple[str, str, str, str]:
    return (
        binding["source"],
        binding.get("destination_type", "queue"),
        binding["destination"],
        binding["routing_key"],
    )


def _unbind_command(mgmt: Management, vhost: str, binding: dict[str, Any]) -> str:
    kind = "q" if binding.get("destination_type", "queue") == "queue" else "e"
    props = binding.get("properties_key") or urllib.parse.quote(binding["routing_key"], safe="")
    path = "/".join(
        (Management.q(vhost), "e", Management.q(binding["source"]), kind,
         Management.q(binding["destination"]), Management.q(props))
    )
    # -u without a password: curl asks for it, so none ends up in shell history.
    return f"curl -u {mgmt.user} -X DELETE {mgmt.base}/api/bindings/{path}"


def _fix_missing(spec: topology.QueueSpec, queues: dict[str, Any], url: str | None) -> str:
    """``apply`` creates what is missing; but after an interrupted recreate, only
    running it again also empties and removes the temporary queue, which would
    otherwise stay bound next to the queue and get a copy of every message."""
    if temporary_queue_name(spec.name) in queues:
        return routing_command("apply", "--recreate", spec.name, url=url)
    return routing_command("apply", url=url)


def _binding_differences(
    bindings: list[dict[str, Any]], queues: dict[str, Any], mgmt: Management, vhost: str,
    url: str | None,
) -> Iterator[Difference]:
    specs = topology.queue_specs()
    expected = {(s.exchange, "queue", s.name, s.binding_key): s for s in specs}
    live = {_binding_key(b): b for b in bindings}
    for key, spec in expected.items():
        if key not in live:
            yield Difference(
                f"binding {spec.exchange} --[{spec.binding_key}]--> {spec.name}", "missing",
                _fix_missing(spec, queues, url),
            )
    leftovers = {temporary_queue_name(s.name): s.name for s in specs}
    ours = {topology.EXCHANGE_NAME, topology.DLX_NAME}
    for key, binding in sorted(live.items()):
        source, _, destination, routing_key = key
        if source not in ours or key in expected:
            continue
        if destination in leftovers:
            continue  # reported with its queue, see differences()
        yield Difference(
            f"binding {source} --[{routing_key}]--> {destination}",
            "not in the topology: it receives copies of task messages",
            _unbind_command(mgmt, vhost, binding),
        )


def differences(mgmt: Management, vhost: str, url: str | None = None) -> list[Difference]:
    """Every difference between ``vhost`` on the broker and the topology (empty: in sync).

    ``url`` is only used to spell fix commands. Raises ``ManagementError``
    when the management API cannot be asked.
    """
    if mgmt.get_or_none(f"vhosts/{Management.q(vhost)}") is None:
        # AMQP cannot create a vhost, so apply alone cannot fix this one.
        setup = (
            f"rabbitmqctl add_vhost {shlex.quote(vhost)} && rabbitmqctl set_permissions -p "
            f"{shlex.quote(vhost)} {shlex.quote(mgmt.user)} '.*' '.*' '.*'"
        )
        return [Difference(f"vhost {vhost!r}", "missing",
                           f"{setup} && {routing_command('apply', url=url)}")]
    found = list(_exchange_differences(mgmt, vhost, url))
    queues = {q["name"]: q for q in mgmt.queues(vhost)}
    for spec in topology.queue_specs():
        if spec.name not in queues:
            found.append(
                Difference(f"queue {spec.name!r}", "missing", _fix_missing(spec, queues, url))
            )
        else:
            found.extend(_queue_differences(queues[spec.name], spec, url))
        temporary = temporary_queue_name(spec.name)
        if temporary in queues:
            # Running the same recreate again moves its messages back and deletes it.
            held = queues[temporary].get("messages")  # absent until stats are collected
            found.append(Difference(
                f"queue {temporary!r}",
                f"left behind by an interrupted re-creation of {spec.name!r}"
                + (f" ({held} message(s) in it)" if held is not None else ""),
                routing_command("apply", "--recreate", spec.name, url=url),
            ))
    found.extend(_binding_differences(mgmt.bindings(vhost), queues, mgmt, vhost, url))
    return found

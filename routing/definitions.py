"""``python -m routing definitions``: the topology as RabbitMQ definitions JSON.

The format ``rabbitmqctl import_definitions`` and the ``load_definitions``
setting read, so a broker can be given the topology before any Switchyard
process starts. ``deploy/rabbitmq/definitions.json`` is this output, committed;
a test fails when it falls behind the topology.

Users, permissions, policies and parameters are left empty: credentials do
not belong in the repository, and the topology needs no policy.
"""
from __future__ import annotations

import json
from typing import Any

from . import topology

#: Where the committed copy lives, relative to the repository root.
COMMITTED_PATH = "deploy/rabbitmq/definitions.json"


def definitions(vhost: str = "/") -> dict[str, Any]:
    """The topology of ``vhost`` as a definitions document."""
    exchanges = [
        {
            "name": exchange.name,
            "vhost": vhost,
            "type": exchange.type,
            "durable": exchange.durable,
            "auto_delete": exchange.auto_delete,
            "internal": False,
            "arguments": {},
        }
        for exchange in topology.EXCHANGES
    ]
    queues = []
    bindings = []
    for spec in topology.queue_specs():
        declared = spec.to_kombu()
        queues.append(
            {
                "name": spec.name,
                "vhost": vhost,
                "durable": declared.durable,
                "auto_delete": declared.auto_delete,
                "arguments": dict(spec.arguments),
            }
        )
        bindings.append(
            {
                "source": spec.exchange,
                "vhost": vhost,
                "destination": spec.name,
                "destination_type": "queue",
                "routing_key": spec.binding_key,
                "arguments": {},
            }
        )
    return {
        "vhosts": [{"name": vhost}],
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
        "users": [],
        "permissions": [],
        "policies": [],
        "parameters": [],
    }


def render(vhost: str = "/") -> str:
    """Deterministic JSON text (sorted keys, indent 2, final newline): diffs stay readable."""
    return json.dumps(definitions(vhost), indent=2, sort_keys=True) + "\n"

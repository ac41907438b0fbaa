"""``python -m routing definitions``: the topology as RabbitMQ definitions JSON.

The format ``rabbitmqctl import_definitions`` and the ``load_definitions``
setting read, so a broker can be given the topology before any Switchyard
process starts. ``deploy/rabbitmq/definitions.json`` is this output, committed;
a test fails when it falls behind the topology.

It also carries one user per Switchyard role with least privilege
(``routing.access``), because a broker that loads definitions at boot creates
no ``guest`` user. The committed file holds no secret: each user's
``password_hash`` is empty, which RabbitMQ reads as "no password login"
until an operator sets one (``rabbitmqctl change_password``). Deploys render
the same document with real hashes from the environment
(``python -m routing definitions --passwords-from-env``, see
docs/operations.md); that output is never committed. Policies and
parameters stay empty: the topology needs none.
"""
from __future__ import annotations

import json
from typing import Any

from . import access, topology

#: Where the committed copy lives, relative to the repository root.
COMMITTED_PATH = "deploy/rabbitmq/definitions.json"


def definitions(vhost: str = "/", passwords: dict[str, str] | None = None) -> dict[str, Any]:
    """The topology of ``vhost``, its users and their permissions, as a definitions document.

    ``passwords`` maps user names to clear-text passwords, hashed here (a new
    salt each time); without it every ``password_hash`` is empty (no login).
    """
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
    users = []
    permissions = []
    for grant in access.grants():
        password = (passwords or {}).get(grant.user)
        users.append(
            {
                "name": grant.user,
                "password_hash": access.password_hash(password) if password else "",
                "hashing_algorithm": access.HASHING_ALGORITHM,
                "tags": list(grant.tags),
                "limits": {},
            }
        )
        permissions.append(
            {
                "user": grant.user,
                "vhost": vhost,
                "configure": grant.configure,
                "write": grant.write,
                "read": grant.read,
            }
        )
    return {
        "vhosts": [{"name": vhost}],
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
        "users": users,
        "permissions": permissions,
        "policies": [],
        "parameters": [],
    }


def render(vhost: str = "/", passwords: dict[str, str] | None = None) -> str:
    """JSON text (sorted keys, indent 2, final newline): diffs stay readable.
    Deterministic without ``passwords`` (the committed file)."""
    return json.dumps(definitions(vhost, passwords), indent=2, sort_keys=True) + "\n"

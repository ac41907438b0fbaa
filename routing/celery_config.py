"""Celery configuration derived from the topology: queues, router, publish guard.

Kept free of Django so that any Python service can build the same routing.
"""
from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Callable, MutableMapping
from typing import Any

from kombu import Queue

from . import priorities, topology

#: Message headers every task message carries.
TENANT_HEADER = "tenant"
TIER_HEADER = "tier"
#: Tenant name used for work the platform submits for itself (beat, retries of
#: internal tasks). It is held to the standard band like any unknown tenant.
SYSTEM_TENANT = "system"
#: Set by the dispatcher on a copy of a job it promotes to keep the standard
#: tier's starvation bound (jobs.fairness): the copy keeps its tier header and
#: routing key but may carry a priority above its band, up to MAX_PRIORITY.
PROMOTED_HEADER = "switchyard_promoted"


class RoutingError(LookupError):
    """A task cannot be routed: it declares no lane, or an unknown one."""


@functools.lru_cache(maxsize=8)
def broker_user(amqp_url: str) -> str:
    """The RabbitMQ user an AMQP URL logs in as (kombu's default: ``guest``)."""
    return urllib.parse.unquote(urllib.parse.urlsplit(amqp_url).username or "guest")


def task_queues() -> list[Queue]:
    """Celery's ``task_queues``: the lane queues only (workers never consume ``.dead``).

    Marked ``no_declare``: Celery would declare a route's queue, its exchange and the
    binding before each connection's first publish, and a worker its queues before
    consuming. That needs ``configure`` on the lane queues and ``tasks`` (which also
    allows deleting them) and ``read`` on ``tasks`` (binding), enough for a publisher to
    declare a queue named ``tasks``, bind it with ``#`` and read every tenant's messages.
    The operator declares the topology (``python -m routing apply``, definitions.json);
    publishers only publish, workers only consume (``routing.access``).
    """
    queues = []
    for lane in topology.LANES:
        queue = topology.lane_queue_spec(lane.name).to_kombu()
        queue.no_declare = True
        queues.append(queue)
    return queues


def route_for(task_name: str, lane_name: str, tier_name: str) -> dict[str, Any]:
    """Exchange, routing key and queue for ``task_name`` on ``lane_name`` for ``tier_name``."""
    lane = topology.lane(lane_name)
    tr = priorities.tier(tier_name)
    return {
        "exchange": topology.EXCHANGE_NAME,
        "exchange_type": "topic",
        "routing_key": topology.routing_key(lane.name, tr.name, task_name),
        "queue": lane.queue,
    }


def make_router(lane_of: Callable[[str], str | None]) -> Callable[..., dict[str, Any]]:
    """Build a Celery router (for ``task_routes``) from a task-name → lane lookup.

    The router derives exchange, routing key and queue from the task's declared
    lane and the ``tier`` header, so callers never type queue names. A task
    with no lane is an error, never a silent fallback to a default queue.
    """

    def router(name: str, args: Any, kwargs: Any, options: dict[str, Any], task: Any = None,
               **_: Any) -> dict[str, Any]:
        lane_name = getattr(task, "lane", None) or lane_of(name)
        if not lane_name:
            raise RoutingError(
                f"task {name!r} declares no lane; declare it with @app.task(lane=...) "
                f"(lanes: {', '.join(topology.LANES_BY_NAME)})"
            )
        headers = options.get("headers") or {}
        tier_name = headers.get(TIER_HEADER)
        if tier_name not in priorities.TIERS_BY_NAME:
            tier_name = priorities.DEFAULT_TIER.name
        return route_for(name, lane_name, tier_name)

    return router


def enforce_on_publish(headers: MutableMapping[str, Any], properties: MutableMapping[str, Any],
                       routing_key: str | None) -> None:
    """Make a task message obey the contract just before it is published.

    Fills in missing ``tenant``/``tier`` headers and clamps the message's
    priority into its tier's band, whatever the caller passed. Meant for
    Celery's ``before_task_publish`` signal, whose ``headers`` and
    ``properties`` are the message's own (mutable) dicts.
    """
    tier_name = headers.get(TIER_HEADER)
    if tier_name not in priorities.TIERS_BY_NAME:
        tier_name = priorities.DEFAULT_TIER.name
    if routing_key:
        try:
            _, key_tier, _ = topology.parse_routing_key(routing_key)
        except ValueError:
            key_tier = None
        # The routing key and the header must agree; the lower band wins, so a
        # mismatch can only ever cost the sender, never gain it anything.
        if key_tier in priorities.TIERS_BY_NAME and key_tier != tier_name:
            tier_name = min(key_tier, tier_name, key=lambda n: priorities.tier(n).low)
    headers[TIER_HEADER] = tier_name
    headers.setdefault(TENANT_HEADER, SYSTEM_TENANT)
    band = priorities.tier(tier_name)
    if headers.get(PROMOTED_HEADER) and properties.get("priority") is not None:
        # A promotion is the platform's own decision, never a caller's: only the
        # dispatcher sets this header, on a copy that supersedes the job's last one.
        properties["priority"] = min(max(int(properties["priority"]), band.low),
                                     priorities.MAX_PRIORITY)
        return
    properties["priority"] = band.clamp(properties.get("priority"))

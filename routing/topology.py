"""The broker topology: exchanges, lanes, queues, bindings, dead-letter queues.

This module is the one place where names and queue arguments are written
down. Celery's ``task_queues``, ``deploy/rabbitmq/definitions.json``, the table
in ``docs/architecture.md`` and ``python -m routing verify`` are all derived
from the values here; never type a queue name or a queue argument anywhere
else. A queue declared twice with different arguments makes RabbitMQ refuse
the second declaration with ``PRECONDITION_FAILED - inequivalent arg``.

Wire contract (internal services depend on it):

* exchange ``tasks`` (topic, durable) receives every task message;
* each lane ``<lane>`` is a durable classic queue of the same name, bound to
  ``tasks`` with ``<lane>.#``, with ``x-max-priority`` and dead-lettering to
  ``tasks.dlx`` (topic, durable), where ``<lane>.dead`` is bound with ``<lane>.#``;
* a task message's routing key is ``<lane>.<tier>.<task name>``, e.g.
  ``slow.premium.media.thumbnail``;
* Celery's own exchanges are declared here too, durable, by the operator
  (``python -m routing apply``, definitions.json): ``celeryev`` (events),
  ``switchyard.pidbox`` (control broadcasts) and ``reply.switchyard.pidbox``
  (control replies). No Switchyard process declares an exchange or a lane queue
  itself, so no role needs ``configure`` on a name it may read
  (``routing.access``).

Every declaration is valid on RabbitMQ 3.10 and 4.x: classic queues with
``x-queue-type`` stated (a 4.x node may default new queues to quorum), no
``x-queue-mode`` (refused on 4.3), no transient non-exclusive queues.
"""
from __future__ import annotations

from dataclasses import dataclass

from kombu import Exchange, Queue

from .priorities import MAX_PRIORITY

EXCHANGE_NAME = "tasks"
DLX_NAME = "tasks.dlx"

#: RabbitMQ's default ``consumer_timeout`` (ms): past it the broker closes the
#: channel of a consumer that holds an unacknowledged delivery, and a Celery
#: worker exits. Every lane's hard time limit must stay below it.
DEFAULT_CONSUMER_TIMEOUT_MS = 30 * 60 * 1000

TASK_EXCHANGE = Exchange(EXCHANGE_NAME, type="topic", durable=True)
DEAD_LETTER_EXCHANGE = Exchange(DLX_NAME, type="topic", durable=True)

#: Celery's event exchange (task-sent, task-started, heartbeats), as Celery declares it
#: (topic, durable): Celery's setting ``event_exchange``.
EVENT_EXCHANGE_NAME = "celeryev"
#: The namespace of Celery's remote control (Celery's setting ``control_exchange``):
#: broadcasts go to ``<namespace>.pidbox`` (fanout), replies to
#: ``reply.<namespace>.pidbox`` (direct), and a worker's own queue is
#: ``<worker name>.<namespace>.pidbox``. Not Celery's default ``celery``: kombu declares
#: those two exchanges transient, so they would vanish with a broker restart, and a
#: worker that may not create them could not start; these are durable, and declared
#: by the operator only (``switchyard.control``).
CONTROL_NAMESPACE = "switchyard"
CONTROL_EXCHANGE_NAME = f"{CONTROL_NAMESPACE}.pidbox"
REPLY_EXCHANGE_NAME = f"reply.{CONTROL_NAMESPACE}.pidbox"
EVENT_EXCHANGE = Exchange(EVENT_EXCHANGE_NAME, type="topic", durable=True)
CONTROL_EXCHANGE = Exchange(CONTROL_EXCHANGE_NAME, type="fanout", durable=True,
                            delivery_mode="transient")
REPLY_EXCHANGE = Exchange(REPLY_EXCHANGE_NAME, type="direct", durable=True,
                          delivery_mode="transient")


@dataclass(frozen=True)
class Lane:
    """A worker lane: one queue, one pool of workers, its own time limits.

    ``soft_time_limit`` and ``time_limit`` are in seconds; the hard limit must
    leave a margin below the broker's ``consumer_timeout``.
    """

    name: str
    soft_time_limit: int
    time_limit: int
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or "." in self.name:
            raise ValueError(
                f"lane name {self.name!r} must be a plain word (it starts routing keys)"
            )
        if not 0 < self.soft_time_limit < self.time_limit:
            raise ValueError(f"lane {self.name!r}: need 0 < soft_time_limit < time_limit")
        check_time_limit(self, DEFAULT_CONSUMER_TIMEOUT_MS)

    @property
    def queue(self) -> str:
        return queue_name(self.name)

    @property
    def dead_queue(self) -> str:
        return dead_queue_name(self.name)

    @property
    def binding_key(self) -> str:
        return binding_key(self.name)


def check_time_limit(lane: Lane, consumer_timeout_ms: int) -> None:
    """Raise ``ValueError`` unless the lane's hard limit is below ``consumer_timeout``.

    A margin of one minute covers the time between the broker's delivery and
    the pool starting the task.
    """
    margin_s = 60
    if (lane.time_limit + margin_s) * 1000 > consumer_timeout_ms:
        raise ValueError(
            f"lane {lane.name!r}: time_limit {lane.time_limit}s plus a {margin_s}s margin is not "
            f"below the broker's consumer_timeout of {consumer_timeout_ms} ms; RabbitMQ would "
            "close the worker's channel mid-task. Lower the limit or raise consumer_timeout "
            "(see docs/runbooks/consumer-timeout.md)."
        )


SLOW = Lane(
    "slow",
    soft_time_limit=20 * 60,
    time_limit=25 * 60,
    description="heavy work: large uploads, thumbnails of big files, bulk copies",
)
QUICK = Lane(
    "quick",
    soft_time_limit=50,
    time_limit=60,
    description="metadata work answered in milliseconds: renames, trash, small files",
)

#: Adding a lane is one more entry here (and a worker role to serve it).
LANES: tuple[Lane, ...] = (SLOW, QUICK)
LANES_BY_NAME: dict[str, Lane] = {lane.name: lane for lane in LANES}


def lane(name: str) -> Lane:
    """Return the lane called ``name``; ``KeyError`` names the valid ones."""
    try:
        return LANES_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown lane {name!r}; known lanes: {', '.join(LANES_BY_NAME)}") from None


# -- names: every name is derived here and nowhere else -------------------------------------


def queue_name(lane_name: str) -> str:
    return lane_name


def dead_queue_name(lane_name: str) -> str:
    return f"{lane_name}.dead"


def binding_key(lane_name: str) -> str:
    return f"{lane_name}.#"


def routing_key(lane_name: str, tier_name: str, task_name: str) -> str:
    """``<lane>.<tier>.<task name>``; the task name may itself contain dots."""
    if not task_name:
        raise ValueError("task name is empty")
    return f"{lane_name}.{tier_name}.{task_name}"


def parse_routing_key(key: str) -> tuple[str, str, str]:
    """Split ``<lane>.<tier>.<task name>``; ``ValueError`` if it has fewer parts."""
    parts = key.split(".", 2)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"routing key {key!r} is not <lane>.<tier>.<task name>")
    return parts[0], parts[1], parts[2]


# -- queue arguments: derived by one function per kind of queue ------------------------------


def lane_queue_arguments(lane_name: str) -> dict[str, object]:
    """Arguments of a lane queue. Any difference from these on the broker is drift."""
    lane(lane_name)  # unknown lanes fail here, not on the broker
    return {
        "x-queue-type": "classic",
        "x-max-priority": MAX_PRIORITY,
        "x-dead-letter-exchange": DLX_NAME,
    }


def dead_queue_arguments(lane_name: str) -> dict[str, object]:
    """Arguments of a lane's dead-letter queue (FIFO: order of death is kept)."""
    lane(lane_name)
    return {"x-queue-type": "classic"}


@dataclass(frozen=True)
class QueueSpec:
    """A queue as the broker must hold it: where it is bound, with which arguments."""

    name: str
    exchange: str
    binding_key: str
    arguments: dict[str, object]
    lane: str
    dead: bool

    def to_kombu(self) -> Queue:
        exchange = DEAD_LETTER_EXCHANGE if self.dead else TASK_EXCHANGE
        return Queue(
            self.name,
            exchange=exchange,
            routing_key=self.binding_key,
            durable=True,
            auto_delete=False,
            exclusive=False,
            queue_arguments=dict(self.arguments),
        )


def lane_queue_spec(lane_name: str) -> QueueSpec:
    return QueueSpec(
        name=queue_name(lane_name),
        exchange=EXCHANGE_NAME,
        binding_key=binding_key(lane_name),
        arguments=lane_queue_arguments(lane_name),
        lane=lane_name,
        dead=False,
    )


def dead_queue_spec(lane_name: str) -> QueueSpec:
    return QueueSpec(
        name=dead_queue_name(lane_name),
        exchange=DLX_NAME,
        binding_key=binding_key(lane_name),
        arguments=dead_queue_arguments(lane_name),
        lane=lane_name,
        dead=True,
    )


def queue_specs() -> list[QueueSpec]:
    """Every queue of the topology: each lane, then its dead-letter queue."""
    specs: list[QueueSpec] = []
    for lane in LANES:
        specs.append(lane_queue_spec(lane.name))
        specs.append(dead_queue_spec(lane.name))
    return specs


EXCHANGES: tuple[Exchange, ...] = (TASK_EXCHANGE, DEAD_LETTER_EXCHANGE, EVENT_EXCHANGE,
                                   CONTROL_EXCHANGE, REPLY_EXCHANGE)


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching as RabbitMQ does it: ``*`` is one word, ``#`` zero or more."""
    pat, words = pattern.split("."), key.split(".")

    def match(i: int, j: int) -> bool:
        if i == len(pat):
            return j == len(words)
        if pat[i] == "#":
            return any(match(i + 1, k) for k in range(j, len(words) + 1))
        if j == len(words):
            return False
        return (pat[i] == "*" or pat[i] == words[j]) and match(i + 1, j + 1)

    return match(0, 0)


def queues_for_key(key: str, *, dead: bool = False) -> list[str]:
    """Names of the queues a message with routing ``key`` reaches on ``tasks``
    (or on ``tasks.dlx`` when ``dead``), as the broker would route it."""
    return [
        spec.name
        for spec in queue_specs()
        if spec.dead == dead and topic_matches(spec.binding_key, key)
    ]

"""``python -m routing apply --recreate QUEUE``: fix a queue's arguments, keep its messages.

RabbitMQ cannot change the arguments of an existing queue (``x-max-priority``,
dead-lettering, type); the queue has to be deleted and declared again. Done
naively that loses every message in it, and every message published
meanwhile. The steps here avoid both:

1. declare ``<queue>.recreate`` (durable, the queue's intended arguments) with
   the queue's binding, then unbind the old queue: new messages land in the
   temporary queue from now on;
2. move every message from the old queue to the temporary one;
3. delete the old queue, but only if it is empty and unused (the broker
   checks both atomically), otherwise move what arrived and try again;
4. declare the queue with the topology's arguments, bind it, unbind the
   temporary queue;
5. move the messages back, and delete the temporary queue the same way.

A message is moved by ``basic.get``, a publish to the destination queue
through the default exchange with publisher confirms, and only then an ack of
the original. A crash at any point leaves each message in the old queue
(unacked, so redelivered to the queue), or the temporary one, or both
(a duplicate, never a loss); running the command again finishes the job.
Body, headers and properties (priority, delivery mode, ids, ...) are kept;
the delivery's exchange and routing key become ``""`` and the queue name,
which Celery ignores (its router re-derives a retry's route).

Between binding one queue and unbinding the other (step 1 and 4), a message
published in that instant is routed to both: delivered twice rather than
lost. Tasks are at-least-once already (``acks_late``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO

from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import ChannelClosedByBroker, NackError, UnroutableError

from . import topology
from .broker import confirmed_channel

NOT_FOUND = 404
PRECONDITION_FAILED = 406
#: Rounds of "move what is left, then delete if empty" before giving up: each
#: retry means something still publishes straight to the queue by its name.
DELETE_ATTEMPTS = 5


class RecreateRefused(RuntimeError):
    """The queue must not be re-created now; the message says what to do first."""


def temporary_queue_name(queue: str) -> str:
    return f"{queue}.recreate"


def spec_for(queue: str) -> topology.QueueSpec:
    """The topology's spec of ``queue``; refuse queues the topology does not define."""
    specs = {spec.name: spec for spec in topology.queue_specs()}
    try:
        return specs[queue]
    except KeyError:
        raise RecreateRefused(
            f"queue {queue!r} is not part of the topology, so there are no arguments to "
            f"re-create it with. Queues of the topology: {', '.join(specs)}"
        ) from None


@dataclass(frozen=True)
class QueueState:
    messages: int
    consumers: int


def queue_state(connection: BlockingConnection, queue: str) -> QueueState | None:
    """Messages and consumers of ``queue``, or None if it does not exist.

    A passive declare on a channel of its own: a missing queue closes it (404).
    """
    channel = connection.channel()
    try:
        ok = channel.queue_declare(queue, passive=True)
    except ChannelClosedByBroker as exc:
        if exc.reply_code == NOT_FOUND:
            return None
        raise
    channel.close()
    return QueueState(ok.method.message_count, ok.method.consumer_count)


def move_messages(channel: BlockingChannel, source: str, destination: str) -> int:
    """Move every message of ``source`` to ``destination``; return how many.

    ``channel`` must be in confirm mode: ``basic_publish`` then returns only
    once the broker holds the copy (and, with ``mandatory``, raises if no
    queue took it), so the original is acked only after that.
    """
    moved = 0
    while True:
        method, properties, body = channel.basic_get(source, auto_ack=False)
        if method is None:
            return moved
        try:
            channel.basic_publish(
                "", destination, body or b"", properties=properties, mandatory=True
            )
        except (UnroutableError, NackError):
            # Hand the original back to its queue (at its old position) and stop.
            channel.basic_nack(method.delivery_tag, requeue=True)
            raise
        channel.basic_ack(method.delivery_tag)
        moved += 1


def _drain_and_delete(
    connection: BlockingConnection, channel: BlockingChannel, source: str, destination: str,
    lane: str,
) -> tuple[BlockingChannel, int]:
    """Move ``source`` into ``destination`` until ``source`` can be deleted empty.

    ``lane`` only names whose workers to stop if a consumer shows up meanwhile.
    """
    moved = 0
    for _ in range(DELETE_ATTEMPTS):
        moved += move_messages(channel, source, destination)
        try:
            # Both conditions are checked by the broker at delete time, so no
            # message or consumer that arrived after our last get is dropped.
            channel.queue_delete(source, if_unused=True, if_empty=True)
            return channel, moved
        except ChannelClosedByBroker as exc:
            if exc.reply_code != PRECONDITION_FAILED:
                raise
        channel = confirmed_channel(connection)
        state = queue_state(connection, source)
        if state is None:  # someone else deleted it, after we emptied it
            return channel, moved
        if state.consumers:
            raise RecreateRefused(
                f"a consumer attached to {source!r} while it was being re-created. Stop the "
                f"workers of lane {lane!r} and run the same command again: "
                "it carries on where it stopped (messages are safe in the queues)."
            )
    raise RecreateRefused(
        f"{source!r} keeps receiving messages published straight to it (by name, not through "
        f"the exchange); stop that publisher and run the same command again."
    )


@dataclass(frozen=True)
class RecreateResult:
    moved_out: int
    moved_back: int
    messages: int  # in the re-created queue at the end


def recreate_queue(connection: BlockingConnection, queue: str, out: TextIO) -> RecreateResult:
    """Re-declare ``queue`` with the topology's arguments, keeping its messages."""
    spec = spec_for(queue)
    temporary = temporary_queue_name(queue)
    exchange = topology.DEAD_LETTER_EXCHANGE if spec.dead else topology.TASK_EXCHANGE
    kombu_queue = spec.to_kombu()

    def declare(channel: BlockingChannel, name: str) -> None:
        channel.queue_declare(
            name,
            durable=kombu_queue.durable,
            exclusive=False,
            auto_delete=False,
            arguments=dict(spec.arguments),
        )

    state = queue_state(connection, queue)
    if state is not None and state.consumers:
        raise RecreateRefused(
            f"queue {queue!r} has {state.consumers} consumer(s). Stop (or drain and stop) the "
            f"workers of lane {spec.lane!r} first, then run this again; a consumer would hold "
            "messages while the queue is moved, and deleting a consumed queue cancels it."
        )

    channel = confirmed_channel(connection)
    channel.exchange_declare(exchange.name, exchange_type=exchange.type, durable=exchange.durable)
    if state is None:
        # Missing, e.g. a run interrupted after step 3: declare it and go
        # through all steps anyway, which brings back what a leftover
        # temporary queue still holds.
        declare(channel, queue)
        channel.queue_bind(queue, spec.exchange, spec.binding_key)
        print(f"queue {queue} did not exist; declared it with the topology's arguments", file=out)
    else:
        print(f"queue {queue}: {state.messages} message(s), no consumer", file=out)

    # 1. Divert new messages to the temporary queue (bind first: no gap).
    declare(channel, temporary)
    channel.queue_bind(temporary, spec.exchange, spec.binding_key)
    channel.queue_unbind(queue, spec.exchange, spec.binding_key)
    print(f"  new messages for {spec.binding_key} now go to {temporary}", file=out)

    # 2-3. Empty the old queue into the temporary one and delete it.
    channel, moved_out = _drain_and_delete(connection, channel, queue, temporary, spec.lane)
    print(f"  moved {moved_out} message(s) {queue} -> {temporary}; deleted {queue}", file=out)

    # 4. The queue as the topology declares it, bound before the temporary one is unbound.
    declare(channel, queue)
    channel.queue_bind(queue, spec.exchange, spec.binding_key)
    channel.queue_unbind(temporary, spec.exchange, spec.binding_key)
    print(f"  declared {queue} with the topology's arguments and its binding", file=out)

    # 5. Everything back, including what was published in the meantime.
    channel, moved_back = _drain_and_delete(connection, channel, temporary, queue, spec.lane)
    print(f"  moved {moved_back} message(s) {temporary} -> {queue}; deleted {temporary}", file=out)

    final = queue_state(connection, queue)
    channel.close()
    return RecreateResult(moved_out, moved_back, final.messages if final else 0)

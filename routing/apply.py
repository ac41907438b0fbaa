"""``python -m routing apply``: declare the topology on a broker, idempotently.

Declares both exchanges, every queue of ``topology.queue_specs()`` with its
exact arguments, and each queue's binding. Declaring what already exists
with the same arguments is a no-op for RabbitMQ, so running it again is safe.

A queue that exists with other arguments cannot be changed by a declaration:
RabbitMQ answers ``PRECONDITION_FAILED`` (406) and closes the channel. That
conflict is recorded, the remaining declarations continue on a new channel,
and the operator is pointed to ``apply --recreate QUEUE``, which re-creates
the queue without losing its messages.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TextIO

from kombu import Exchange
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import ChannelClosedByBroker

from . import topology
from .commands import routing_command

PRECONDITION_FAILED = 406
#: Other refusals (403 permissions, 405 an exclusive queue of another client)
#: are not fixed by any routing command.
SEE_REASON = "see the broker's reason above (permissions? an exclusive queue of another client?)"


@dataclass(frozen=True)
class Refusal:
    """A declaration the broker refused, and what the operator can do about it."""

    what: str
    reason: str
    fix: str


@dataclass
class ApplyResult:
    declared: list[str] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused


def format_arguments(arguments: dict[str, object]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(arguments.items()))


def _declare_exchange(channel: BlockingChannel, exchange: Exchange) -> None:
    channel.exchange_declare(
        exchange.name,
        exchange_type=exchange.type,
        durable=exchange.durable,
        auto_delete=exchange.auto_delete,
    )


def _exchange_fix(name: str, url: str | None) -> str:
    # An exchange cannot be re-declared with another type. Deleting it drops
    # its bindings, not the messages in queues; apply then restores both.
    return (
        f"delete exchange {name!r} (management UI, or DELETE /api/exchanges/<vhost>/{name}), "
        f"then run: {routing_command('apply', url=url)}"
    )


def _queue_fix(name: str, code: int, url: str | None) -> str:
    if code == PRECONDITION_FAILED:
        return (
            "the queue exists with other arguments; re-create it without losing messages: "
            + routing_command("apply", "--recreate", name, url=url)
        )
    return SEE_REASON


def apply_topology(
    connection: BlockingConnection, out: TextIO, *, url: str | None = None
) -> ApplyResult:
    """Declare everything; print one line per declaration; return what happened.

    ``url`` is only used to spell the fix commands (see ``commands``).
    """
    result = ApplyResult()
    channel = connection.channel()

    def refused(what: str, exc: ChannelClosedByBroker, fix: str) -> BlockingChannel:
        result.refused.append(Refusal(what, f"({exc.reply_code}) {exc.reply_text}", fix))
        print(f"  REFUSED  {what}: ({exc.reply_code}) {exc.reply_text}", file=out)
        print(f"           fix: {fix}", file=out)
        # The broker closed this channel; the rest goes on a fresh one.
        return connection.channel()

    for exchange in topology.EXCHANGES:
        what = f"exchange {exchange.name} ({exchange.type}, durable)"
        try:
            _declare_exchange(channel, exchange)
        except ChannelClosedByBroker as exc:
            channel = refused(what, exc, _exchange_fix(exchange.name, url))
            continue
        result.declared.append(what)
        print(f"  ok       {what}", file=out)

    for spec in topology.queue_specs():
        queue = spec.to_kombu()  # durable/auto_delete/exclusive as Celery declares them
        what = f"queue {spec.name} [{format_arguments(spec.arguments)}]"
        try:
            channel.queue_declare(
                spec.name,
                durable=queue.durable,
                exclusive=queue.exclusive,
                auto_delete=queue.auto_delete,
                arguments=dict(spec.arguments),
            )
            result.declared.append(what)
            print(f"  ok       {what}", file=out)
        except ChannelClosedByBroker as exc:
            channel = refused(what, exc, _queue_fix(spec.name, exc.reply_code, url))
            if exc.reply_code != PRECONDITION_FAILED:
                continue  # the queue may not exist at all: nothing to bind
        # The binding is bound even when the queue's arguments are wrong: the
        # binding itself is right, and without it new messages would be
        # unroutable (dropped) until the queue is re-created.
        what = f"binding {spec.exchange} --[{spec.binding_key}]--> {spec.name}"
        try:
            channel.queue_bind(spec.name, spec.exchange, spec.binding_key)
        except ChannelClosedByBroker as exc:
            channel = refused(what, exc, SEE_REASON)
            continue
        result.declared.append(what)
        print(f"  ok       {what}", file=out)

    if channel.is_open:
        channel.close()
    return result

"""The platform app's remote control (Celery's ``app.control``): nothing declared.

Installed by ``switchyard/celery.py`` (``Celery(control=...)``); used by every process
that sends control commands (Flower, ``manage.py drain``, operators' ``celery inspect``)
and by every worker, which answers them on its own ``<name>.switchyard.pidbox`` queue.

kombu's mailbox declares its broadcast and reply exchanges, transient, each time it
publishes to them. RabbitMQ's ``configure`` permission covers declaring AND deleting,
and it is matched against the bare name, whatever the kind of resource: a worker
allowed to declare the broadcast exchange (which it must also read, to bind its queue)
could as well declare a *queue* of that name, or delete the exchange and cut every
worker off from its commands. So here the two exchanges are the topology's durable
ones (``routing.topology.CONTROL_EXCHANGE``, ``REPLY_EXCHANGE``), declared by the
operator (``python -m routing apply``, definitions.json) and never by a Switchyard
process: a worker needs ``configure`` on its own pidbox queue only, Flower on its own
reply queue only (``routing.access``).
"""
from __future__ import annotations

from copy import copy

from celery.app.control import Control
from kombu import Exchange
from kombu.pidbox import Mailbox

from routing import topology


def _undeclared(exchange: Exchange) -> Exchange:
    """A copy of ``exchange`` that kombu never declares (it must exist already)."""
    found = copy(exchange)
    found.no_declare = True
    return found


class PlatformMailbox(Mailbox):
    """kombu's mailbox on the topology's control exchanges, declaring neither."""

    def _get_exchange(self, namespace, type):  # noqa: A002 - kombu's signature
        if namespace != topology.CONTROL_NAMESPACE or type != topology.CONTROL_EXCHANGE.type:
            raise ValueError(f"control namespace {namespace!r} ({type}): Switchyard's is "
                             f"{topology.CONTROL_NAMESPACE!r} (fanout); see routing.topology")
        return _undeclared(topology.CONTROL_EXCHANGE)

    def _get_reply_exchange(self, namespace):
        return _undeclared(topology.REPLY_EXCHANGE)

    def _publish_reply(self, reply, exchange, routing_key, ticket, channel=None,
                       producer=None, **opts):
        """A worker's answer, published to the reply exchange the command named without
        declaring it: a worker may write to the reply exchange, never configure it."""
        if exchange != topology.REPLY_EXCHANGE_NAME:
            # Only the topology's reply exchange: a command cannot make a worker
            # publish to another exchange it may write to (``tasks``, say).
            return
        chan = channel or self.connection.default_channel
        with self.producer_or_acquire(producer, chan) as producer:
            producer.publish(
                reply, exchange=exchange, routing_key=routing_key, declare=[],
                delivery_mode="transient",
                headers={"ticket": ticket, "clock": self.clock.forward()},
                retry=True, **opts)


class PlatformControl(Control):
    """Celery's remote control on ``PlatformMailbox``."""

    Mailbox = PlatformMailbox

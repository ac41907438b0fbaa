"""The platform app's AMQP class: Switchyard's publish contract on its own task messages.

Installed by ``switchyard/celery.py`` (``Celery(amqp=...)``). Only the platform's app
uses it: a Celery signal would touch every app of the process (a service running
``switchyard_client`` beside the platform's code, say), this touches none but its own.
Every task message it publishes to ``tasks``:

* obeys ``routing.celery_config.enforce_on_publish``: tenant and tier headers present,
  the priority clamped into the tier's band;
* carries no AMQP per-message TTL and no ``expires`` header: RabbitMQ would
  dead-letter an expired message with its job left ``queued``, and a worker would
  compare the header with its own clock; ``jobs.task.job_begin`` checks the job's
  ``expires_at`` on the database's clock instead (docs/architecture.md, "Clocks");
* carries the AMQP ``user_id`` of the connection's own user, which RabbitMQ vouches
  for: workers run a message of an existing job only from the platform's users
  (``jobs.senders``);
* is published ``mandatory``: a message no queue is bound for (a lane queue
  deleted, a binding removed) is returned by the broker before it confirms, and
  the publish raises ``Unroutable`` instead of succeeding. Without it RabbitMQ
  confirms and drops such a message, and its job stays ``queued`` for ever.
"""
from __future__ import annotations

from amqp.exceptions import ChannelError
from celery.app.amqp import AMQP

import routing.celery_config as routing_celery
from routing import topology

#: AMQP reply code of a mandatory message no queue was bound for.
NO_ROUTE = 312


class Unroutable(RuntimeError):
    """The broker returned a task message: no queue is bound for its routing key."""

    def __init__(self, exchange: str, routing_key: str, task_id: str | None = None) -> None:
        self.exchange, self.routing_key, self.task_id = exchange, routing_key, task_id
        super().__init__(f"the broker returned message {task_id or '?'}: no queue is bound "
                         f"for routing key {routing_key!r} on exchange {exchange!r}")


def _returns_of(channel) -> list | None:
    """The messages the broker returned on ``channel`` (a list this module fills from
    the channel's ``basic.return`` handler), or None for a channel without one."""
    events = getattr(channel, "events", None)
    if events is None:  # not an AMQP channel (kombu's memory transport)
        return None
    returns = getattr(channel, "_switchyard_returns", None)
    if returns is None:
        returns = channel._switchyard_returns = []
        # With publisher confirms RabbitMQ sends basic.return before the message's
        # basic.ack, so the return is recorded while the publish waits for the ack.
        # py-amqp raises on a return only when no handler is registered.
        events["basic_return"].add(
            lambda exc, exchange, routing_key, message: returns.append((exchange, routing_key)))
    return returns


def _channel_of(producer):
    try:
        return producer.channel
    except Exception:  # a connection not yet established: the publish will say why
        return None


class PlatformAMQP(AMQP):
    """Celery's AMQP helper, its task sender wrapped with the publish contract."""

    def _create_task_sender(self):
        send = super()._create_task_sender()
        default_user = routing_celery.broker_user(self.app.conf.broker_url)

        def send_task_message(producer, name, message, exchange=None, routing_key=None,
                              **options):
            if getattr(exchange, "name", exchange) == topology.EXCHANGE_NAME:
                headers = message.headers
                headers.update(options.pop("headers", None) or {})
                routing_celery.enforce_on_publish(headers, options, routing_key)
                options.pop("expiration", None)
                if "expires" in headers:
                    headers["expires"] = None
                connection = getattr(producer, "connection", None)
                options["user_id"] = getattr(connection, "userid", None) or default_user
                return _send_mandatory(send, producer, name, message, exchange=exchange,
                                       routing_key=routing_key, **options)
            return send(producer, name, message, exchange=exchange, routing_key=routing_key,
                        **options)

        return send_task_message


def _send_mandatory(send, producer, name, message, *, exchange, routing_key, **options):
    """Publish a task message ``mandatory``; raise ``Unroutable`` if the broker returned it."""
    task_id = message.headers.get("id")
    returns = _returns_of(_channel_of(producer))
    if returns is not None:
        returns.clear()
    try:
        result = send(producer, name, message, exchange=exchange, routing_key=routing_key,
                      mandatory=True, **options)
    except ChannelError as exc:
        if getattr(exc, "reply_code", None) != NO_ROUTE:
            raise
        # Returned on a channel opened during the publish's own retry, before a
        # handler was registered: py-amqp raised while the ack is still to come,
        # so the channel is closed rather than reused out of step with its acks.
        _discard_channel(producer)
        raise Unroutable(getattr(exchange, "name", exchange), routing_key, task_id) from exc
    # The publish may have moved to a new channel (a reconnect inside its retry).
    for channel_returns in (returns, _returns_of(_channel_of(producer))):
        if channel_returns:
            channel_returns.clear()
            raise Unroutable(getattr(exchange, "name", exchange), routing_key, task_id)
    return result


def _discard_channel(producer) -> None:
    """Close ``producer``'s connection: its next publish connects afresh."""
    try:
        producer.connection.close()
    except Exception:  # already closed or gone: nothing to keep
        pass

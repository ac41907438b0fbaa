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
  (``jobs.senders``).
"""
from __future__ import annotations

from celery.app.amqp import AMQP

import routing.celery_config as routing_celery
from routing import topology


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
            return send(producer, name, message, exchange=exchange, routing_key=routing_key,
                        **options)

        return send_task_message

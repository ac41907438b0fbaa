"""Switchyard's Celery worker consumer: per-consumer QoS, and no silent loss of bad messages.

Installed through the ``worker_consumer`` setting (see ``switchyard/celery.py``).

Three behaviours of stock Celery 5.7 are wrong for Switchyard:

* On classic queues Celery sends ``basic.qos`` with ``global=true`` (it only
  switches to per-consumer QoS when it sees quorum queues). RabbitMQ 4.3 denies
  global QoS by default (deprecated feature ``global_qos``). Each Switchyard
  worker consumes one lane queue on one channel, so the per-consumer prefetch
  equals the channel's and nothing is lost by always using it.
* A message whose body cannot be decoded is *acked* and logged: the task is
  silently gone; a disallowed content type (a pickle from a rogue client) is
  rejected without a word of why. Switchyard dead-letters both to
  ``<lane>.dead`` with the reason in the ``x-switchyard-reason`` header.
* The ``conf`` remote-control answer (Flower's worker page asks it) masks
  ``broker_url`` only under that exact name: with settings read from Django
  (``CELERY_BROKER_URL``) the worker's broker password went out in clear. Here
  every URL's password is masked, whatever its setting is called.
"""
from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from amqp.exceptions import NotFound
from celery import signals
from celery.app.utils import filter_hidden_settings
from celery.utils.serialization import jsonify, strtobool
from celery.worker import control
from celery.worker.consumer.consumer import Consumer as CeleryConsumer
from celery.worker.consumer.tasks import Tasks
from kombu.utils.encoding import safe_repr

from routing.topology import DLX_NAME

logger = logging.getLogger(__name__)

#: Header naming why Switchyard dead-lettered a message itself.
REASON_HEADER = "x-switchyard-reason"
#: ``scheme://user:password@``: a URL carrying a password.
_CREDENTIALS = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@:]*:[^/@]*@", re.IGNORECASE)


def masked(value: Any) -> Any:
    """``value`` with the password of every URL in it replaced by ``********``."""
    if isinstance(value, Mapping):
        return {k: masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(masked(v) for v in value)
    if isinstance(value, str) and _CREDENTIALS.match(value):
        parts = urllib.parse.urlsplit(value)
        netloc = f"{parts.username or ''}:********@{parts.hostname or ''}"
        if parts.port:
            netloc += f":{parts.port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return value


@control.inspect_command(alias="dump_conf", signature="[include_defaults=False]",
                         args=[("with_defaults", strtobool)])
def conf(state, with_defaults=False, **kwargs):
    """Celery's ``conf`` answer (it replaces the stock one), with every password masked."""
    table = filter_hidden_settings(state.app.conf.table(with_defaults=with_defaults))
    return jsonify(masked(table), keyfilter=lambda key: isinstance(key, str)
                   and not key.startswith("__"), unknown_type_filter=safe_repr)


def _per_consumer_qos(c) -> bool:  # noqa: ARG001 - signature of Tasks.qos_global
    """Answer Celery's "apply global QoS?" question: never."""
    return False


class Consumer(CeleryConsumer):
    """Celery's consumer with per-consumer QoS, decode errors dead-lettered, and a
    missing lane queue waited for."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Workers declare no part of the topology (routing.access): a lane queue that
        # is missing (deleted, not applied yet) answers the consume NOT_FOUND. Treated
        # like a lost connection, with its backoff, the worker resumes once the queue
        # is declared again (python -m routing apply) instead of exiting. Other channel
        # errors stay fatal: a consumer_timeout hit (PRECONDITION_FAILED) still ends the
        # worker once its running task is over (docs/runbooks/consumer-timeout.md).
        self.connection_errors = (*self.connection_errors, NotFound)
        # The task-consumer step is Celery's own (other steps depend on that very
        # class), with only its QoS decision replaced on this instance.
        for step in self.blueprint.steps.values():
            if isinstance(step, Tasks):
                step.qos_global = _per_consumer_qos
                break
        else:  # a Celery upgrade moved the step: fail loudly rather than run global QoS
            raise RuntimeError(
                "Celery's Tasks consumer step not found; cannot force per-consumer QoS"
            )

    def connection_for_write(self, url=None, heartbeat=None):
        """The connection the worker publishes its events on, without publisher
        confirms: an event is telemetry, and waiting for a confirm per event
        (the broker transport's ``confirm_publish`` applies to every publish)
        took half of the worker's main process, measured with py-spy. Task
        messages keep their confirms: they are never published on this one."""
        return self.ensure_connected(self.app.connection_for_write(
            url=url, heartbeat=heartbeat, transport_options={"confirm_publish": False}))

    def on_decode_error(self, message, exc) -> None:
        """A body that cannot be decoded: Celery would ack (lose) it; dead-letter it."""
        self._dead_letter(message, f"undecodable body ({message.content_type!r}): {exc}")

    def on_invalid_task(self, body, message, exc) -> None:
        """A disallowed content type (pickle) or a malformed task message."""
        reason = f"invalid task message: {type(exc).__name__}: {exc}"
        if message.content_type not in self.app.conf.accept_content:
            reason = (f"content type {message.content_type!r} refused (accepted: "
                      f"{', '.join(sorted(self.app.conf.accept_content))}); never decoded")
        self._dead_letter(message, reason)
        signals.task_rejected.send(sender=self, message=message, exc=exc)

    def _dead_letter(self, message, reason: str) -> None:
        """Publish ``message`` unchanged to its lane's dead-letter queue with ``reason``.

        Acked only once the broker confirmed the copy; if that fails, the
        message is rejected and the queue's own dead-lettering takes it.
        """
        routing_key = (message.delivery_info or {}).get("routing_key") or ""
        logger.error("dead-lettering message %s (routing key %r): %s",
                     (message.headers or {}).get("id"), routing_key, reason)
        headers = dict(message.headers or {})
        headers[REASON_HEADER] = reason[:1000]
        try:
            with self.app.producer_pool.acquire(block=True, timeout=10) as producer:
                producer.publish(
                    message.body,
                    exchange=DLX_NAME,
                    routing_key=routing_key,
                    headers=headers,
                    content_type=message.content_type,
                    content_encoding=message.content_encoding,
                    serializer=None,
                    retry=True,
                    retry_policy={"max_retries": 3},
                )
        except Exception:  # the broker's own dead-lettering is the fallback
            logger.exception("could not publish to %s; rejecting to the queue's DLX", DLX_NAME)
            message.reject(requeue=False)
            return
        message.ack()

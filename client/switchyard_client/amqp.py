"""How this app's task messages are routed and published (Celery's ``amqp`` class).

Only the app ``connect()`` made uses it, so nothing here touches another Celery
app of the same process (Celery's signals are process-wide; this is not one).

Routing (``SwitchyardRouter``, Celery's ``router.route`` hook): every message goes
to the catalogue's exchange (``tasks``) with the catalogue's routing key for the
task and this tenant's tier. ``queue=`` and ``exchange=`` given by the caller are
dropped: no queue of that name is declared or published to. A ``routing_key=``
is kept only if it is ``<lane>.<your tier>.<this task>`` for a lane the catalogue
names (the platform moves the job to the task's own lane); any other would be
refused by the broker's topic permissions or routed nowhere, so the catalogue's
key is used instead. The caller's relative ``priority`` (0..9) is placed in the
tier's band. ``retry_policy`` also travels in the ``switchyard_retry_policy``
header: the platform retries failed runs by it, as the REST API does.

Publishing (``send_task_message``): nothing is declared, no per-message TTL is set
(``expires`` travels as Celery's header only), the message carries the
AMQP ``user_id`` property equal to the connection's user name (RabbitMQ checks
it: it is how the platform knows who sent it), and ``link``/``link_error``
signatures must name catalogued tasks. Unknown names raise before anything is
sent.
"""
from __future__ import annotations

import logging
from typing import Any

from celery.app.amqp import AMQP

from .errors import CatalogueError

logger = logging.getLogger(__name__)

#: Options naming a destination: the catalogue decides them.
DESTINATION_OPTIONS = ("queue", "exchange", "exchange_type", "routing_key")
#: The header carrying ``apply_async(retry_policy=...)`` to the platform, which applies it
#: to *runs* as the REST API's ``options.retry_policy`` (Celery itself only uses it to
#: retry the publish, which it still does).
RETRY_POLICY_HEADER = "switchyard_retry_policy"


class SwitchyardRouter:
    """Celery's router interface (``route(options, name, args, kwargs, task_type)``)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def route(self, options: dict[str, Any], name: str, args: Any = (), kwargs: Any = None,
              task_type: Any = None) -> dict[str, Any]:
        catalogue = self.app.catalogue
        task = catalogue.route(name)
        options = dict(options)
        requested_key = options.get("routing_key")
        for option in DESTINATION_OPTIONS:
            options.pop(option, None)
        options.update(
            exchange=task.exchange,
            exchange_type="topic",
            routing_key=self._routing_key(task, requested_key, catalogue.lanes()),
            priority=task.place(options.get("priority")),
            declare=[],
        )
        policy = options.get("retry_policy")
        if policy is not None:
            if not isinstance(policy, dict):
                raise ValueError(f"retry_policy must be a dict, e.g. {{'max_retries': 3}}, "
                                 f"got {policy!r}")
            options["headers"] = {**(options.get("headers") or {}),
                                  RETRY_POLICY_HEADER: dict(policy)}
        return options

    @staticmethod
    def _routing_key(task, requested: Any, lanes: frozenset[str]) -> str:
        if requested is None or requested == task.routing_key:
            return task.routing_key
        parts = requested.split(".", 2) if isinstance(requested, str) else []
        if len(parts) == 3 and parts[0] in lanes and parts[1] == task.tier \
                and parts[2] == task.name:
            return requested
        logger.debug("routing_key %r is not one of %s's keys for tier %s; using %r",
                     requested, task.name, task.tier, task.routing_key)
        return task.routing_key


class SwitchyardAMQP(AMQP):
    """Celery's AMQP helper with Switchyard's router and a publisher that declares
    nothing and sets ``user_id``."""

    def Router(self, queues=None, create_missing=None):  # noqa: N802 - Celery's name
        return SwitchyardRouter(self.app)

    def _create_task_sender(self):
        send = super()._create_task_sender()
        router = self.Router()

        def send_task_message(producer, name, message, **options):
            if options.get("exchange") is None or options.get("queue") is not None:
                # Reached without our router (``send_task(router=...)``): route here.
                options = router.route(options, name)
            options.pop("queue", None)
            options["declare"] = []  # the topology is the platform's: declare nothing
            # Celery also turns ``expires`` into a per-message TTL: RabbitMQ would then
            # dead-letter an expired message before any worker recorded it as a job, and
            # GET /api/v1/jobs/{id} would never know it. The ``expires`` header stays; the
            # platform ends the job ``expired`` by it.
            options.pop("expiration", None)
            _check_links(self.app, message)
            user = getattr(producer.connection, "userid", None)
            if user:
                # RabbitMQ refuses a user_id other than the connection's own user.
                options["user_id"] = user
            else:
                options.pop("user_id", None)
            return send(producer, name, message, **options)

        return send_task_message


def _check_links(app: Any, message: Any) -> None:
    """``UnknownTask`` if a ``link``/``link_error`` signature names a task the
    catalogue does not offer (the REST API refuses those too)."""
    body = getattr(message, "body", None)
    if not (isinstance(body, tuple) and len(body) == 3 and isinstance(body[2], dict)):
        return
    for option, role in (("callbacks", "link"), ("errbacks", "link_error")):
        for signature in body[2].get(option) or ():
            name = signature.get("task") if isinstance(signature, dict) else None
            if name is None:
                raise CatalogueError(f"{role} must be a signature of a task, "
                                     f"e.g. app.signature('demo.quick_task'), got {signature!r}")
            app.catalogue.route(name, role=role)

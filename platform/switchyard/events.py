"""The platform app's events (Celery's ``app.events``): the event exchange never declared.

Installed by ``switchyard/celery.py`` (``Celery(events=...)``). Every publisher and
worker sends events (task-sent, task-started, heartbeats) to ``celeryev``; Flower reads
them through its own ``celeryev.<id>`` queue bound to it. Celery declares the exchange
on every publish and before binding a receiver's queue, which needs ``configure`` on
the name ``celeryev``; RabbitMQ matches that against queues too, so Flower (which must
read ``celeryev`` to bind) could declare a queue ``celeryev`` of its own, and anyone
could delete the exchange. Here the exchange is the topology's
(``routing.topology.EVENT_EXCHANGE``, the same topic durable exchange Celery declares),
declared by the operator only.

Run by every Celery process (web, dispatcher, beat, workers, Flower).
"""
from __future__ import annotations

from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher
from celery.events.receiver import EventReceiver


class PlatformEventDispatcher(EventDispatcher):
    """Celery's event dispatcher, publishing to ``celeryev`` without declaring it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The producer made by enable() holds this same object, and publishes with
        # declare=[self.exchange]: with no_declare that declares nothing.
        self.exchange.no_declare = True


class PlatformEventReceiver(EventReceiver):
    """Celery's event receiver (Flower's): binds its own queue to ``celeryev`` without
    declaring the exchange."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.exchange.no_declare = True
        self.queue.exchange.no_declare = True


class PlatformEvents(Events):
    """``app.events`` with the dispatcher and receiver above."""

    dispatcher_cls = "switchyard.events:PlatformEventDispatcher"
    receiver_cls = "switchyard.events:PlatformEventReceiver"

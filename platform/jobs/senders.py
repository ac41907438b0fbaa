"""Who sent a delivery, as the broker vouches for it.

Every message's AMQP ``user_id`` property names the RabbitMQ user that published
it: RabbitMQ refuses a publish whose ``user_id`` is not the connection's own login
(https://www.rabbitmq.com/docs/validated-user-id), so no publisher can claim to be
another. The worker (``jobs.task``) asks ``delivery_sender`` of each delivery:

* a user of the platform's own roles (``SWITCHYARD_PLATFORM_BROKER_USERS``: the web,
  the dispatcher, beat, the workers, operators) sent a job the platform recorded;
* a tenant's broker user (``tenants.BrokerUser``, ``manage.py tenant_broker_user``)
  sent a Celery-native message for that tenant, whatever its headers say;
* anything else (no ``user_id``, a user nobody mapped, a disabled one, an inactive
  tenant) is refused with the reason.

Run by the worker. Broker users are read from the database at most every
``TTL`` seconds per user and process, so a tenant's message costs no extra round
trip in the common case, and a disabled user stops being honoured within ``TTL``.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from django.conf import settings

from tenants.models import Tenant
from tenants.selectors import broker_user_get

#: Seconds a broker user's mapping is reused by one process.
TTL = 10.0


@dataclass(frozen=True)
class Sender:
    """The publisher of a delivery: the platform, a tenant, or refused (``refusal``)."""

    username: str
    platform: bool = False
    tenant: Tenant | None = None
    refusal: str = ""


_cache: dict[str, tuple[float, Sender]] = {}
_lock = threading.Lock()


def _resolve(username: str) -> Sender:
    if username in settings.SWITCHYARD_PLATFORM_BROKER_USERS:
        return Sender(username=username, platform=True)
    user = broker_user_get(username=username)
    if user is None:
        return Sender(username=username, refusal=f"broker user {username!r} is not mapped to "
                                                 "a tenant (manage.py tenant_broker_user)")
    if user.disabled_at is not None:
        return Sender(username=username, refusal=f"broker user {username!r} was disabled")
    if not user.tenant.is_active:
        return Sender(username=username, refusal=f"tenant {user.tenant.name!r} is inactive")
    return Sender(username=username, tenant=user.tenant)


def delivery_sender(request) -> Sender:
    """The sender of the delivery ``request`` (a Celery task request)."""
    username = str(((getattr(request, "properties", None) or {}).get("user_id")) or "")
    if not username:
        return Sender(username="", refusal="the message has no user_id property: its sender "
                                           "is unknown (publish as your tenant's broker user)")
    now = time.monotonic()
    with _lock:
        cached = _cache.get(username)
    if cached is not None and now - cached[0] < TTL:
        return cached[1]
    sender = _resolve(username)
    with _lock:
        _cache[username] = (now, sender)
    return sender

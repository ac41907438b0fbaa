"""Writes on tenants, their API tokens and their broker users (web, admin and commands)."""
from __future__ import annotations

import hashlib
import secrets
import urllib.parse

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from routing import access
from routing.management import Management, vhost_of
from tenants.models import ApiToken, BrokerUser, Tenant

TOKEN_PREFIX = "sy_"


def token_hash(key: str) -> str:
    """SHA-256 of a token key. Tokens are 256-bit random, so a fast hash is enough."""
    return hashlib.sha256(key.encode()).hexdigest()


def token_create(*, tenant: Tenant) -> str:
    """Create a token for ``tenant``; return its key (stored only as a hash)."""
    key = TOKEN_PREFIX + secrets.token_urlsafe(32)
    ApiToken.objects.create(tenant=tenant, key_hash=token_hash(key), prefix=key[:10])
    return key


@transaction.atomic
def tenant_create(*, name: str, tier: str, weight: int = 1) -> tuple[Tenant, str]:
    """Create a tenant and its first API token; return both (the token's key in clear)."""
    tenant = Tenant(name=name, tier=tier, weight=weight)
    tenant.full_clean()
    tenant.save()
    return tenant, token_create(tenant=tenant)


# Broker users ---------------------------------------------------------------------------------

def _management() -> Management:
    """The management API, as the operator running the command (``RABBITMQ_MANAGEMENT_URL``
    to use an administrator other than the broker URL's user: creating users needs one)."""
    return Management.for_broker(settings.CELERY_BROKER_URL)


def _grant_broker_user(api: Management, vhost: str, user: str, tier: str) -> None:
    grant = access.TenantGrant(user=user, tier=tier)
    api.set_permissions(vhost, user, configure=grant.configure, write=grant.write,
                        read=grant.read)
    api.set_topic_permissions(vhost, user, exchange=grant.topic_exchange,
                              write=grant.topic_write, read=grant.topic_read)


def broker_user_issue(*, tenant: Tenant, service: str = "", host: str | None = None,
                      api: Management | None = None) -> tuple[BrokerUser, str]:
    """Create ``tenant``'s broker user (for ``service``, if given), or give it a new
    password; return it and the AMQP URL to publish with (the password in clear,
    shown once).

    The user may publish to ``tasks`` with its tier's routing keys only
    (``routing.access.TenantGrant``). A new password takes effect at the next
    connection: connections already open keep working, so a running service can be
    given the new URL and restarted at its own pace (docs/runbooks/rotating-credentials.md).
    """
    if not tenant.is_active:
        raise ValueError(f"tenant {tenant.name} is inactive")
    username = access.tenant_user(tenant.name, service,
                                  prefix=settings.SWITCHYARD_BROKER_USER_PREFIX)
    password = secrets.token_urlsafe(24)
    api = api or _management()
    vhost = vhost_of(settings.CELERY_BROKER_URL)
    api.put_user(username, password)
    _grant_broker_user(api, vhost, username, tenant.tier)
    now = timezone.now()
    user, created = BrokerUser.objects.get_or_create(
        username=username, defaults={"tenant": tenant, "service": service})
    if not created:
        BrokerUser.objects.filter(id=user.id).update(rotated_at=now, disabled_at=None)
        user.refresh_from_db()
    parts = urllib.parse.urlsplit(settings.CELERY_BROKER_URL)
    netloc = (f"{urllib.parse.quote(username, safe='')}:{urllib.parse.quote(password, safe='')}"
              f"@{host or parts.hostname or '127.0.0.1'}:{parts.port or 5672}")
    url = urllib.parse.urlunsplit((parts.scheme or "amqp", netloc, parts.path or "/", "", ""))
    return user, url


def broker_user_disable(*, user: BrokerUser, api: Management | None = None) -> int:
    """Remove ``user`` from RabbitMQ and close its connections; return how many were
    closed. Messages it sent before stay queued and are dead-lettered with the reason
    when a worker sees them (``jobs.senders``)."""
    api = api or _management()
    api.delete_user(user.username)
    closed = api.close_user_connections(user.username, "broker user disabled")
    BrokerUser.objects.filter(id=user.id).update(disabled_at=timezone.now())
    return closed


def broker_users_regrant(*, tenant: Tenant, api: Management | None = None) -> int:
    """Give every enabled broker user of ``tenant`` the topic permission of its current
    tier (after a tier change); return how many."""
    users = list(tenant.broker_users.filter(disabled_at__isnull=True))
    if users:
        api = api or _management()
        vhost = vhost_of(settings.CELERY_BROKER_URL)
        for user in users:
            _grant_broker_user(api, vhost, user.username, tenant.tier)
    return len(users)

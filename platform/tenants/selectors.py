"""Reads on tenants."""
from __future__ import annotations

from tenants.models import ApiToken, BrokerUser, Tenant
from tenants.services import token_hash


def tenant_by_token(*, key: str) -> Tenant | None:
    """The active tenant owning the unrevoked token ``key``, else None."""
    token = (
        ApiToken.objects.select_related("tenant")
        .filter(key_hash=token_hash(key), revoked_at__isnull=True, tenant__is_active=True)
        .first()
    )
    return token.tenant if token else None


def tenant_by_name(*, name: str) -> Tenant | None:
    return Tenant.objects.filter(name=name).first()


def broker_user_get(*, username: str) -> BrokerUser | None:
    """The broker user ``username`` with its tenant (disabled ones too), or None."""
    return BrokerUser.objects.select_related("tenant").filter(username=username).first()

"""Writes on tenants and tokens."""
from __future__ import annotations

import hashlib
import secrets

from django.db import transaction

from tenants.models import ApiToken, Tenant

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

"""``Authorization: Token <key>`` authentication for the API: the caller is a tenant."""
from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from tenants.models import Tenant
from tenants.selectors import tenant_by_token


class TenantPrincipal:
    """The authenticated caller (``request.user``); the tenant is ``request.auth``."""

    is_authenticated = True
    is_anonymous = False

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant

    def __str__(self) -> str:
        return self.tenant.name


class TenantTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Token"

    def authenticate(self, request):
        parts = authentication.get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword.lower().encode():
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Authorization header must be 'Token <key>'")
        try:
            key = parts[1].decode()
        except UnicodeDecodeError as exc:
            raise exceptions.AuthenticationFailed("token is not valid text") from exc
        tenant = tenant_by_token(key=key)
        if tenant is None:
            raise exceptions.AuthenticationFailed("invalid or revoked token, or inactive tenant")
        return TenantPrincipal(tenant), tenant

    def authenticate_header(self, request) -> str:
        # Makes DRF answer 401 (with WWW-Authenticate), not 403, without credentials.
        return self.keyword


class TenantTokenScheme(OpenApiAuthenticationExtension):
    """Describes the token scheme in the OpenAPI schema."""

    target_class = "tenants.authentication.TenantTokenAuthentication"
    name = "tenantToken"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "`Token <key>`, the key printed by `manage.py create_tenant`"}

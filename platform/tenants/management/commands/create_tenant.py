"""``manage.py create_tenant NAME --tier premium|standard``: prints the token on its last line."""
from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from tenants.models import Tenant
from tenants.services import tenant_create


class Command(BaseCommand):
    help = "Create a tenant and print its API token (alone, on the last line)."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--tier", choices=[c.value for c in Tenant.Tier], required=True)
        parser.add_argument("--weight", type=int, default=1)

    def handle(self, *args, name: str, tier: str, weight: int, **options):
        try:
            tenant, key = tenant_create(name=name, tier=tier, weight=weight)
        except ValidationError as exc:
            details = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in
                                exc.message_dict.items())
            raise CommandError(f"cannot create tenant {name!r}: {details}") from exc
        self.stderr.write(f"created tenant {tenant.name} (tier {tenant.tier}); its API token:")
        self.stdout.write(key)

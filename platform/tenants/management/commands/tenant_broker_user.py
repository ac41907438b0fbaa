"""``manage.py tenant_broker_user NAME [--service S] [--disable]``: a tenant's RabbitMQ user.

Creates the user, or gives it a new password (rotation), and prints the AMQP URL to
publish with on its last line; ``--disable`` removes it and closes its connections.
Needs the management API as an administrator: ``RABBITMQ_MANAGEMENT_URL``, or the broker
URL's own user when it is one (development).
"""
from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from routing import access
from routing.management import ManagementError
from tenants.models import BrokerUser, Tenant
from tenants.services import broker_user_disable, broker_user_issue


class Command(BaseCommand):
    help = ("Create or rotate a tenant's RabbitMQ user for Celery-native calls and print "
            "its AMQP URL (alone, on the last line); --disable removes it.")

    def add_arguments(self, parser):
        parser.add_argument("name", help="the tenant's name")
        parser.add_argument("--service", default="",
                            help="a service of the tenant's with a user of its own")
        parser.add_argument("--host", default=None,
                            help="the broker's host as the service reaches it (default: "
                                 "the host of CELERY_BROKER_URL)")
        parser.add_argument("--disable", action="store_true",
                            help="remove the user from RabbitMQ and close its connections")

    def handle(self, *args, name: str, service: str, host: str | None, disable: bool,
               **options):
        tenant = Tenant.objects.filter(name=name).first()
        if tenant is None:
            raise CommandError(f"no tenant {name!r}")
        try:
            username = access.tenant_user(tenant.name, service,
                                          prefix=settings.SWITCHYARD_BROKER_USER_PREFIX)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        try:
            if disable:
                user = BrokerUser.objects.filter(username=username).first()
                if user is None:
                    raise CommandError(f"tenant {name} has no broker user {username!r}")
                closed = broker_user_disable(user=user)
                self.stdout.write(f"disabled {username}; closed {closed} connection(s)")
                return
            user, url = broker_user_issue(tenant=tenant, service=service, host=host)
        except (ManagementError, ValueError) as exc:
            raise CommandError(f"cannot set up broker user {username!r}: {exc}") from exc
        what = "new password for" if user.rotated_at else "created"
        keys = access.TenantGrant(username, tenant.tier).topic_write
        self.stderr.write(f"{what} broker user {username} of tenant {tenant.name} (tier "
                          f"{tenant.tier}: it may publish routing keys {keys} to 'tasks'); "
                          "its AMQP URL:")
        self.stdout.write(url)

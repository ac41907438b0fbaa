"""Helpers for the deploy tests: the definitions' users, made real on the run's broker.

RabbitMQ users are node-wide, so the users imported here carry a prefix unique
to the test (``<run id>-<hex>-switchyard-web``) and are deleted afterwards;
their permissions are on a vhost the test owns. Nothing node-wide is changed
for anyone else.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, unquote, urlsplit

from routing import access, definitions
from routing.management import Management


@contextmanager
def imported_users(management: Management, vhost: str, amqp_host: str = "127.0.0.1:5672",
                   ) -> Iterator[dict[str, str]]:
    """Import ``python -m routing definitions`` (with passwords) for ``vhost`` through the
    management API, as a broker loads it at boot; yield ``{role: AMQP URL}``.

    The document is the generated one; only the user names get the test's prefix.
    """
    prefix = f"t{secrets.token_hex(3)}-"
    passwords = {g.user: secrets.token_urlsafe(18) for g in access.grants()}
    doc = definitions.definitions(vhost, passwords)
    for user in doc["users"]:
        user["name"] = prefix + user["name"]
    for permission in doc["permissions"]:
        permission["user"] = prefix + permission["user"]
    try:
        management.request("POST", "definitions", doc)
        yield {
            g.role: f"amqp://{quote(prefix + g.user, safe='')}:{passwords[g.user]}@{amqp_host}/"
                    f"{quote(vhost, safe='')}"
            for g in access.grants()
        }
    finally:
        for user in doc["users"]:
            try:
                management.request("DELETE", f"users/{Management.q(user['name'])}")
            except Exception:  # noqa: BLE001 - best effort; the next user still goes
                pass


def platform_users(urls: dict[str, str]) -> str:
    """``SWITCHYARD_PLATFORM_BROKER_USERS`` for roles logged in with ``urls``
    (``imported_users``): their users' names carry the test's prefix, so the workers
    must be told which users are the platform's, as an operator with other names would."""
    users = {unquote(urlsplit(url).username) for role, url in urls.items()
             if role in access.PLATFORM_ROLES}
    # And the test process's own login (guest), which submits the tests' jobs.
    users.update(u for u in os.environ.get("SWITCHYARD_PLATFORM_BROKER_USERS", "").split(",")
                 if u)
    return ",".join(sorted(users))


def management_url(amqp_url: str, management: Management) -> str:
    """The management API URL with the login of ``amqp_url``."""
    from urllib.parse import urlsplit

    parts = urlsplit(amqp_url)
    scheme, rest = management.base.split("://", 1)
    return f"{scheme}://{parts.username}:{parts.password}@{rest}"

"""A small client for the RabbitMQ management HTTP API (standard library only).

``verify`` needs it because AMQP cannot read a queue's arguments back (a
passive declare ignores them); the test fixtures use it to create and delete
their own vhost. The management plugin must be enabled:
``rabbitmq-plugins enable rabbitmq_management``.
"""
from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULT_MANAGEMENT_PORT = 15672


class ManagementError(RuntimeError):
    """The management API could not be reached or answered with an error."""


def broker_url() -> str:
    """The broker every Switchyard component uses: ``CELERY_BROKER_URL``."""
    return os.environ.get("CELERY_BROKER_URL") or DEFAULT_BROKER_URL


def vhost_of(amqp_url: str) -> str:
    """The vhost an AMQP URL names: ``amqp://h//`` and ``amqp://h`` are ``/``."""
    path = urllib.parse.urlsplit(amqp_url).path
    if path in ("", "/"):
        return "/"
    return urllib.parse.unquote(path[1:])


def with_vhost(amqp_url: str, vhost: str) -> str:
    """Return ``amqp_url`` pointed at ``vhost``."""
    parts = urllib.parse.urlsplit(amqp_url)
    return urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc, "/" + urllib.parse.quote(vhost, safe=""), parts.query, "")
    )


def management_url_for(amqp_url: str) -> str:
    """``RABBITMQ_MANAGEMENT_URL`` if set, else the broker's host on port 15672
    with the broker's credentials."""
    explicit = os.environ.get("RABBITMQ_MANAGEMENT_URL")
    if explicit:
        return explicit.rstrip("/")
    parts = urllib.parse.urlsplit(amqp_url)
    scheme = "https" if parts.scheme == "amqps" else "http"
    user = urllib.parse.unquote(parts.username or "guest")
    password = urllib.parse.unquote(parts.password or "guest")
    host = parts.hostname or "127.0.0.1"
    cred = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
    return f"{scheme}://{cred}@{host}:{DEFAULT_MANAGEMENT_PORT}"


@dataclass
class Management:
    """Calls on one management API, e.g. ``Management.from_url("http://u:p@h:15672")``."""

    base: str
    user: str
    password: str
    timeout: float = 5.0

    @classmethod
    def from_url(cls, url: str, timeout: float = 5.0) -> Management:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.hostname or "127.0.0.1"
        if parts.port:
            netloc += f":{parts.port}"
        base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        return cls(
            base=base,
            user=urllib.parse.unquote(parts.username or "guest"),
            password=urllib.parse.unquote(parts.password or "guest"),
            timeout=timeout,
        )

    @classmethod
    def for_broker(cls, amqp_url: str | None = None, timeout: float = 5.0) -> Management:
        return cls.from_url(management_url_for(amqp_url or broker_url()), timeout=timeout)

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> Any:
        """Call ``/api/<path>``; return the decoded JSON (None for an empty answer)."""
        url = f"{self.base}/api/{path.lstrip('/')}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise ManagementError(f"{method} {url}: HTTP {exc.code} {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ManagementError(
                f"{method} {url}: management API unreachable ({exc}); is the "
                "rabbitmq_management plugin enabled?"
            ) from exc
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def get_or_none(self, path: str) -> Any:
        """GET, but None for a 404 (a queue or exchange that does not exist)."""
        try:
            return self.get(path)
        except ManagementError as exc:
            if "HTTP 404" in str(exc):
                return None
            raise

    # -- vhosts ---------------------------------------------------------------------------

    @staticmethod
    def q(name: str) -> str:
        """Quote one path segment (``/`` is ``%2F``)."""
        return urllib.parse.quote(name, safe="")

    def create_vhost(self, vhost: str, user: str | None = None) -> None:
        """Create ``vhost`` and give ``user`` (default: ours) every permission on it."""
        self.request("PUT", f"vhosts/{self.q(vhost)}", {})
        self.request(
            "PUT",
            f"permissions/{self.q(vhost)}/{self.q(user or self.user)}",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )

    def delete_if_present(self, path: str) -> None:
        """``DELETE /api/<path>``; a 404 (already gone) is not an error."""
        try:
            self.request("DELETE", path)
        except ManagementError as exc:
            if "HTTP 404" not in str(exc):
                raise

    def delete_vhost(self, vhost: str) -> None:
        self.delete_if_present(f"vhosts/{self.q(vhost)}")

    # -- users (tenants' broker users: manage.py tenant_broker_user) ---------------------

    def put_user(self, name: str, password: str, tags: str = "") -> None:
        """Create ``name``, or set its password (its open connections stay open)."""
        self.request("PUT", f"users/{self.q(name)}", {"password": password, "tags": tags})

    def user_record(self, name: str) -> dict[str, Any] | None:
        return self.get_or_none(f"users/{self.q(name)}")

    def delete_user(self, name: str) -> None:
        self.delete_if_present(f"users/{self.q(name)}")

    def set_permissions(self, vhost: str, user: str, *, configure: str, write: str,
                        read: str) -> None:
        self.request("PUT", f"permissions/{self.q(vhost)}/{self.q(user)}",
                     {"configure": configure, "write": write, "read": read})

    def set_topic_permissions(self, vhost: str, user: str, *, exchange: str, write: str,
                              read: str) -> None:
        self.request("PUT", f"topic-permissions/{self.q(vhost)}/{self.q(user)}",
                     {"exchange": exchange, "write": write, "read": read})

    def close_user_connections(self, user: str, reason: str) -> int:
        """Close every connection ``user`` has open (any vhost); return how many."""
        closed = 0
        for conn in self.get("connections") or []:
            if conn.get("user") == user:
                try:
                    self.request("DELETE", f"connections/{self.q(conn['name'])}",
                                 headers={"X-Reason": reason})
                    closed += 1
                except ManagementError as exc:
                    if "HTTP 404" not in str(exc):  # closed meanwhile
                        raise
        return closed

    # -- reads used by verify, metrics and operators -------------------------------------

    def queue(self, vhost: str, name: str) -> dict[str, Any] | None:
        return self.get_or_none(f"queues/{self.q(vhost)}/{self.q(name)}")

    def queues(self, vhost: str) -> list[dict[str, Any]]:
        return self.get(f"queues/{self.q(vhost)}") or []

    def exchange(self, vhost: str, name: str) -> dict[str, Any] | None:
        return self.get_or_none(f"exchanges/{self.q(vhost)}/{self.q(name)}")

    def bindings(self, vhost: str) -> list[dict[str, Any]]:
        return self.get(f"bindings/{self.q(vhost)}") or []

    def channels(self, vhost: str) -> list[dict[str, Any]]:
        return self.get(f"vhosts/{self.q(vhost)}/channels") or []

    def consumers(self, vhost: str) -> list[dict[str, Any]]:
        return self.get(f"consumers/{self.q(vhost)}") or []

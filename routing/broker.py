"""AMQP connections for the operator commands (pika's BlockingConnection).

One place turns a broker URL into a pika connection, so every command reads
URLs the way the rest of Switchyard (kombu, Celery) does, and turns pika's
connection errors into one readable message instead of a traceback.
"""
from __future__ import annotations

import urllib.parse

import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import (
    AMQPConnectionError,
    ProbableAccessDeniedError,
    ProbableAuthenticationError,
)

from .management import vhost_of


class BrokerUnreachable(RuntimeError):
    """RabbitMQ could not be reached, or refused the login or the vhost."""


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, safe to print in CI logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit(
        (parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment)
    )


def describe(url: str) -> str:
    """Where a URL points, for messages: ``vhost '/' on 127.0.0.1:5672``."""
    parts = urllib.parse.urlsplit(url)
    default_port = 5671 if parts.scheme == "amqps" else 5672
    host = parts.hostname or "localhost"
    return f"vhost {vhost_of(url)!r} on {host}:{parts.port or default_port}"


def parameters(url: str) -> pika.URLParameters:
    """pika parameters for a kombu-style AMQP URL.

    pika reads ``amqp://host//`` (kombu's and Celery's spelling of vhost ``/``,
    and our default URL) as the empty vhost, so the vhost is set from
    ``vhost_of`` instead. Timeouts are short because a person is waiting:
    an unreachable broker must fail in seconds, a blocked one (memory or disk
    alarm) must not hang a recreate forever. Values given in the URL's query
    string win.
    """
    params = pika.URLParameters(url)
    params.virtual_host = vhost_of(url)
    given = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    if "socket_timeout" not in given:
        params.socket_timeout = 5
    if "stack_timeout" not in given:
        params.stack_timeout = 10
    if "blocked_connection_timeout" not in given:
        params.blocked_connection_timeout = 60
    return params


def _reason(exc: AMQPConnectionError) -> str:
    """The socket-level cause, e.g. ``[Errno 111] Connection refused``.

    pika wraps it (``AMQPConnectorSocketConnectError(ConnectionRefusedError)``)
    in an exception whose ``str()`` is empty.
    """
    causes = []
    for arg in exc.args:
        inner = getattr(arg, "exception", None)
        causes.append(str(inner) if inner is not None else (str(arg) or repr(arg)))
    return "; ".join(c for c in causes if c) or repr(exc)


def connect(url: str) -> BlockingConnection:
    """Open a connection or raise ``BrokerUnreachable`` saying why, in words."""
    where = f"{describe(url)} ({redact(url)})"
    try:
        return pika.BlockingConnection(parameters(url))
    except ProbableAuthenticationError as exc:
        raise BrokerUnreachable(f"RabbitMQ at {where} refused the login: {exc}") from exc
    except ProbableAccessDeniedError as exc:
        raise BrokerUnreachable(
            f"RabbitMQ at {where} refused access to the vhost (missing, or no permission "
            f"for this user): {exc}"
        ) from exc
    except AMQPConnectionError as exc:
        reason = _reason(exc)
        raise BrokerUnreachable(
            f"cannot connect to RabbitMQ at {where}: {reason}. Is the broker running, and "
            "is --url (or CELERY_BROKER_URL) right?"
        ) from exc
    except ValueError as exc:  # a malformed URL
        raise BrokerUnreachable(f"invalid broker URL {redact(url)!r}: {exc}") from exc


def confirmed_channel(connection: BlockingConnection) -> BlockingChannel:
    """A new channel with publisher confirms: publishes return once the broker has them."""
    channel = connection.channel()
    channel.confirm_delivery()
    return channel

"""Who may do what on the broker: one RabbitMQ user per Switchyard role, least privilege.

RabbitMQ grants three regular expressions per user and vhost: ``configure``
(declare and delete), ``write`` (publish to an exchange; bind a queue) and
``read`` (consume from or purge a queue; bind from an exchange). The grants
below are derived from the topology's names, so a new lane gets its worker
user with the next ``python -m routing definitions``.

RabbitMQ matches each regex against a bare resource name, whatever its kind:
``configure`` on ``tasks`` lets a user declare (or delete) a *queue* named
``tasks`` as well as the exchange. So the grants keep one rule: **no role may
configure a name it may read, except its own private (exclusive) queues**, and
none may configure an exchange or a lane queue at all. Every exchange and lane
queue is declared by the operator (``python -m routing apply``,
definitions.json); Switchyard's processes declare none of them
(``routing.celery_config.task_queues``, ``switchyard.control``,
``switchyard.events``).

What each role really does on the broker, and so needs:

* publishers (``web``, ``dispatcher``, ``beat``) publish task messages to
  ``tasks`` and ``task-sent`` events to ``celeryev``: write on those two
  exchanges, nothing to configure, nothing to read. The dispatcher also has
  the ``management`` tag: its census of each lane (``jobs.reconcile``) reads the
  lane queues' message counts from the management API.
* the worker of lane L consumes only queue L (read). It also publishes
  follow-up jobs (``link``) to ``tasks``, dead-letters undecodable messages to
  ``tasks.dlx``, sends events to ``celeryev``, and answers control commands:
  its own exclusive ``L@<host>.switchyard.pidbox`` queue (configure, write to
  bind it, read), bound to ``switchyard.pidbox`` (read), and its replies go to
  ``reply.switchyard.pidbox`` (write). It may not broadcast: no write on
  ``switchyard.pidbox`` (nor on Celery's default ``celery.pidbox``).
* ``flower`` reads events through its own ``celeryev.<id>`` queue, broadcasts
  control commands (write on ``switchyard.pidbox``) and reads their replies
  through its own ``<id>.reply.switchyard.pidbox`` queue; queue lengths come
  from the management API.
* ``operator`` runs ``python -m routing``, ``manage.py dlq`` and ``manage.py
  drain``: everything on the vhost (it declares the topology), plus the
  management API. No node-wide administration: that stays with ``rabbitmqctl``
  on the broker's hosts. It is the one role the rule above does not hold for.
* ``keda`` reads queue depths from the management API and can touch no
  message (empty grants).
* a **tenant's** user (``tenant-<name>``, or ``tenant-<name>.<service>`` for one
  of its services; created by ``manage.py tenant_broker_user``, not by
  definitions.json) publishes Celery-native task messages to ``tasks`` and
  nothing else: no configure, no read, and a topic permission that lets it use
  only its own tier's routing keys. Its messages carry the AMQP ``user_id``
  property, which RabbitMQ refuses to let a connection forge, so the worker
  knows which tenant sent them (``jobs.senders``).
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from . import topology

#: Celery's exchanges, as the topology declares them.
EVENT_EXCHANGE = topology.EVENT_EXCHANGE_NAME
CONTROL_EXCHANGE = topology.CONTROL_EXCHANGE_NAME
REPLY_EXCHANGE = topology.REPLY_EXCHANGE_NAME
#: The algorithm RabbitMQ 3.6+ and 4.x use by default for stored passwords.
HASHING_ALGORITHM = "rabbit_password_hashing_sha256"
#: Values of ``.env.example`` that must never reach a broker.
PLACEHOLDER_PREFIX = "change-me"
MIN_PASSWORD_LENGTH = 16
USER_PREFIX = "switchyard-"


def _exactly(*names: str) -> str:
    """A regex matching exactly these names (and nothing longer)."""
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


def _either(*patterns: str) -> str:
    return "^(" + "|".join(patterns) + ")$"


_NS = re.escape(topology.CONTROL_NAMESPACE)
#: ``<oid>.reply.switchyard.pidbox``: the queue a control command's replies come back on.
REPLY_QUEUES = r"[^.@]+\.reply\." + _NS + r"\.pidbox"
#: ``celeryev.<uuid>``: an event receiver's queue (Flower).
EVENT_QUEUES = re.escape(EVENT_EXCHANGE) + r"\.[^.@]+"


def _pidbox_queues(lane: str) -> str:
    """``<lane>@<host>.switchyard.pidbox``: the control queue of a worker of ``lane``
    (workers are named ``<lane>@%h`` by ``deploy/bin/worker``)."""
    return re.escape(lane) + r"@.+\." + _NS + r"\.pidbox"


NOTHING = "^$"


@dataclass(frozen=True)
class Grant:
    """One role's user and what it may do on the vhost."""

    role: str
    description: str
    configure: str
    write: str
    read: str
    tags: tuple[str, ...] = ()

    @property
    def user(self) -> str:
        return USER_PREFIX + self.role

    @property
    def password_variable(self) -> str:
        """The environment variable holding this user's password at deploy time."""
        return "SWITCHYARD_RABBITMQ_PASSWORD_" + self.role.upper().replace("-", "_")


def publisher_grant(role: str, description: str, tags: tuple[str, ...] = ()) -> Grant:
    return Grant(
        role=role,
        description=description,
        configure=NOTHING,
        write=_exactly(topology.EXCHANGE_NAME, EVENT_EXCHANGE),
        read=NOTHING,
        tags=tags,
    )


def worker_grant(lane: topology.Lane) -> Grant:
    own = _pidbox_queues(lane.name)
    return Grant(
        role=f"worker-{lane.name}",
        description=f"the {lane.name} lane's workers: consume queue {lane.queue!r} only",
        configure=_either(own),
        write=_either(*map(re.escape, (topology.EXCHANGE_NAME, topology.DLX_NAME,
                                       EVENT_EXCHANGE, REPLY_EXCHANGE)), own),
        read=_either(re.escape(lane.queue), re.escape(CONTROL_EXCHANGE), own),
    )


def grants() -> list[Grant]:
    """Every role's grant, in a stable order (publishers, workers per lane, the rest)."""
    found = [
        publisher_grant("web", "the web and API: publishes task messages to 'tasks'"),
        # The management tag: its census of each lane queue (jobs.reconcile) reads the
        # queues' message counts from the management API; it can touch no message there.
        publisher_grant("dispatcher", "the dispatcher: publishes due and lost jobs to 'tasks'; "
                        "reads lane queue depths (management API)", tags=("management",)),
        publisher_grant("beat", "celery beat: publishes the periodic jobs to 'tasks'"),
    ]
    found += [worker_grant(lane) for lane in topology.LANES]
    found += [
        Grant(
            role="flower",
            description="Flower: reads events, sends control commands, reads queue lengths",
            configure=_either(EVENT_QUEUES, REPLY_QUEUES),
            write=_either(re.escape(CONTROL_EXCHANGE), EVENT_QUEUES, REPLY_QUEUES),
            read=_either(re.escape(EVENT_EXCHANGE), re.escape(REPLY_EXCHANGE), EVENT_QUEUES,
                         REPLY_QUEUES),
            tags=("management",),
        ),
        Grant(
            role="operator",
            description="operators: python -m routing, manage.py dlq and drain, the "
            "management UI of this vhost",
            configure=".*", write=".*", read=".*",
            tags=("management",),
        ),
        Grant(
            role="keda",
            description="KEDA's rabbitmq scaler: reads queue depths, touches no message",
            configure="", write="", read="",
            tags=("management",),
        ),
    ]
    return found


#: The roles whose messages are the platform's own (``jobs.senders``): they publish jobs
#: that are already recorded, for any tenant.
PLATFORM_ROLES = ("web", "dispatcher", "beat", "operator",
                  *(f"worker-{lane.name}" for lane in topology.LANES))
#: Prefix of the RabbitMQ users of tenants (never a role's ``switchyard-`` prefix).
TENANT_USER_PREFIX = "tenant-"
#: A tenant's name, or a service's (``manage.py tenant_broker_user --service``).
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def platform_users() -> frozenset[str]:
    """The RabbitMQ users of the platform's own roles (``switchyard-web``, ...)."""
    return frozenset(grant(role).user for role in PLATFORM_ROLES)


def tenant_user(tenant: str, service: str = "", *, prefix: str = TENANT_USER_PREFIX) -> str:
    """The RabbitMQ user a tenant's service publishes as: ``tenant-<tenant>`` or
    ``tenant-<tenant>.<service>`` (names of lower-case letters, digits, ``-``, ``_``)."""
    for what, value in (("tenant", tenant), ("service", service)):
        if (value or what == "tenant") and not _NAME.match(value):
            raise ValueError(f"{what} name {value!r}: lower-case letters, digits, - and _")
    return prefix + tenant + (f".{service}" if service else "")


@dataclass(frozen=True)
class TenantGrant:
    """What a tenant's user may do on the vhost: publish task messages of its tier to
    ``tasks``, nothing else (RabbitMQ: permissions plus a topic permission)."""

    user: str
    tier: str
    configure: str = NOTHING
    write: str = _exactly(topology.EXCHANGE_NAME)
    read: str = NOTHING
    topic_exchange: str = topology.EXCHANGE_NAME

    @property
    def topic_write(self) -> str:
        """Routing keys it may publish with: ``<any lane>.<its tier>.<any task>``."""
        lanes = "|".join(re.escape(lane.name) for lane in topology.LANES)
        return rf"^({lanes})\.{re.escape(self.tier)}\..+$"

    #: It binds nothing to ``tasks``: no routing key may be read.
    topic_read: str = NOTHING


def grant(role: str) -> Grant:
    """The grant of ``role``; ``KeyError`` names the roles."""
    by_role = {g.role: g for g in grants()}
    try:
        return by_role[role]
    except KeyError:
        raise KeyError(f"unknown role {role!r}; roles: {', '.join(by_role)}") from None


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password)),
    with a 4-byte salt. What ``password_hash`` holds in definitions."""
    salt = os.urandom(4) if salt is None else salt
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


class MissingPasswords(ValueError):
    """Some role has no usable password in the environment."""


def passwords_from_env(environ: Mapping[str, str] | None = None,
                       roles: Iterable[Grant] | None = None) -> dict[str, str]:
    """``{user: password}`` for every role, from ``SWITCHYARD_RABBITMQ_PASSWORD_<ROLE>``.

    Refuses (``MissingPasswords``, naming every bad variable) an unset value,
    the placeholder of ``.env.example``, or one shorter than 16 characters:
    a broker must never boot with a guessable login.
    """
    environ = os.environ if environ is None else environ
    found: dict[str, str] = {}
    problems = []
    for g in roles if roles is not None else grants():
        value = environ.get(g.password_variable, "")
        if not value:
            problems.append(f"{g.password_variable} is not set")
        elif value.startswith(PLACEHOLDER_PREFIX):
            problems.append(f"{g.password_variable} is still the placeholder {value!r}")
        elif len(value) < MIN_PASSWORD_LENGTH:
            problems.append(f"{g.password_variable} is shorter than {MIN_PASSWORD_LENGTH} "
                            "characters")
        else:
            found[g.user] = value
    if problems:
        raise MissingPasswords("; ".join(problems))
    return found

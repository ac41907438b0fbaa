"""A tenant's broker user (``manage.py tenant_broker_user``), on the real broker: what it may
do, what it may not, and rotating and disabling it while its service is connected."""
from __future__ import annotations

import io
import time

import amqp
import pytest
from django.conf import settings
from django.core.management import call_command
from kombu import Connection, Exchange, Queue

from tenants.models import BrokerUser, Tenant
from tests.processes import wait_until

pytestmark = pytest.mark.rabbitmq


def issue(name: str, *args: str) -> str:
    """Run the command as an operator would; its last line (the AMQP URL)."""
    out, err = io.StringIO(), io.StringIO()
    call_command("tenant_broker_user", name, *args, stdout=out, stderr=err)
    return out.getvalue().strip().splitlines()[-1]


def publish(url: str, routing_key: str, **properties) -> None:
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        producer = conn.Producer(exchange=Exchange("tasks", type="topic", no_declare=True))
        producer.publish({"probe": 1}, routing_key=routing_key, declare=[], retry=False,
                         **properties)


def refused(action) -> str:
    try:
        action()
    except (amqp.exceptions.AMQPError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError("the broker allowed it")


@pytest.fixture
def acme(db, topology_applied, lanes_empty):
    return Tenant.objects.create(name="acme", tier="standard")


def test_a_tenant_user_publishes_its_tiers_task_messages_and_nothing_else(acme, management):
    url = issue("acme")
    user = BrokerUser.objects.get(tenant=acme)
    assert url.startswith(f"amqp://{user.username}:") and settings.TEST_VHOST in url
    # It may publish to tasks with its own tier's routing keys, as its own user_id
    publish(url, "quick.standard.demo.quick_task", user_id=user.username)
    wait_until(lambda: management.queue(settings.TEST_VHOST, "quick").get("messages") == 1, 10,
               "its message in quick")
    # And nothing else: another tier's keys, another user_id, declaring, consuming
    assert "ACCESS_REFUSED" in refused(lambda: publish(url, "quick.premium.demo.quick_task"))
    assert "PRECONDITION_FAILED" in refused(
        lambda: publish(url, "quick.standard.demo.quick_task", user_id="switchyard-web"))

    def declare():
        with Connection(url) as conn:
            Queue("tasks", Exchange("tasks", type="topic", passive=True),
                  routing_key="#")(conn.default_channel).declare()

    def consume():
        with Connection(url) as conn:
            Queue("quick", no_declare=True)(conn.default_channel).get()

    assert "ACCESS_REFUSED" in refused(declare)
    assert "ACCESS_REFUSED" in refused(consume)


def test_rotating_keeps_open_connections_and_refuses_the_old_password(acme):
    old = issue("acme")
    with Connection(old, transport_options={"confirm_publish": True}) as running:
        running.connect()
        # When the password is rotated while the service is connected
        new = issue("acme")
        assert new != old and BrokerUser.objects.get(tenant=acme).rotated_at is not None
        # Then the running connection keeps publishing, new connections need the new one
        producer = running.Producer(exchange=Exchange("tasks", type="topic", no_declare=True))
        producer.publish({}, routing_key="quick.standard.demo.quick_task", declare=[],
                         user_id=BrokerUser.objects.get(tenant=acme).username)
    publish(new, "quick.standard.demo.quick_task")
    assert "ACCESS_REFUSED" in refused(lambda: Connection(old).connect())


def test_disabling_closes_its_connections_and_refuses_new_ones(acme, management):
    url = issue("acme", "--service", "billing")
    user = BrokerUser.objects.get(username__endswith="acme.billing")
    with Connection(url) as conn:
        conn.connect()
        wait_until(lambda: any(c.get("user") == user.username
                               for c in management.get("connections")), 15,
                   "its connection in the management API")
        out = io.StringIO()
        call_command("tenant_broker_user", "acme", "--service", "billing", "--disable",
                     stdout=out)
        assert "closed 1 connection(s)" in out.getvalue()
        time.sleep(0.5)
        assert "ACCESS_REFUSED" in refused(lambda: Connection(url).connect())
    user.refresh_from_db()
    assert user.disabled_at is not None


def test_a_tier_change_in_the_admin_moves_its_users_to_the_new_tiers_keys(acme, admin_client):
    # Given a standard tenant's broker user
    url = issue("acme")
    # When an operator makes the tenant premium in the admin
    response = admin_client.post(f"/admin/tenants/tenant/{acme.id}/change/", {
        "name": "acme", "tier": "premium", "is_active": "on", "weight": 1,
        "max_queued_jobs": 100_000, "submissions_per_minute": 6_000,
        "max_storage_bytes": 50 * 1024**3,
        "tokens-TOTAL_FORMS": 0, "tokens-INITIAL_FORMS": 0,
        "broker_users-TOTAL_FORMS": 1, "broker_users-INITIAL_FORMS": 1,
        "broker_users-0-id": acme.broker_users.get().id, "broker_users-0-tenant": acme.id})
    assert response.status_code == 302, response.content[:2000]
    # Then it publishes premium keys, and no longer standard ones
    publish(url, "quick.premium.demo.quick_task")
    assert "ACCESS_REFUSED" in refused(lambda: publish(url, "quick.standard.demo.quick_task"))

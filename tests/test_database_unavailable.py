"""A database that cannot answer is a 503 with ``Retry-After``, never a 500, on any database.

The real failure first: the test's own connection pointed at a closed port for a few
requests (PostgreSQL refusing connections, as while it restarts), then put back. Then the
errors a driver raises mid-request that a closed port does not produce (SQLite's lock
still held after its busy timeout, a connection lost under a query), raised from inside
the submission service. SQLite's real lock is held by tests/test_sqlite.py.
"""
from __future__ import annotations

import contextlib
import json
import logging
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, InterfaceError, OperationalError, connection
from django.test import Client
from rest_framework.test import APIClient

from jobs.models import Job
from switchyard.api_errors import DATABASE_RETRY_AFTER
from tenants.services import tenant_create
from tests.test_platform import free_port


@pytest.fixture
def tenant_client(transactional_db) -> APIClient:
    _, key = tenant_create(name="unavailable", tier="premium")
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


@contextlib.contextmanager
def database_at_a_closed_port():
    """This thread's connection to the database goes to a port where nothing listens:
    the next query is refused, as by a PostgreSQL that is down or restarting."""
    port = free_port()  # bound then closed: nothing listens there now
    saved = {key: connection.settings_dict[key] for key in ("HOST", "PORT")}
    connection.close()
    connection.settings_dict.update(HOST="127.0.0.1", PORT=str(port))
    try:
        yield port
    finally:
        connection.close()
        connection.settings_dict.update(saved)


def assert_unavailable(response, *secrets: str) -> dict:
    """A 503 in the API's error shape, with Retry-After and no word of the database's own."""
    assert response.status_code == 503, response.content[:500]
    assert response["Retry-After"] == str(DATABASE_RETRY_AFTER)
    assert response["Content-Type"].startswith("application/json")
    body = json.loads(response.content)
    assert set(body) == {"detail"} and "database" in body["detail"]
    text = response.content.decode()
    for secret in secrets:
        assert secret not in text, secret
    return body


JOB = {"task": "demo.quick_task", "params": {"x": 1}}


def test_postgresql_refusing_connections_is_503_then_recovers(tenant_client, caplog):
    assert connection.vendor == "postgresql", "this test is about PostgreSQL"
    caplog.set_level(logging.ERROR, logger="switchyard.api_errors")
    # Given a database that refuses connections
    with database_at_a_closed_port() as port:
        # When jobs are submitted, read and listed
        submitted = tenant_client.post("/api/v1/jobs", JOB, format="json")
        listed = tenant_client.get("/api/v1/jobs")
        health = tenant_client.get("/healthz")
    # Then each is 503 with Retry-After, naming neither host, port nor driver
    leaks = ("127.0.0.1", str(port), "refused", "psycopg", "OperationalError")
    assert_unavailable(submitted, *leaks)
    assert_unavailable(listed, *leaks)
    assert health.status_code == 503 and health["Retry-After"] == str(DATABASE_RETRY_AFTER)
    assert json.loads(health.content) == {"status": "unavailable", "database": "unreachable"}
    # And the log has the database's own words, for the operator
    assert any("503" in r.getMessage() and str(port) in r.getMessage() for r in caplog.records)

    # And once the database answers again, the same process accepts the job
    again = tenant_client.post("/api/v1/jobs", JOB, format="json")
    assert again.status_code == 202, again.content
    assert [str(i) for i in Job.objects.values_list("id", flat=True)] == [again.json()["id"]]
    assert tenant_client.get("/healthz").status_code == 200


def test_postgresql_refusing_connections_is_503_outside_the_api_too(transactional_db):
    # Given a staff user logged in to the dashboard (a Django view, not DRF's)
    staff = get_user_model().objects.create_user("ops", password="x", is_staff=True)
    client = Client(raise_request_exception=False)
    client.force_login(staff)
    assert client.get("/dashboard/").status_code == 200
    # When the database refuses connections, its page is a 503 as well
    with database_at_a_closed_port() as port:
        assert_unavailable(client.get("/dashboard/"), "127.0.0.1", str(port), "refused")


@pytest.mark.parametrize("error", [
    OperationalError("database is locked"),
    OperationalError("the database system is starting up"),
    OperationalError("server closed the connection unexpectedly"),
    InterfaceError("connection already closed"),
], ids=["sqlite-locked", "postgresql-starting", "postgresql-closed", "interface-error"])
def test_a_database_error_inside_a_submission_is_503(tenant_client, error):
    with mock.patch("jobs.api.job_submit", side_effect=error):
        response = tenant_client.post("/api/v1/jobs", JOB, format="json")
    assert_unavailable(response, str(error))
    assert not Job.objects.exists()


def test_a_bug_is_still_a_500(tenant_client):
    # Only a database that cannot serve is a 503: a violated constraint is a defect
    with mock.patch("jobs.api.job_submit", side_effect=IntegrityError("duplicate key")):
        response = tenant_client.post("/api/v1/jobs", JOB, format="json")
    assert response.status_code == 500
    assert "Retry-After" not in response

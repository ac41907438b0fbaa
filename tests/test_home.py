"""The landing page at ``/``, the runbooks at ``/runbooks/``, and the API docs' pages, through
Django's test client. The pages in a real browser: tests/test_browser_pages.py."""
from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import OperationalError
from django.test import Client
from kombu import Connection, Exchange, Producer

from home import selectors
from jobs.submission import job_submit
from routing import topology
from tenants.models import Tenant
from tests.processes import wait_until

REPO = Path(__file__).resolve().parents[1]
RUNBOOKS = REPO / "docs" / "runbooks"


@pytest.fixture(autouse=True)
def fresh_health():
    """Every test reads the platform's health afresh (the module keeps the last reading)."""
    selectors._last = None
    yield
    selectors._last = None


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def staff_client() -> Client:
    client = Client()
    client.force_login(User.objects.create(username="ops", is_staff=True))
    return client


def publish(broker_url: str, lane: topology.Lane, count: int) -> None:
    with Connection(broker_url, connect_timeout=5) as conn:
        producer = Producer(conn.default_channel, exchange=Exchange(topology.EXCHANGE_NAME,
                                                                    type="topic"))
        for i in range(count):
            producer.publish({"n": i}, routing_key=f"{lane.name}.standard.demo.witness",
                             declare=[])


def cells(html: str, row_id: str) -> dict[str, str]:
    row = re.search(rf'<tr id="{row_id}"[^>]*>(.*?)</tr>', html, re.S)
    assert row, f"no row {row_id}"
    return dict(re.findall(r'data-field="(\w+)">([^<]*)<', row.group(1)))


@pytest.mark.django_db
@pytest.mark.rabbitmq
def test_anonymous_visitors_see_what_it_is_where_to_go_and_the_health(lanes_empty):
    # Given some tenant work in the job table and messages waiting in the slow lane
    acme = Tenant.objects.create(name="acme-private-name", tier="premium")
    job, _ = job_submit(tenant=acme, task="demo.quick_task", params={"x": "secret-param"})
    publish(lanes_empty, topology.SLOW, 3)

    # When an anonymous visitor loads / (the management API's figures are refreshed
    # every 5 s by RabbitMQ: the page shows them once they are)
    def load():
        return Client().get("/")

    wait_until(lambda: cells(load().content.decode(), "lane-slow").get("queued") == "3", 20,
               "the landing page to count the slow lane's 3 messages", interval=0.5)
    page = load()

    # Then it says what Switchyard is and links everywhere a newcomer needs
    assert page.status_code == 200
    html = page.content.decode()
    assert "priority task platform" in html
    for href in ('href="/dashboard/"', 'href="/api/docs/"', 'href="/api/redoc/"',
                 'href="/api/schema/"', 'href="/metrics"', 'href="/runbooks/"',
                 'href="http://testserver:5555/"', 'href="/runbooks/broker-down"'):
        assert href in html, href
    # ... with the health at a glance, lane totals counted by the broker
    for check in ("broker", "management-api", "database"):
        assert re.search(rf'id="check-{check}" data-ok="true"', html), check
    assert 'id="health" data-ok="true"' in html
    assert cells(html, "lane-slow") == {"queued": "3", "dead": "0"}
    assert cells(html, "lane-quick") == {"queued": "0", "dead": "0"}  # published on commit
    # ... and nothing of any tenant, nor the admin's link
    for private in ("acme-private-name", str(job.id), "secret-param", 'href="/admin/"'):
        assert private not in html, private


@pytest.mark.django_db
def test_a_broker_that_is_down_shows_as_down_and_only_staff_see_why(settings, monkeypatch):
    port = closed_port()
    settings.CELERY_BROKER_URL = f"amqp://guest:guest@127.0.0.1:{port}//"
    monkeypatch.setenv("RABBITMQ_MANAGEMENT_URL", f"http://guest:guest@127.0.0.1:{port}")

    html = Client().get("/").content.decode()
    assert 'id="check-broker" data-ok="false"' in html
    assert 'id="check-management-api" data-ok="false"' in html
    assert 'id="check-database" data-ok="true"' in html
    assert 'id="health" data-ok="false"' in html
    assert cells(html, "lane-slow") == {"queued": "unknown", "dead": "unknown"}
    assert str(port) not in html  # the reasons name hosts and ports: not for visitors

    selectors._last = None
    staff = staff_client().get("/").content.decode()
    assert str(port) in staff  # the management API's error names its URL
    assert 'href="/admin/"' in staff


@pytest.mark.django_db
def test_a_database_that_fails_shows_as_down_without_its_error(monkeypatch):
    def refuse():
        raise OperationalError('connection to server at "db.internal" failed')

    monkeypatch.setattr(selectors.connection, "cursor", refuse)
    html = Client().get("/").content.decode()
    assert 'id="check-database" data-ok="false"' in html
    assert "db.internal" not in html


@pytest.mark.django_db
def test_the_health_is_read_at_most_once_per_interval(settings, monkeypatch):
    settings.SWITCHYARD_HOME_HEALTH_SECONDS = 60
    reads = []
    real = selectors._read
    monkeypatch.setattr(selectors, "_read", lambda: reads.append(1) or real())
    client = Client()
    for _ in range(5):
        assert client.get("/").status_code == 200
    assert len(reads) == 1
    settings.SWITCHYARD_HOME_HEALTH_SECONDS = 0
    client.get("/")
    assert len(reads) == 2


@pytest.mark.django_db
def test_flower_link_follows_the_setting(settings):
    settings.SWITCHYARD_FLOWER_URL = "https://flower.example.test/"
    selectors._last = selectors.PlatformHealth(checks=(), lanes=(), checked_at=0.0)
    settings.SWITCHYARD_HOME_HEALTH_SECONDS = 10**12  # keep the reading above
    html = Client().get("/").content.decode()
    assert 'id="link-flower" href="https://flower.example.test/"' in html


def test_runbooks_are_served_with_their_symptoms():
    files = sorted(p for p in RUNBOOKS.glob("*.md") if p.name != "README.md")
    client = Client()
    listing = client.get("/runbooks/").content.decode()
    for path in files:
        assert f'href="/runbooks/{path.stem}"' in listing, path.name
    assert "a lane&#x27;s queue keeps growing" in listing  # the symptom, from the README's table
    page = client.get("/runbooks/broker-down")
    assert page.status_code == 200
    assert "RabbitMQ down or unreachable" in page.content.decode()
    assert client.get("/runbooks/no-such-runbook").status_code == 404
    assert client.get("/runbooks/README").status_code == 404
    assert client.get("/runbooks/..%2Fapi").status_code == 404


def test_the_image_has_the_runbooks_the_web_serves():
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^COPY docs/runbooks/ docs/runbooks/", dockerfile, re.M)


@pytest.mark.parametrize("url, vendored", [
    ("/api/docs/", ("swagger-ui-dist/swagger-ui-bundle.js", "swagger-ui-dist/swagger-ui.css",
                    "swagger-ui-dist/favicon-32x32.png")),
    ("/api/redoc/", ("redoc/bundles/redoc.standalone.js",)),
])
def test_api_docs_pages_load_only_vendored_files(url, vendored):
    page = Client().get(url)
    assert page.status_code == 200
    html = page.content.decode()
    for name in vendored:
        assert f"/static/drf_spectacular_sidecar/{name}" in html
    assert re.findall(r'(?:src|href)="(https?:)?//', html) == []  # nothing from elsewhere
    assert "cdn.jsdelivr" not in html and "fonts.googleapis" not in html
    # ... and the browser is told to load nothing from another origin
    assert page["Content-Security-Policy"].startswith("default-src 'self';")
    assert "img-src 'self' data:;" in page["Content-Security-Policy"]

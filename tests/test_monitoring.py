"""Metrics, the queue snapshot, the dashboard and `manage.py queues`, in one process.

The multi-process truth (web, workers, dispatcher recording into one directory)
is tested in tests/test_metrics_workload.py.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from io import StringIO
from pathlib import Path

import pytest
import yaml
from django.contrib.auth.models import User
from django.core.management import call_command
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from jobs.models import Job
from jobs.options import SubmitOptions
from jobs.submission import job_cancel, job_submit
from monitoring.snapshot import percentile, queue_snapshot
from tenants.models import Tenant

REPO = Path(__file__).resolve().parents[1]
NO_BROKER_API = "http://guest:guest@127.0.0.1:1"


def samples(text: str) -> dict[tuple, float]:
    """``(sample name, sorted label items) -> value`` of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def no_broker_api(monkeypatch):
    monkeypatch.setenv("RABBITMQ_MANAGEMENT_URL", NO_BROKER_API)


@pytest.fixture
def tenant(db):
    return Tenant.objects.create(name="acme", tier="premium")


def scrape(client) -> str:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp["Content-Type"].startswith("text/plain")
    return resp.content.decode()


@pytest.mark.django_db(transaction=True)
def test_submissions_and_cancellations_are_counted_per_lane_tier_and_task(
        client, tenant, no_broker_api, monkeypatch):
    monkeypatch.setattr("jobs.submission.publish_after_commit", lambda job: None)
    labels = {"lane": "quick", "tier": "premium", "task": "demo.quick_task"}
    before = scrape(client)
    for _ in range(3):
        job_submit(tenant=tenant, task="demo.quick_task")
    later, _ = job_submit(tenant=tenant, task="demo.quick_task",
                          options=SubmitOptions(countdown=600))
    job_cancel(job=later)
    after = scrape(client)
    for name, delta in (("switchyard_jobs_submitted_total", 4),
                        ("switchyard_jobs_cancelled_total", 1)):
        assert value(after, name, **labels) - value(before, name, **labels) == delta, name
    # The tenant is never a label; the broker gauges say the API did not answer.
    assert "acme" not in after
    assert value(after, "switchyard_management_api_up") == 0
    assert value(after, "switchyard_jobs_waiting", lane="quick", tier="premium") == 3


@pytest.mark.django_db(transaction=True)
def test_bulk_submissions_are_counted_per_task(client, tenant, no_broker_api):
    from jobs.bulk import BulkJob, job_submit_bulk

    before = scrape(client)
    job_submit_bulk(tenant=tenant, deadline=0.5, jobs=[
        *[BulkJob(task="demo.quick_task")] * 5, *[BulkJob(task="demo.slow_task")] * 2])
    after = scrape(client)
    for lane, task, delta in (("quick", "demo.quick_task", 5), ("slow", "demo.slow_task", 2)):
        labels = {"lane": lane, "tier": "premium", "task": task}
        assert (value(after, "switchyard_jobs_submitted_total", **labels)
                - value(before, "switchyard_jobs_submitted_total", **labels)) == delta


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_submission_is_not_counted_and_a_committed_one_is(tenant, monkeypatch):
    from django.db import transaction

    from jobs.signals import job_event

    monkeypatch.setattr("jobs.submission.publish_after_commit", lambda job: None)
    seen = []
    job_event.connect(lambda sender=None, **kw: seen.append(kw), dispatch_uid="probe",
                      weak=False)
    try:
        with pytest.raises(RuntimeError), transaction.atomic():
            job_submit(tenant=tenant, task="demo.quick_task")
            raise RuntimeError("rolled back")
        assert seen == []
        job_submit(tenant=tenant, task="demo.quick_task")
        assert [(e["event"], e["lane"], e["tier"], e["count"]) for e in seen] == [
            ("submitted", "quick", "premium", 1)]
    finally:
        job_event.disconnect(dispatch_uid="probe")


def test_metrics_can_require_a_bearer_token(client, settings, no_broker_api, db):
    settings.SWITCHYARD_METRICS_TOKEN = "t0ken"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer t0ken").status_code == 200


def test_production_serves_metrics_only_with_a_token(client, settings, no_broker_api, db):
    # Given production's settings with no token configured
    settings.SWITCHYARD_METRICS_REQUIRE_TOKEN = True
    settings.SWITCHYARD_METRICS_TOKEN = ""
    # Then /metrics is off, saying how to turn it on
    answer = client.get("/metrics")
    assert answer.status_code == 403 and b"SWITCHYARD_METRICS_TOKEN" in answer.content
    # And with a token it answers to that token only
    settings.SWITCHYARD_METRICS_TOKEN = "a-token-of-twenty-four-chars"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer a-token-of-twenty-four-chars"
                      ).status_code == 200


def test_scrapes_in_quick_succession_read_the_job_table_once(client, settings, no_broker_api,
                                                              db):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    settings.SWITCHYARD_METRICS_CACHE_SECONDS = 60
    client.get("/metrics")  # computes the gauges
    with CaptureQueriesContext(connection) as queries:
        for _ in range(5):
            assert client.get("/metrics").status_code == 200
    assert len(queries) == 0
    settings.SWITCHYARD_METRICS_CACHE_SECONDS = 0
    with CaptureQueriesContext(connection) as queries:
        client.get("/metrics")
    assert len(queries) > 0


def _job(tenant, *, lane="quick", tier="premium", status="succeeded", submitted, started=None,
         finished=None, run_at=None, task="demo.quick_task"):
    return Job.objects.create(tenant=tenant, tenant_name=tenant.name, task=task, lane=lane,
                              tier=tier, priority=7, routing_key=f"{lane}.{tier}.{task}",
                              status=status, submitted_at=submitted, started_at=started,
                              finished_at=finished, run_at=run_at)


@pytest.mark.django_db
def test_snapshot_counts_throughput_waits_and_the_oldest_waiting_job(tenant, no_broker_api):
    now = timezone.now()
    s = dt.timedelta(seconds=1)
    # Given 10 premium quick runs finished in the last minute (in the current minute of the
    # series too, however close to its start the test runs), waits 1..10 s
    recent = max(now - 5 * s, now.replace(second=0, microsecond=0))
    for i in range(1, 11):
        _job(tenant, submitted=now - 40 * s, started=now - 40 * s + i * s, finished=recent)
    # ... one failed 3 minutes ago (wait 0.5 s), one delayed job due 2 s before it started
    _job(tenant, status="failed", submitted=now - 200 * s, started=now - 199.5 * s,
         finished=now - 180 * s)
    _job(tenant, submitted=now - 100 * s, run_at=now - 50 * s, started=now - 48 * s,
         finished=now - 170 * s)
    # ... two standard slow jobs waiting, the older due 30 s ago, and one not due yet
    _job(tenant, lane="slow", tier="standard", status="queued", submitted=now - 30 * s)
    _job(tenant, lane="slow", tier="standard", status="queued", submitted=now - 10 * s)
    _job(tenant, lane="slow", tier="standard", status="queued", submitted=now - 10 * s,
         run_at=now + 60 * s)
    _job(tenant, lane="slow", tier="standard", status="started", submitted=now - 9 * s,
         started=now - 8 * s)

    snap = queue_snapshot(window=300, now=now)

    quick = snap.lane("quick").tier("premium")
    assert (quick.done_1m, quick.done_window, quick.failed_window) == (10, 12, 1)
    assert quick.throughput_1m == round(10 / 60, 3)
    waits = sorted([float(i) for i in range(1, 11)] + [0.5, 2.0])
    assert quick.wait_samples == 12
    assert quick.wait_p50 == pytest.approx(percentile(waits, 50), abs=1e-3)
    assert quick.wait_p99 == pytest.approx(percentile(waits, 99), abs=1e-3)
    assert sum(quick.series) == 12 and quick.series[-1] == 10
    slow = snap.lane("slow").tier("standard")
    assert (slow.waiting, slow.running) == (2, 1)
    assert slow.oldest_waiting_seconds == pytest.approx(30, abs=0.01)
    assert slow.wait_samples == 1 and slow.wait_p50 == pytest.approx(1.0)
    assert snap.lane("slow").tier("premium").waiting == 0
    assert not snap.broker_available and snap.lane("slow").ready is None


def test_percentile_interpolates_like_postgresql():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)


@pytest.mark.django_db
def test_queues_command_once_and_json(tenant, no_broker_api):
    now = timezone.now()
    _job(tenant, lane="slow", tier="standard", status="queued",
         submitted=now - dt.timedelta(seconds=90))
    out = StringIO()
    call_command("queues", "--once", stdout=out)
    text = out.getvalue()
    assert "broker UNAVAILABLE" in text
    row = next(line for line in text.splitlines() if line.startswith("slow"))
    assert row.split()[:2] == ["slow", "premium"]  # premium first: it is served first
    standard = next(line for line in text.splitlines() if line.split()[:1] == ["standard"])
    assert standard.split()[3:5] == ["0", "1"] and "90.0s" in standard

    out = StringIO()
    call_command("queues", "--json", stdout=out)
    data = json.loads(out.getvalue())
    assert [ln["lane"] for ln in data["lanes"]] == ["slow", "quick"]
    assert data["lanes"][0]["tiers"][1] | {"waiting": 1} == data["lanes"][0]["tiers"][1]


@pytest.mark.django_db
def test_dashboard_is_for_staff_only(client, no_broker_api):
    resp = client.get("/dashboard/")
    assert resp.status_code == 302 and "/admin/login/" in resp["Location"]
    assert client.get("/dashboard/data").status_code == 302
    User.objects.create_user("viewer", password="pw")
    client.login(username="viewer", password="pw")
    assert client.get("/dashboard/").status_code == 302
    User.objects.create_user("ops", password="pw", is_staff=True)
    client.login(username="ops", password="pw")
    page = client.get("/dashboard/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="tp-quick-premium"' in html and "dashboard.js" in html
    assert "http://" not in html and "https://" not in html  # nothing from a CDN
    data = client.get("/dashboard/data?window=60").json()
    assert data["window_seconds"] == 60 and len(data["lanes"]) == 2


def _exported_names() -> set[str]:
    from monitoring.collector import QueueCollector
    from monitoring.metrics import COUNTERS, HISTOGRAMS

    names = {c._name + "_total" for c in COUNTERS.values()}
    for h in HISTOGRAMS.values():
        names |= {h._name + suffix for suffix in ("_bucket", "_sum", "_count")}
    names |= {m.name for m in QueueCollector().collect()}
    return names


@pytest.mark.django_db
def test_alert_rules_parse_and_use_only_exported_metrics(no_broker_api):
    import re

    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert {"PremiumWaitP99OverTarget", "OldestWaitingJobTooOld", "NoConsumersOnLane"} <= {
        r["alert"] for r in alerts}
    exported = _exported_names()
    for rule in alerts:
        assert rule["labels"]["severity"] in {"page", "ticket"}
        assert rule["annotations"]["summary"]
        used = set(re.findall(r"\b(switchyard_[a-z_]+)", rule["expr"]))
        assert used and used <= exported, (rule["alert"], used - exported)


def test_every_metric_is_documented(db, no_broker_api):
    doc = (REPO / "docs" / "monitoring.md").read_text()
    bases = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in _exported_names()}
    assert sorted(n for n in bases if f"`{n}" not in doc) == []



@pytest.mark.django_db
def test_each_lane_shows_its_top_tenants_share_and_the_rest_as_others(client, no_broker_api):
    # Given 8 tenants that started 8, 7, ... 1 slow runs in the last minute, one with weight 3
    now = timezone.now()
    tenants = [Tenant.objects.create(name=f"t{i}", tier="premium", weight=3 if i == 0 else 1)
               for i in range(8)]
    for i, t in enumerate(tenants):
        for _ in range(8 - i):
            _job(t, lane="slow", submitted=now, started=now, finished=now)
    _job(tenants[0], lane="slow", status="queued", submitted=now)  # held: unpublished
    total = sum(range(1, 9))

    # When an operator looks at the snapshot, the dashboard data and /metrics
    shares = queue_snapshot(now=now).lane("slow").tenants
    lanes = {ln["lane"]: ln for ln in
             (User.objects.create_user("ops", password="pw", is_staff=True) and
              client.login(username="ops", password="pw") and
              client.get("/dashboard/data").json()["lanes"])}
    text = scrape(client)

    # Then the top 5 tenants by starts are listed with their share, the rest as "(others)"
    assert [s.tenant for s in shares] == ["t0", "t1", "t2", "t3", "t4", "(others)"]
    assert shares[0].share == round(8 / total, 4) and shares[0].weight == 3
    assert (shares[0].waiting, shares[0].held) == (1, 1)
    assert shares[-1].started == 3 + 2 + 1
    assert [t["tenant"] for t in lanes["slow"]["tenants"]][:1] == ["t0"]
    # And /metrics carries a bounded set of tenant series: top 5 and "(others)"
    tenant_series = {dict(k[1])["tenant"] for k in samples(text)
                     if k[0] == "switchyard_lane_tenant_share"}
    assert tenant_series == {"t0", "t1", "t2", "t3", "t4", "(others)"}
    assert value(text, "switchyard_lane_tenant_share", lane="slow", tenant="t0") == round(
        8 / total, 4)


@pytest.mark.parametrize(("plain_http", "metrics", "api"), [
    (None, 301, 301),      # production: everything over http is redirected to https
    ("true", 401, 301),    # compose's web: /metrics answered (here: wrong token), the rest not
])
def test_a_scraper_inside_the_network_may_ask_for_metrics_over_plain_http(plain_http, metrics,
                                                                          api):
    import secrets

    from tests.test_security import manage, production_env

    env = production_env(DJANGO_ALLOWED_HOSTS="web", SWITCHYARD_METRICS_PLAIN_HTTP=plain_http,
                         SWITCHYARD_METRICS_TOKEN=secrets.token_urlsafe(24))
    code = ("from django.test import Client; c = Client(HTTP_HOST='web'); "
            "print(c.get('/metrics', HTTP_AUTHORIZATION='Bearer wrong').status_code, "
            "c.get('/api/v1/jobs').status_code)")
    result = manage("shell", "-c", code, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == [str(metrics), str(api)]

"""Flower's additions, in one process: the hour's per-minute history behind the Queues
page's charts (``monitoring.history``). The real Flower in a browser:
tests/test_browser_flower.py.
"""
from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from monitoring.history import LaneTierHistory
from tenants.models import Tenant
from tests.test_monitoring import _job

MINUTE = dt.timedelta(minutes=1)
S = dt.timedelta(seconds=1)


def series_of(read: dict, lane: str, tier: str) -> dict:
    return next(s for s in read["series"] if (s["lane"], s["tier"]) == (lane, tier))


@pytest.fixture
def tenants(db):
    return (Tenant.objects.create(name="acme", tier="premium"),
            Tenant.objects.create(name="smallco", tier="standard"))


@pytest.mark.django_db
@pytest.mark.parametrize("aggregated_by", ["postgresql", "python"])
def test_history_counts_runs_and_waits_by_minute_per_lane_and_tier(tenants, aggregated_by,
                                                                    monkeypatch):
    # PostgreSQL computes the wait percentiles in its query; on SQLite they are computed
    # from the rows (the same ORM query, run here on the test database)
    if aggregated_by == "python":
        monkeypatch.setattr(connection, "vendor", "sqlite")
    acme, smallco = tenants
    now = dt.datetime(2026, 12, 1, 12, 30, 30, tzinfo=dt.UTC)
    # Given 3 premium quick runs that started and finished 10 minutes ago, waits 1, 2, 9 s
    ten_ago = now.replace(second=0) - 10 * MINUTE
    for wait in (1, 2, 9):
        _job(acme, submitted=ten_ago, started=ten_ago + wait * S, finished=ten_ago + 20 * S)
    # ... one failed standard slow run finishing in the current minute, waited 4 s
    _job(smallco, lane="slow", tier="standard", status="failed", submitted=now - 20 * S,
         started=now - 16 * S, finished=now - 5 * S)
    # ... and a run from before the hour, which is not shown
    _job(acme, submitted=now - 90 * MINUTE, started=now - 90 * MINUTE,
         finished=now - 89 * MINUTE)

    read = LaneTierHistory().read(now=now)

    assert len(read["minutes"]) == 60
    assert read["minutes"][-1] == now.replace(second=0).isoformat()
    quick = series_of(read, "quick", "premium")
    i = read["minutes"].index(ten_ago.isoformat())
    assert (quick["done"][i], quick["failed"][i], quick["started"][i]) == (3, 0, 3)
    assert quick["wait_p50"][i] == pytest.approx(2.0)
    assert quick["wait_p95"][i] == pytest.approx(8.3)  # percentile_cont of 1, 2, 9
    assert sum(quick["done"]) == 3 and quick["wait_p50"][i + 1] is None
    slow = series_of(read, "slow", "standard")
    assert (slow["done"][-1], slow["failed"][-1], slow["wait_p95"][-1]) == (1, 1, 4.0)
    # Lanes and tiers that ran nothing have no points
    for lane, tier in (("quick", "standard"), ("slow", "premium")):
        empty = series_of(read, lane, tier)
        assert sum(empty["done"]) == 0 and set(empty["wait_p50"]) == {None}
    # Premium first in each lane: it is served first
    assert [(s["lane"], s["tier"]) for s in read["series"]][:2] == [
        ("slow", "premium"), ("slow", "standard")]


@pytest.mark.django_db
def test_history_reads_the_hour_once_then_only_the_last_minutes(tenants):
    acme, _ = tenants
    now = dt.datetime(2026, 12, 1, 12, 30, 30, tzinfo=dt.UTC)
    history = LaneTierHistory()
    # Given a first read, which reads the whole hour
    history.read(now=now)
    assert history.last_read_minutes == 60
    # When a run finishes in the previous minute (a late commit) and the page refreshes
    # a minute later
    later = now + MINUTE
    _job(acme, submitted=now - 3 * S, started=now - 2 * S, finished=now)
    with CaptureQueriesContext(connection) as queries:
        read = history.read(now=later)
    # Then only the current minute and the last two closed ones were read, in two queries,
    # and the late run is counted in its minute
    assert history.last_read_minutes == 3
    assert len(queries) == 2
    quick = series_of(read, "quick", "premium")
    assert quick["done"][-2] == 1 and sum(quick["done"]) == 1
    # And closed minutes are kept, never more than the hour and the recheck
    history.read(now=later + 30 * MINUTE)
    assert len(history._closed) <= 60 + 2
    assert sum(series_of(history.read(now=later + 30 * MINUTE), "quick", "premium")["done"]) == 1

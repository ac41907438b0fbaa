"""Schedules on the real database, with a controlled clock: each pass is given its
``now`` (``jobs.schedules.schedule_fire_due(now=...)``), so a test walks a schedule
through fire times, DST days and outages in milliseconds.

The jobs fired are only written (due at their fire time); the dispatcher's publish
pass is not run here. tests/test_schedules_dispatchers.py fires schedules from real
dispatcher processes.
"""
from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.db import IntegrityError, connections, transaction
from django.db.models import F
from django.db.models.functions import Now

from jobs.models import Job
from jobs.options import SubmitOptions
from jobs.outcomes import job_record_success
from schedules import cron
from schedules.firing import schedule_fire_due
from schedules.models import Schedule, ScheduleFire
from schedules.rules import fire_times
from schedules.services import schedule_create, schedule_trigger
from tenants.services import tenant_create

pytestmark = pytest.mark.django_db

UTC = dt.UTC


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def tenant():
    tenant, _ = tenant_create(name="clocks", tier="premium")
    return tenant


def every(tenant, seconds=60, *, created="2026-06-01T00:00:00", **fields) -> Schedule:
    # The jobs never run here: overlap is "allow" unless a test is about overlap.
    fields.setdefault("overlap", "allow")
    return schedule_create(tenant=tenant, task="demo.quick_task", params={"x": 1},
                           every=seconds, now=at(created), **fields)


def daily(tenant, rule, zone, *, created, **fields) -> Schedule:
    fields.setdefault("overlap", "allow")
    return schedule_create(tenant=tenant, task="demo.quick_task", params={"x": 1}, cron=rule,
                           timezone=zone, now=at(created), **fields)


def fires(schedule, outcome=None) -> list[ScheduleFire]:
    records = ScheduleFire.objects.filter(schedule=schedule).order_by("fire_at")
    return list(records.filter(outcome=outcome) if outcome else records)


def run_passes(start: str, end: str, step_seconds: float) -> None:
    """One pass every ``step_seconds`` of the controlled clock from ``start`` to ``end``."""
    now, stop = at(start), at(end)
    while now <= stop:
        schedule_fire_due(now=now)
        now += dt.timedelta(seconds=step_seconds)


def finish(job: Job) -> None:
    Job.objects.filter(id=job.id).update(status=Job.Status.STARTED, started_at=Now(),
                                         attempts=F("attempts") + 1)
    assert job_record_success(job_id=job.id, result=1, has_link=False)


# The rules ---------------------------------------------------------------------------------

def test_every_fires_once_per_period_with_its_job_due_at_the_fire_time(tenant):
    schedule = every(tenant, 60)
    assert schedule.next_fire_at == at("2026-06-01T00:01:00")
    run_passes("2026-06-01T00:00:30", "2026-06-01T00:05:10", 1)
    fired = fires(schedule)
    assert [f.fire_at for f in fired] == [at(f"2026-06-01T00:0{m}:00") for m in range(1, 6)]
    assert all(f.outcome == "fired" for f in fired)
    job = fired[0].job
    assert (job.task, job.params, job.tier, job.run_at) == (
        "demo.quick_task", {"x": 1}, "premium", at("2026-06-01T00:01:00"))
    assert job.status == "queued" and job.published_at is None  # the publish pass's work
    schedule.refresh_from_db()
    assert schedule.next_fire_at == at("2026-06-01T00:06:00")


def test_berlin_0230_fires_once_on_the_spring_forward_day_at_the_end_of_the_gap(tenant):
    # 2026-03-29: Berlin jumps from 02:00 CET to 03:00 CEST (01:00 UTC); 02:30 does
    # not exist that day. A pass every 5 minutes of real time over three days.
    schedule = daily(tenant, "30 2 * * *", "Europe/Berlin", created="2026-03-27T12:00:00")
    run_passes("2026-03-27T12:00:00", "2026-03-30T12:00:00", 300)
    assert [f.fire_at for f in fires(schedule, "fired")] == [
        at("2026-03-28T01:30:00"),  # 02:30 CET
        at("2026-03-29T01:00:00"),  # the gap's end: 03:00 CEST
        at("2026-03-30T00:30:00"),  # 02:30 CEST
    ]


def test_berlin_0230_fires_once_on_the_fall_back_day_at_the_first_0230(tenant):
    # 2026-10-25: Berlin goes from 03:00 CEST back to 02:00 CET; 02:30 happens twice,
    # at 00:30 and 01:30 UTC. Only the first fires.
    schedule = daily(tenant, "30 2 * * *", "Europe/Berlin", created="2026-10-23T12:00:00")
    run_passes("2026-10-23T12:00:00", "2026-10-26T12:00:00", 300)
    assert [f.fire_at for f in fires(schedule, "fired")] == [
        at("2026-10-24T00:30:00"), at("2026-10-25T00:30:00"), at("2026-10-26T01:30:00")]


def test_seoul_has_no_dst_its_0230_is_always_1730_utc(tenant):
    schedule = daily(tenant, "30 2 * * *", "Asia/Seoul", created="2026-03-27T12:00:00")
    assert fire_times(schedule, after=at("2026-03-27T12:00:00")) == [
        at(f"2026-03-{d}T17:30:00") for d in (27, 28, 29, 30, 31)]
    assert fire_times(schedule, after=at("2026-10-23T12:00:00"), count=3) == [
        at(f"2026-10-{d}T17:30:00") for d in (23, 24, 25)]


def test_an_hourly_rule_keeps_real_time_hours_across_both_transitions():
    hourly, berlin = cron.parse("0 * * * *"), cron.zone("Europe/Berlin")
    instants, after = [], at("2026-10-24T22:30:00")
    for _ in range(5):
        after = cron.next_after(hourly, berlin, after)
        instants.append(after)
    # 02:00 CEST, 02:00 CET (the repeated hour fires twice: the hour field is *)
    assert instants == [at(f"2026-10-{h}:00:00") for h in
                        ("24T23", "25T00", "25T01", "25T02", "25T03")]
    # Spring: 02:00 does not exist; it fires at 03:00 CEST, once.
    after, instants = at("2026-03-28T23:30:00"), []
    for _ in range(3):
        after = cron.next_after(hourly, berlin, after)
        instants.append(after)
    assert instants == [at("2026-03-29T00:00:00"), at("2026-03-29T01:00:00"),
                        at("2026-03-29T02:00:00")]


@pytest.mark.parametrize(("rule", "error"), [
    ("* * * *", "five fields"), ("60 * * * *", "minute: 60 is outside 0-59"),
    ("* 5-1 * * *", "runs backwards"), ("* * * foo *", "month: 'foo' is not a number"),
    ("*/0 * * * *", "step must be at least 1"),
])
def test_unreadable_rules_say_which_field(rule, error):
    with pytest.raises(cron.InvalidCron, match=error):
        cron.parse(rule)


def test_day_of_month_or_day_of_week_when_both_are_restricted():
    rule, utc = cron.parse("0 0 13 * 5"), cron.zone("UTC")  # the 13th, or any Friday
    after, days = at("2026-02-01T00:00:00"), []
    for _ in range(4):
        after = cron.next_after(rule, utc, after)
        days.append(after.day)
    assert days == [6, 13, 20, 27]  # Fridays, and Friday the 13th once


# Exactly once ------------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_two_schedulers_passing_at_once_fire_each_time_once(tenant):
    # Given ten schedules every 10 s and two schedulers, each on its own connection
    schedules = [every(tenant, 10, created="2026-06-01T00:00:00") for _ in range(10)]
    barrier = threading.Barrier(2)
    errors = []

    def scheduler():
        try:
            now = at("2026-06-01T00:00:10")
            while now <= at("2026-06-01T00:01:40"):
                barrier.wait(timeout=30)  # both pass at the same controlled instant
                schedule_fire_due(now=now)
                now += dt.timedelta(seconds=5)
        except Exception as exc:  # pragma: no cover - shown below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=scheduler) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    # Then each schedule fired each of its ten fire times exactly once, one job each
    for schedule in schedules:
        fired = fires(schedule)
        assert [f.fire_at for f in fired] == [at("2026-06-01T00:00:00") +
                                              dt.timedelta(seconds=10 * k) for k in range(1, 11)]
        assert all(f.outcome == "fired" and f.job_id for f in fired)
    assert Job.objects.filter(tenant=tenant).count() == 100


def test_the_database_refuses_a_second_record_of_one_fire_time(tenant):
    schedule = every(tenant, 60)
    schedule_fire_due(now=at("2026-06-01T00:01:00"))
    with pytest.raises(IntegrityError), transaction.atomic():
        ScheduleFire.objects.create(schedule=schedule, fire_at=at("2026-06-01T00:01:00"),
                                    outcome="fired", recorded_at=at("2026-06-01T00:01:00"))


def test_a_pass_killed_mid_fire_loses_nothing_and_the_next_fires_the_time(tenant, monkeypatch):
    schedule = every(tenant, 60)
    from schedules import firing as schedules_module

    def crash(*args, **kwargs):
        raise SystemExit("dispatcher killed")

    monkeypatch.setattr(schedules_module.ScheduleFire.objects, "create", crash)
    with pytest.raises(SystemExit):
        schedule_fire_due(now=at("2026-06-01T00:01:00"))
    monkeypatch.undo()
    # Nothing of the fire was kept: no job, and the fire time is still next
    assert not Job.objects.filter(tenant=tenant).exists()
    schedule.refresh_from_db()
    assert schedule.next_fire_at == at("2026-06-01T00:01:00")
    # The restart 20 s later (inside the grace) fires it, once
    schedule_fire_due(now=at("2026-06-01T00:01:20"))
    assert [(f.fire_at, f.outcome) for f in fires(schedule)] == [
        (at("2026-06-01T00:01:00"), "fired")]


# Catch-up ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("catch_up", "jobs_after_restart"), [("skip", 0), ("run_once", 1)])
def test_stopped_across_three_fire_times_then_restarted(tenant, catch_up, jobs_after_restart):
    schedule = every(tenant, 300, catch_up=catch_up)
    schedule_fire_due(now=at("2026-06-01T00:05:00"))  # fires 00:05
    # No scheduler runs at 00:10, 00:15, 00:20; one comes back at 00:22, two minutes
    # after the last of them (the grace is 60 s)
    schedule_fire_due(now=at("2026-06-01T00:22:00"))
    records = {f.fire_at: f for f in fires(schedule)}
    missed = [at(f"2026-06-01T00:{m}:00") for m in (10, 15, 20)]
    assert records[at("2026-06-01T00:05:00")].outcome == "fired"
    if catch_up == "skip":
        assert [records[t].outcome for t in missed] == ["skipped"] * 3
        assert {records[t].reason for t in missed} == {"missed"}
    else:  # the latest missed time runs, standing for all three
        assert [records[t].outcome for t in missed] == ["skipped", "skipped", "fired"]
        assert "stands for it" in records[missed[0]].detail
    assert Job.objects.filter(tenant=tenant).count() == 1 + jobs_after_restart
    schedule.refresh_from_db()
    assert schedule.next_fire_at == at("2026-06-01T00:25:00")
    # And it goes on as usual
    schedule_fire_due(now=at("2026-06-01T00:25:01"))
    assert ScheduleFire.objects.get(schedule=schedule, fire_at=at("2026-06-01T00:25:00")
                                    ).outcome == "fired"


def test_a_fire_time_seen_late_within_the_grace_fires(tenant):
    schedule = every(tenant, 60, catch_up="skip")
    schedule_fire_due(now=at("2026-06-01T00:01:59"))  # 59 s late: on time
    assert [f.outcome for f in fires(schedule)] == ["fired"]


# Overlap -----------------------------------------------------------------------------------

def test_overlap_skip_counts_the_fires_a_long_run_overlaps(tenant):
    schedule = every(tenant, 10, overlap="skip", created="2026-06-01T00:01:00")
    schedule_fire_due(now=at("2026-06-01T00:01:10"))
    first = fires(schedule)[0].job
    Job.objects.filter(id=first.id).update(status=Job.Status.STARTED, started_at=Now())
    # The run lasts 35 s: the fires at +20, +30 and +40 s are skipped
    run_passes("2026-06-01T00:01:11", "2026-06-01T00:01:45", 1)
    finish(first)
    run_passes("2026-06-01T00:01:46", "2026-06-01T00:01:50", 1)
    skipped = fires(schedule, "skipped")
    assert [f.fire_at for f in skipped] == [at("2026-06-01T00:01:20"), at("2026-06-01T00:01:30"),
                                            at("2026-06-01T00:01:40")]
    assert {f.reason for f in skipped} == {"overlap"}
    assert f"job {first.id} is still started" in skipped[0].detail
    assert [f.fire_at for f in fires(schedule, "fired")] == [at("2026-06-01T00:01:10"),
                                                             at("2026-06-01T00:01:50")]


def test_overlap_buffer_one_keeps_one_fire_until_the_run_ends(tenant):
    schedule = every(tenant, 10, overlap="buffer_one", created="2026-06-01T00:01:00")
    schedule_fire_due(now=at("2026-06-01T00:01:10"))
    first = fires(schedule)[0].job
    Job.objects.filter(id=first.id).update(status=Job.Status.STARTED, started_at=Now())
    run_passes("2026-06-01T00:01:11", "2026-06-01T00:01:35", 1)
    assert [(f.fire_at.second, f.outcome) for f in fires(schedule)] == [
        (10, "fired"), (20, "buffered"), (30, "skipped")]
    finish(first)
    schedule_fire_due(now=at("2026-06-01T00:01:36"))  # the run ended: the buffered one goes
    buffered = ScheduleFire.objects.get(schedule=schedule, fire_at=at("2026-06-01T00:01:20"))
    assert buffered.outcome == "fired" and buffered.job.run_at == at("2026-06-01T00:01:20")


def test_overlap_allow_fires_whatever_runs(tenant):
    schedule = every(tenant, 10, overlap="allow", created="2026-06-01T00:01:00")
    run_passes("2026-06-01T00:01:10", "2026-06-01T00:01:40", 1)
    assert [f.outcome for f in fires(schedule)] == ["fired"] * 4


# Quotas, options, trigger, jitter ----------------------------------------------------------

def test_a_fire_over_quota_is_recorded_skipped_with_the_reason(tenant):
    tenant.max_queued_jobs = 1
    tenant.save()
    schedule = every(tenant, 10, overlap="allow", created="2026-06-01T00:01:00")
    run_passes("2026-06-01T00:01:10", "2026-06-01T00:01:20", 10)
    first, second = fires(schedule)
    assert first.outcome == "fired"
    assert (second.outcome, second.reason) == ("skipped", "quota")
    assert "the quota is 1" in second.detail


def test_options_go_onto_each_job_and_jitter_is_stable(tenant):
    from jobs.options import RetryPolicy
    schedule = every(tenant, 60, jitter=30, options=SubmitOptions(
        priority=9, expires=120, retry_policy=RetryPolicy(max_retries=2)))
    schedule_fire_due(now=at("2026-06-01T00:01:00"))
    job = fires(schedule)[0].job
    delay = (job.run_at - at("2026-06-01T00:01:00")).total_seconds()
    assert 0 <= delay <= 30
    assert job.priority == 9 and job.max_attempts == 3
    assert job.expires_at == job.run_at + dt.timedelta(seconds=120)


def test_trigger_runs_once_now_and_leaves_the_next_fire_time(tenant):
    schedule = every(tenant, 3600)
    fire = schedule_trigger(schedule=schedule, now=at("2026-06-01T00:10:00"))
    assert fire.triggered and fire.job.run_at == at("2026-06-01T00:10:00")
    schedule.refresh_from_db()
    assert schedule.next_fire_at == at("2026-06-01T01:00:00")


def test_paused_schedules_do_not_fire_and_resume_from_now(tenant):
    from schedules.services import schedule_pause, schedule_resume
    schedule = every(tenant, 60)
    schedule_pause(schedule=schedule)
    run_passes("2026-06-01T00:01:00", "2026-06-01T00:03:00", 30)
    assert fires(schedule) == []
    schedule = schedule_resume(schedule=schedule, now=at("2026-06-01T00:03:30"))
    assert schedule.next_fire_at == at("2026-06-01T00:04:00")


def test_end_at_stops_the_schedule(tenant):
    schedule = every(tenant, 60, end_at=at("2026-06-01T00:02:30"))
    run_passes("2026-06-01T00:01:00", "2026-06-01T00:05:00", 30)
    assert len(fires(schedule, "fired")) == 2
    schedule.refresh_from_db()
    assert schedule.next_fire_at is None


# Lateness and metrics ----------------------------------------------------------------------

def test_lateness_is_read_from_the_job_table_once_and_counted(
        tenant, django_capture_on_commit_callbacks):
    from prometheus_client import REGISTRY

    from monitoring import metrics
    from schedules.firing import schedule_observe_starts

    metrics.connect()
    fires_before = REGISTRY.get_sample_value("switchyard_schedule_fires_total",
                                             {"task": "demo.quick_task"}) or 0
    skips_before = REGISTRY.get_sample_value(
        "switchyard_schedule_skips_total", {"task": "demo.quick_task", "reason": "missed"}) or 0
    late_before = REGISTRY.get_sample_value("switchyard_schedule_lateness_seconds_count",
                                            {"lane": "quick", "tier": "premium"}) or 0
    schedule = every(tenant, 60)
    with django_capture_on_commit_callbacks(execute=True):
        schedule_fire_due(now=at("2026-06-01T00:03:00"))  # 00:01, 00:02 missed; 00:03 fires
    fired = fires(schedule, "fired")[0]
    assert schedule_observe_starts() == 0  # not started yet: nothing to observe
    Job.objects.filter(id=fired.job_id).update(status=Job.Status.STARTED,
                                               started_at=at("2026-06-01T00:03:04"))
    with django_capture_on_commit_callbacks(execute=True):
        assert schedule_observe_starts() == 1
        assert schedule_observe_starts() == 0  # once
    fired.refresh_from_db()
    assert fired.lateness == 4.0 and fired.observed
    assert REGISTRY.get_sample_value("switchyard_schedule_fires_total",
                                     {"task": "demo.quick_task"}) == fires_before + 1
    assert REGISTRY.get_sample_value("switchyard_schedule_skips_total", {
        "task": "demo.quick_task", "reason": "missed"}) == skips_before + 2
    assert REGISTRY.get_sample_value("switchyard_schedule_lateness_seconds_count", {
        "lane": "quick", "tier": "premium"}) == late_before + 1


def test_fire_records_older_than_the_retention_are_pruned_the_buffered_kept(tenant):
    from schedules.retention import schedule_fire_prune
    from switchyard.clock import platform_now

    schedule = every(tenant, 60)
    old = platform_now() - dt.timedelta(days=40)
    for minutes, outcome in ((0, "skipped"), (1, "buffered"), (2, "fired")):
        ScheduleFire.objects.create(schedule=schedule, outcome=outcome, recorded_at=old,
                                    fire_at=old + dt.timedelta(minutes=minutes))
    ScheduleFire.objects.create(schedule=schedule, outcome="skipped", recorded_at=old,
                                fire_at=platform_now() - dt.timedelta(days=1))
    assert schedule_fire_prune(older_than=dt.timedelta(days=30)) == 2
    assert sorted(f.outcome for f in fires(schedule)) == ["buffered", "skipped"]


def test_several_times_in_one_spring_gap_fire_once_at_its_end(tenant):
    schedule = daily(tenant, "*/15 2 * * *", "Europe/Berlin", created="2026-03-28T23:00:00")
    run_passes("2026-03-28T23:00:00", "2026-03-29T03:00:00", 60)
    assert [f.fire_at for f in fires(schedule)] == [at("2026-03-29T01:00:00")]


def test_a_rule_that_never_fires_is_refused(tenant):
    from jobs.errors import InvalidSubmission
    with pytest.raises(InvalidSubmission, match="never fires") as refused:
        daily(tenant, "0 0 30 2 *", "UTC", created="2026-06-01T00:00:00")
    assert refused.value.field == "cron"


def test_an_inactive_tenants_schedule_records_its_fires_skipped(tenant):
    schedule = every(tenant, 60)
    tenant.is_active = False
    tenant.save()
    schedule_fire_due(now=at("2026-06-01T00:01:00"))
    (fire,) = fires(schedule)
    assert (fire.outcome, fire.reason) == ("skipped", "invalid")
    assert "inactive" in fire.detail and not Job.objects.exists()


def test_a_pass_fires_more_schedules_than_its_batch_and_one_broken_one_stops_none(
        tenant, monkeypatch):
    schedules = [every(tenant, 60) for _ in range(7)]
    broken = schedules[3]
    from schedules import firing

    real = firing._fire

    def fire(schedule, now, outcome):
        if schedule.id == broken.id:
            raise RuntimeError("a schedule the pass cannot fire")
        real(schedule, now, outcome)

    monkeypatch.setattr(firing, "_fire", fire)
    done = schedule_fire_due(now=at("2026-06-01T00:01:00"), limit=2)
    assert done.fired == 6
    broken.refresh_from_db()
    assert broken.next_fire_at == at("2026-06-01T00:01:00") and not fires(broken)


def test_zones_resolve_from_the_pinned_tzdata_where_the_host_has_none():
    import zoneinfo
    zoneinfo.reset_tzpath(to=[])  # as on a slim image without /usr/share/zoneinfo
    try:
        berlin = zoneinfo.ZoneInfo.no_cache("Europe/Berlin")
        assert cron.next_after(cron.parse("30 2 * * *"), berlin, at("2026-03-28T12:00:00")) \
            == at("2026-03-29T01:00:00")
    finally:
        zoneinfo.reset_tzpath()


@pytest.mark.parametrize("rule", ["@daily", "0 0 L * *", "0 0 ? * 1", "0 0 * * 1#2",
                                  "0 0 0 * * *"])
def test_extensions_of_other_crons_are_refused_not_misread(rule):
    with pytest.raises(cron.InvalidCron):
        cron.parse(rule)


def test_names_and_sunday_as_7():
    rule = cron.parse("0 9 * jan,dec mon-fri,7")
    assert rule.months == {1, 12} and rule.weekdays == {0, 1, 2, 3, 4, 5}


@pytest.mark.parametrize("catch_up", ["skip", "run_once"])
def test_a_long_outage_records_the_first_missed_times_and_the_latest(tenant, catch_up):
    from schedules.firing import MAX_MISSED_RECORDS
    schedule = every(tenant, 120, catch_up=catch_up)  # first fire 00:02
    # Four days later, 90 s after the latest fire time (past the 60 s grace): 2,880 missed
    schedule_fire_due(now=at("2026-06-05T00:01:30"))
    records = fires(schedule)
    assert len(records) == MAX_MISSED_RECORDS + 1
    latest = records[-1]
    assert latest.fire_at == at("2026-06-05T00:00:00")
    assert latest.outcome == ("fired" if catch_up == "run_once" else "skipped")
    assert {r.outcome for r in records[:-1]} == {"skipped"}
    schedule.refresh_from_db()
    assert schedule.next_fire_at == at("2026-06-05T00:02:00")


def test_the_last_cron_fire_time_before_an_instant_across_dst():
    rule, berlin = cron.parse("30 2 * * *"), cron.zone("Europe/Berlin")
    assert cron.last_at_or_before(rule, berlin, at("2026-03-29T12:00:00")) == \
        at("2026-03-29T01:00:00")
    assert cron.last_at_or_before(rule, berlin, at("2026-10-25T01:45:00")) == \
        at("2026-10-25T00:30:00")
    assert cron.last_at_or_before(rule, berlin, at("2026-10-25T00:30:00")) == \
        at("2026-10-25T00:30:00")

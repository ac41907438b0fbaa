"""Fair sharing: the scheduling rule, the windows in the job table, and the real broker.

What a tenant notices: another tenant's flood in the same band does not make its
new jobs wait for the whole flood; standard work keeps moving under a premium
flood; a dispatcher that dies loses nothing.
"""
from __future__ import annotations

import datetime as dt
import os
import signal

import pytest
from django.conf import settings as django_settings
from django.utils import timezone
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu import Connection, Queue

from jobs import fairness
from jobs.bulk import BulkJob, job_submit_bulk
from jobs.dispatch import job_promote_starved, job_publish_due
from jobs.models import Job
from jobs.publishing import PUBLICATION_HEADER
from jobs.submission import job_submit
from routing import priorities
from routing.celery_config import PROMOTED_HEADER
from tenants.models import Tenant
from tests.processes import wait_until
from tests.test_lanes import start_lane

# The rule (no database, no broker) ---------------------------------------------------

groups_strategy = st.lists(
    st.builds(lambda i, unpublished, in_broker, window: fairness.Group(
        key=i, unpublished=unpublished, in_broker=min(in_broker, window or in_broker),
        window=window),
        st.integers(0, 10**6), st.integers(0, 500), st.integers(0, 50),
        st.one_of(st.none(), st.integers(1, 40))),
    max_size=30, unique_by=lambda g: g.key)


@given(groups=groups_strategy, limit=st.integers(0, 2000))
def test_release_plan_never_overfills_a_window_nor_the_pass(groups, limit):
    plan = dict(fairness.release_plan(groups, limit))
    assert sum(plan.values()) <= limit
    for group in groups:
        take = plan.get(group.key, 0)
        assert 0 <= take <= group.unpublished
        if group.window is not None:
            assert group.in_broker + take <= group.window
    # Work-conserving: with a large enough pass, every group gets all its room.
    if limit >= sum(g.room for g in groups):
        assert all(plan.get(g.key, 0) == g.room for g in groups)


@given(groups=groups_strategy, limit=st.integers(1, 50))
def test_a_short_pass_serves_the_least_filled_windows_first(groups, limit):
    plan = dict(fairness.release_plan(groups, limit))
    served = [g for g in groups if plan.get(g.key)]
    starved = [g for g in groups if g.room > 0 and not plan.get(g.key)]
    for s in starved:
        assert all(g.fill <= s.fill for g in served)


@given(base=st.integers(0, 100), weight=st.integers(1, 1000))
def test_window_grows_with_weight_and_is_never_empty(base, weight):
    window = fairness.window_size(base, weight)
    if base == 0:
        assert window is None
    else:
        assert window >= 1
        assert window >= fairness.window_size(base, 1)
        assert fairness.window_size(base, weight + 1) >= window


def _simulate_band(weights: dict[str, int], base: int, concurrency: int, starts: int,
                   newcomer_at: int | None = None):
    """One priority band served FIFO by ``concurrency`` workers; every tenant has
    an endless backlog, windows refilled after each start (the dispatcher's rule).
    Returns (starts per tenant, position of the newcomer's first job)."""
    queue: list[str] = []
    in_broker = dict.fromkeys(weights, 0)
    counts = dict.fromkeys(weights, 0)
    newcomer_wait = None

    def refill(tenants):
        groups = [fairness.Group(key=t, unpublished=10**9, in_broker=in_broker[t],
                                 window=fairness.window_size(base, weights[t]))
                  for t in tenants]
        for t, take in fairness.release_plan(groups, 10**9):
            queue.extend([t] * take)
            in_broker[t] += take

    active = [t for t in weights if t != "newcomer"]
    refill(active)
    for n in range(starts):
        if newcomer_at is not None and n == newcomer_at:
            active.append("newcomer")
            refill(["newcomer"])
            newcomer_wait = queue.index("newcomer")
        t = queue.pop(0)
        in_broker[t] -= 1
        counts[t] += 1
        refill(active)
    return counts, newcomer_wait


@settings(max_examples=60, deadline=None)
@given(weights=st.lists(st.integers(1, 5), min_size=1, max_size=6),
       base=st.integers(1, 4))
def test_backlogged_tenants_share_the_band_in_proportion_to_their_weight(weights, base):
    tenants = {f"t{i}": w for i, w in enumerate(weights)}
    windows = {t: fairness.window_size(base, w) for t, w in tenants.items()}
    total_window = sum(windows.values())
    rounds = 50
    counts, _ = _simulate_band(tenants, base, concurrency=2, starts=rounds * total_window)
    for t in tenants:
        expected = rounds * windows[t]
        assert abs(counts[t] - expected) <= windows[t], (counts, windows)


@settings(max_examples=60, deadline=None)
@given(weights=st.lists(st.integers(1, 5), min_size=1, max_size=6),
       base=st.integers(1, 4), at=st.integers(0, 200))
def test_a_newcomer_waits_behind_at_most_the_others_windows(weights, base, at):
    tenants = {f"t{i}": w for i, w in enumerate(weights)}
    tenants["newcomer"] = 1
    others = sum(fairness.window_size(base, w) for t, w in tenants.items() if t != "newcomer")
    _, position = _simulate_band(tenants, base, concurrency=2, starts=at + 1, newcomer_at=at)
    assert position <= others


@given(total=st.integers(0, 10_000), share=st.floats(0, 1), standard=st.integers(0, 10_000),
       promoted=st.integers(0, 100), waiting=st.integers(0, 1000))
def test_promotions_make_up_the_shortfall_and_no_more(total, share, standard, promoted,
                                                      waiting):
    standard = min(standard, total)
    need = fairness.promotions_needed(starts_total=total, starts_standard=standard,
                                      min_share=share, promoted_waiting=promoted,
                                      standard_waiting=waiting)
    assert 0 <= need <= waiting
    if need:
        # Each promotion is still short of the share once the earlier ones start.
        assert standard + promoted + need - 1 < share * total
    elif waiting and total:
        assert standard + promoted >= share * total - 1e-6


@settings(max_examples=40, deadline=None)
@given(share=st.sampled_from([0.05, 0.1, 0.2, 0.3]), arrivals_every=st.integers(2, 40))
def test_under_a_premium_flood_standard_keeps_its_share_or_all_its_work(share,
                                                                       arrivals_every):
    """Strict priority with an endless premium backlog, the promotion rule applied
    at every start over a sliding window of the last 100 starts."""
    window, history, standard_queue, promoted = 100, [], 0, 0
    for n in range(2000):
        if n % arrivals_every == 0:
            standard_queue += 1
        recent = history[-window:]
        promoted += fairness.promotions_needed(
            starts_total=len(recent), starts_standard=recent.count("standard"),
            min_share=share, promoted_waiting=promoted, standard_waiting=standard_queue - promoted)
        if promoted:  # a promoted job is served before any premium one
            promoted -= 1
            standard_queue -= 1
            history.append("standard")
        else:
            history.append("premium")
    recent = history[-window:]
    assert recent.count("standard") >= share * window - 1 or standard_queue <= 1


def test_a_promoted_message_may_sit_above_its_band_and_nothing_else_may():
    from routing.celery_config import enforce_on_publish

    promoted = {"tier": "standard", PROMOTED_HEADER: 1}
    props = {"priority": fairness.PROMOTED_PRIORITY}
    enforce_on_publish(promoted, props, "slow.standard.demo.slow_task")
    assert props["priority"] == priorities.MAX_PRIORITY
    plain = {"tier": "standard"}
    props = {"priority": 9}
    enforce_on_publish(plain, props, "slow.standard.demo.slow_task")
    assert props["priority"] == priorities.STANDARD.high


# Windows in the job table, on the real broker -----------------------------------------

def _tenant(name: str, tier: str = "premium", weight: int = 1) -> Tenant:
    return Tenant.objects.create(name=name, tier=tier, weight=weight,
                                 max_queued_jobs=10**6, submissions_per_minute=10**6)


def _in_broker(tenant) -> int:
    return Job.objects.filter(tenant=tenant, published_at__isnull=False,
                              status=Job.Status.QUEUED).count()


def _ready(broker_url, queue="slow") -> int:
    with Connection(broker_url) as conn:
        return conn.default_channel.queue_declare(queue, passive=True).message_count


@pytest.mark.rabbitmq
@pytest.mark.django_db(transaction=True)
def test_submissions_past_the_window_wait_in_the_table(lanes_empty, settings):
    settings.SWITCHYARD_FAIR_WINDOW = {"slow": 2, "quick": 0}
    a = _tenant("flood-a")
    # When a tenant submits 5 slow jobs one by one and 3 quick ones
    slow = [job_submit(tenant=a, task="demo.slow_task", params={"seconds": 0})[0]
            for _ in range(5)]
    quick = [job_submit(tenant=a, task="demo.quick_task", params={})[0] for _ in range(3)]
    # Then its window (2) is in the broker, the other 3 slow jobs are held, due now
    assert _in_broker(a) == 2 + 3
    assert _ready(lanes_empty) == 2
    held = Job.objects.filter(id__in=[j.id for j in slow], published_at__isnull=True)
    assert held.count() == 3 and all(j.run_at is not None for j in held)
    # And the quick lane has no window: all 3 went straight to the broker
    assert _ready(lanes_empty, "quick") == 3
    assert not Job.objects.filter(id__in=[j.id for j in quick], published_at__isnull=True)


@pytest.mark.rabbitmq
@pytest.mark.django_db(transaction=True)
def test_bulk_publishes_up_to_the_window_and_the_dispatcher_follows_weights(lanes_empty,
                                                                           settings):
    settings.SWITCHYARD_FAIR_WINDOW = {"slow": 2, "quick": 0}
    a, b = _tenant("bulk-a"), _tenant("bulk-b", weight=3)
    out_a = job_submit_bulk(tenant=a, jobs=[BulkJob("demo.slow_task", {"seconds": 0})] * 50)
    out_b = job_submit_bulk(tenant=b, jobs=[BulkJob("demo.slow_task", {"seconds": 0})] * 50)
    assert (out_a.published, out_a.held, out_a.scheduled) == (2, 48, 0)
    assert (out_b.published, out_b.held) == (6, 44)
    # A pass with the windows full publishes nothing
    assert job_publish_due() == 0
    # When two of A's and three of B's jobs start, the next pass refills exactly those places
    for tenant, n in ((a, 2), (b, 3)):
        ids = list(Job.objects.filter(tenant=tenant, published_at__isnull=False)
                   .values_list("id", flat=True)[:n])
        Job.objects.filter(id__in=ids).update(status=Job.Status.STARTED,
                                              started_at=timezone.now())
    assert job_publish_due() == 5
    assert (_in_broker(a), _in_broker(b)) == (2, 6)
    # And an operator's weight change applies on the next pass
    Tenant.objects.filter(id=a.id).update(weight=4)
    assert job_publish_due() == 6
    assert _in_broker(a) == 8
    assert _ready(lanes_empty) == 2 + 6 + 5 + 6


@pytest.mark.rabbitmq
@pytest.mark.django_db(transaction=True)
def test_a_pass_over_a_lane_without_windows_is_shared_between_tenants(lanes_empty, settings):
    settings.SWITCHYARD_FAIR_WINDOW = {"slow": 2, "quick": 0}
    # Given a tenant whose name sorts first with 1,200 quick jobs the dispatcher must publish
    # (chunks, retries, countdowns come due this way) and two others with 20 each
    early, late, later = _tenant("aaa-big"), _tenant("zzz-small"), _tenant("zzzz-small")
    past = timezone.now() - dt.timedelta(minutes=1)

    def due(tenant, n):
        Job.objects.bulk_create([
            Job(tenant=tenant, tenant_name=tenant.name, task="demo.quick_task", lane="quick",
                tier="premium", priority=5, routing_key="quick.premium.demo.quick_task",
                params={"x": 1}, submitted_at=past, run_at=past) for _ in range(n)])

    due(early, 1200)
    due(late, 20)
    due(later, 20)
    # When the dispatcher makes one pass of 500
    assert job_publish_due(limit=500) == 500
    # Then the small tenants' work went out in that pass, not after the big one's backlog
    assert (_in_broker(late), _in_broker(later)) == (20, 20)
    assert _in_broker(early) == 460
    assert _ready(lanes_empty, "quick") == 500


@pytest.mark.rabbitmq
@pytest.mark.django_db(transaction=True)
def test_a_starved_standard_job_is_promoted_and_its_old_copy_goes_stale(lanes_empty,
                                                                        settings):
    settings.SWITCHYARD_FAIR_WINDOW = {"slow": 2, "quick": 0}
    premium, standard = _tenant("p-flood"), _tenant("s-steady", tier="standard")
    job, _ = job_submit(tenant=standard, task="demo.slow_task", params={"seconds": 0})
    assert job_promote_starved() == 0  # nothing started yet: no share to keep
    # Given 30 premium starts in the lane over the last seconds and none of standard
    now = timezone.now()
    Job.objects.bulk_create([Job(tenant=premium, tenant_name=premium.name, task="demo.slow_task",
                                 lane="slow", tier="premium", priority=7, routing_key="x",
                                 submitted_at=now, started_at=now, status=Job.Status.STARTED)
                             for _ in range(30)])
    # When the dispatcher checks the starvation bound
    assert job_promote_starved() == 1  # a shortfall of 3; one standard job waits
    job.refresh_from_db()
    # Then the standard job was published again above the premium band
    assert job.priority == fairness.PROMOTED_PRIORITY and job.publications == 2
    with Connection(lanes_empty) as conn:
        bound = Queue("slow", no_declare=True)(conn.default_channel)
        first, second = bound.get(no_ack=True), bound.get(no_ack=True)
    assert first.properties["priority"] == priorities.MAX_PRIORITY
    assert first.headers[PROMOTED_HEADER] == 1 and first.headers[PUBLICATION_HEADER] == 2
    assert second.headers[PUBLICATION_HEADER] == 1  # the stale copy, acknowledged unrun
    # And a second check does not promote it again
    assert job_promote_starved() == 0
    # And if that run fails and waits for a retry, it goes out again in its own band
    Job.objects.filter(id=job.id).update(status=Job.Status.RETRYING, published_at=None,
                                         run_at=timezone.now())
    assert job_publish_due() == 1
    job.refresh_from_db()
    assert job.priority == priorities.STANDARD.high and job.publications == 3


@pytest.mark.rabbitmq
@pytest.mark.django_db(transaction=True)
def test_a_standard_job_near_its_max_wait_is_promoted_whatever_the_share(lanes_empty,
                                                                        settings):
    settings.SWITCHYARD_STANDARD_MIN_SHARE = {"slow": 0.0, "quick": 0.0}
    settings.SWITCHYARD_STANDARD_MAX_WAIT = {"slow": 20.0, "quick": 20.0}
    settings.SWITCHYARD_STARVATION_MARGIN = 5.0
    standard = _tenant("s-old", tier="standard")
    old, _ = job_submit(tenant=standard, task="demo.slow_task", params={"seconds": 0})
    young, _ = job_submit(tenant=standard, task="demo.slow_task", params={"seconds": 0})
    Job.objects.filter(id=old.id).update(published_at=timezone.now() - dt.timedelta(seconds=16))
    # While only standard work runs in the lane, the old job waits behind its own tier:
    # a promotion would not help it, so none is made
    now = timezone.now()
    Job.objects.create(tenant=standard, tenant_name=standard.name, task="demo.slow_task",
                       lane="slow", tier="standard", priority=2, routing_key="x",
                       submitted_at=now, started_at=now, status=Job.Status.STARTED)
    assert job_promote_starved() == 0
    # Once premium work runs there, the job nearing its max wait is promoted
    premium = _tenant("p-busy")
    Job.objects.create(tenant=premium, tenant_name=premium.name, task="demo.slow_task",
                       lane="slow", tier="premium", priority=7, routing_key="x",
                       submitted_at=now, started_at=now, status=Job.Status.STARTED)
    assert job_promote_starved() == 1
    old.refresh_from_db()
    young.refresh_from_db()
    assert old.priority == priorities.MAX_PRIORITY
    assert young.priority <= priorities.STANDARD.high


# With real workers and dispatchers -------------------------------------------------------

@pytest.mark.rabbitmq
@pytest.mark.workers
def test_a_tenant_after_a_flood_starts_before_the_flood_drains(start_role, management):
    # Given tenant A's 120 premium slow jobs (0.3 s) in the slow lane (2 processes)
    a, b = _tenant("noisy"), _tenant("quiet")
    job_submit_bulk(tenant=a, jobs=[BulkJob("demo.slow_task", {"seconds": 0.3})] * 120)
    roles = [start_role("dispatcher"), start_lane(start_role, management, "slow", 2)]
    wait_until(lambda: Job.objects.filter(tenant=a, started_at__isnull=False).count() >= 2, 60,
               "the flood under way", roles=roles)

    # When tenant B submits 3 jobs in the same band
    mine = [job_submit(tenant=b, task="demo.slow_task", params={"seconds": 0.3})[0]
            for _ in range(3)]

    # Then B's jobs start after a few of A's, not after A's backlog: between B's first
    # submission and B's last start, at most A's window and the running jobs went first
    wait_until(lambda: Job.objects.filter(id__in=[j.id for j in mine],
                                          status="succeeded").count() == 3, 60,
               "B's jobs", roles=roles)
    last_b = max(Job.objects.filter(id__in=[j.id for j in mine])
                 .values_list("started_at", flat=True))
    a_before_b = Job.objects.filter(tenant=a, started_at__gt=mine[0].submitted_at,
                                    started_at__lt=last_b).count()
    a_after_b = Job.objects.filter(tenant=a).exclude(started_at__lte=last_b).count()
    assert a_before_b <= 8, a_before_b
    assert a_after_b >= 40, a_after_b


@pytest.mark.rabbitmq
@pytest.mark.workers
def test_a_started_job_hands_its_window_place_to_the_next_held_job_at_once(start_role,
                                                                        management):
    # Given a tenant's 8 slow jobs: its window (2) in the broker, 6 held, and no dispatcher
    tenant = _tenant("refill")
    outcome = job_submit_bulk(tenant=tenant,
                              jobs=[BulkJob("demo.slow_task", {"seconds": 0.05})] * 8)
    assert (outcome.published, outcome.held) == (2, 6)
    # When a slow worker runs them
    worker = start_lane(start_role, management, "slow", 1)
    # Then each start releases the next held job: all 8 run without a dispatcher pass
    wait_until(lambda: Job.objects.filter(tenant=tenant, status="succeeded").count() == 8, 60,
               "the held jobs to run", roles=[worker])
    # And each was published once: no second copy for the dispatcher to publish
    assert Job.objects.filter(tenant=tenant, publications__gt=1).count() == 0


@pytest.mark.rabbitmq
@pytest.mark.workers
def test_standard_work_moves_under_a_premium_flood(start_role, management):
    # Given a premium flood of 150 slow jobs (0.2 s) on one slow process
    premium, standard = _tenant("flood-p"), _tenant("steady-s", tier="standard")
    job_submit_bulk(tenant=premium, jobs=[BulkJob("demo.slow_task", {"seconds": 0.2})] * 150)
    roles = [start_role("dispatcher"), start_lane(start_role, management, "slow", 1)]
    wait_until(lambda: Job.objects.filter(tenant=premium, status="succeeded").count() >= 5, 60,
               "the flood under way", roles=roles)

    # When a standard tenant submits 3 jobs
    mine = [job_submit(tenant=standard, task="demo.slow_task", params={"seconds": 0})[0].id
            for _ in range(3)]

    # Then they run while the premium flood is still far from done (strict priority
    # would run them only after all 150), and each ran once
    wait_until(lambda: Job.objects.filter(id__in=mine, status="succeeded").count() == 3, 60,
               "the standard jobs", roles=roles)
    assert Job.objects.filter(tenant=premium, started_at__isnull=True).count() >= 60
    assert set(Job.objects.filter(id__in=mine).values_list("attempts", flat=True)) == {1}


@pytest.mark.rabbitmq
@pytest.mark.workers
def test_killing_a_dispatcher_loses_no_held_job(start_role, management):
    # Given 40 held jobs of one tenant and two dispatchers
    a = _tenant("crash")
    out = job_submit_bulk(tenant=a, jobs=[BulkJob("demo.slow_task", {"seconds": 0.05})] * 40)
    assert out.held == 40 - django_settings.SWITCHYARD_FAIR_WINDOW["slow"]
    first = start_role("dispatcher", name="dispatcher-1")
    second = start_role("dispatcher", name="dispatcher-2")
    worker = start_lane(start_role, management, "slow", 2)
    wait_until(lambda: Job.objects.filter(tenant=a, status="succeeded").count() >= 10, 60,
               "work under way", roles=[first, second, worker])

    # When one dispatcher is killed outright (no warm shutdown)
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)

    # Then the other one releases the rest: every job runs, each exactly once, and the
    # tenant never had more than its window in the broker
    seen = []

    def all_done() -> bool:
        seen.append(_in_broker(a))
        return Job.objects.filter(tenant=a, status="succeeded").count() == 40

    wait_until(all_done, 90, "all 40 jobs", roles=[second, worker])
    assert set(Job.objects.filter(tenant=a).values_list("attempts", flat=True)) == {1}
    assert max(seen) <= django_settings.SWITCHYARD_FAIR_WINDOW["slow"], seen

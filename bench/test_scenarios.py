"""``make bench``: scenarios S1-S11, each against its baseline in the same run.

Switchyard runs as in production (role scripts: gunicorn web, one worker
process per lane, the dispatcher, Flower), against this run's vhost and
database; the baseline is plain Celery (``bench.plain_celery``) on the same
broker, one scenario at a time so the two never share the CPU. Figures are
recorded, never asserted: ``harness.report`` prints the table at the end.
"""
from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import signal
import sys
import time
import uuid

import pika
import pytest
from django.db.models import Max, Min
from django.utils import timezone
from kombu import Connection

from bench import harness
from bench.harness import distribution, median, percentile, record, scale
from bench.plain_celery import timings
from jobs.bulk import BulkJob, _Rows, job_submit_bulk
from jobs.models import Job
from jobs.submission import job_submit
from routing import wire
from tenants.models import Tenant
from tenants.services import broker_user_issue, tenant_create
from tests.processes import Role, role_env
from tests.test_api_e2e import _http
from tests.test_lanes import start_lane
from tests.test_platform import free_port

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers]

SLOW_CONCURRENCY = 2
QUICK_CONCURRENCY = 2


def _tenant(name: str, tier: str) -> Tenant:
    """A tenant whose quotas never get in a benchmark's way; ``.key`` is its API token."""
    tenant, key = tenant_create(name=name, tier=tier)
    Tenant.objects.filter(id=tenant.id).update(max_queued_jobs=10_000_000,
                                               submissions_per_minute=10_000_000)
    tenant.refresh_from_db()
    tenant.key = key
    return tenant


def _ready(conn: Connection, queue: str) -> int:
    return conn.default_channel.queue_declare(queue, passive=True).message_count


def _purge(broker_url: str, *queues: str) -> None:
    with Connection(broker_url) as conn:
        for queue in queues:
            conn.default_channel.queue_purge(queue)


def _plain_slow_flood(roles, broker_url: str, plain_worker, flood: int, duration: float,
                      tag: str):
    """Stop Switchyard's ``roles``, empty the slow lane, then start the plain Celery
    baseline (one priority queue, late ack, prefetch 1) with ``flood`` premium sleeps
    of ``duration`` queued: ``(worker process, app, timing file)``."""
    for role in roles:
        role.stop()
    _purge(broker_url, "slow")
    proc, app, timing_file = plain_worker(concurrency=SLOW_CONCURRENCY, priority=True,
                                          acks_late=True, prefetch=1)
    with app.producer_or_acquire() as producer:
        for _ in range(flood):
            app.send_task("plain.sleep", args=(duration, tag), priority=7, producer=producer)
    time.sleep(2)
    return proc, app, timing_file


def _finished(ids) -> int:
    return Job.objects.filter(id__in=ids, finished_at__isnull=False).count()


def _web(start_role):
    port = free_port()
    web = start_role("web", WEB_BIND=f"127.0.0.1:{port}", WEB_WORKERS="2")
    harness.wait_for(lambda: _http(f"http://127.0.0.1:{port}/healthz") == 200, 60, "web",
                     [web])
    return web, port


def _post(port: int, path: str, body: bytes, key: str) -> tuple[int, dict, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    started = time.perf_counter()
    conn.request("POST", path, body=body, headers={"Authorization": f"Token {key}",
                                                   "Content-Type": "application/json"})
    resp = conn.getresponse()
    payload = json.loads(resp.read())
    took = time.perf_counter() - started
    conn.close()
    return resp.status, payload, took


def _behind_a_slow_backlog(start_role, management, tenant: Tenant, backlog: int):
    """``backlog`` slow jobs of 1 s for ``tenant``, the dispatcher feeding the slow lane
    from the job table (fair-share windows), both lanes' workers running and the slow
    ones busy: ``(dispatcher, slow worker, quick worker)``."""
    job_submit_bulk(tenant=tenant, jobs=[BulkJob("demo.slow_task", {"seconds": 1.0})] * backlog,
                    enforce_quotas=False)
    dispatcher = start_role("dispatcher")
    slow = start_lane(start_role, management, "slow", SLOW_CONCURRENCY)
    quick = start_lane(start_role, management, "quick", QUICK_CONCURRENCY)
    harness.wait_for(lambda: Job.objects.filter(status="started").count() >= SLOW_CONCURRENCY,
                     60, "slow workers busy", [slow])
    return dispatcher, slow, quick


# S1 -----------------------------------------------------------------------------

def test_s1_quick_jobs_behind_a_slow_backlog(start_role, management, plain_worker, lanes_empty):
    """The seed's head-of-line case: a slow backlog, then quick jobs over 10 s."""
    backlog, probes, span = scale(20_000, 2_000), scale(200, 40), scale(10, 4)
    censor = scale(30, 3)
    tenant = _tenant("s1", "standard")

    # Switchyard: slow and quick lanes, each its own worker process.
    dispatcher, slow, quick = _behind_a_slow_backlog(start_role, management, tenant, backlog)
    ids = []
    for i in range(probes):
        job, _ = job_submit(tenant=tenant, task="demo.quick_task", params={"x": i})
        ids.append(job.id)
        time.sleep(span / probes)
    harness.wait_for(lambda: _finished(ids) == probes, 60, "quick probes", [slow, quick],
                     interval=0.2)
    ours = [(j.finished_at - j.submitted_at).total_seconds() * 1000
            for j in Job.objects.filter(id__in=ids)]
    slow.stop()
    quick.stop()
    dispatcher.stop()
    _purge(lanes_empty, "slow", "quick")

    # Baseline: plain Celery, one queue and one worker for everything (the seed before its fix).
    proc, app, timing_file = plain_worker(concurrency=SLOW_CONCURRENCY)
    with app.producer_or_acquire() as producer:
        for _ in range(backlog):
            app.send_task("plain.sleep", args=(1.0,), producer=producer)
    time.sleep(2)
    submitted = {}
    for i in range(probes):
        result = app.send_task("plain.quick", args=(i,))
        submitted[result.id] = time.time()
        time.sleep(span / probes)
    deadline = time.time() + censor
    while time.time() < deadline:
        done = timings(timing_file)
        if all(task_id in done for task_id in submitted):
            break
        time.sleep(0.5)
    done = timings(timing_file)
    theirs = [((done[t][2] - sent) * 1000) if t in done else (time.time() - sent) * 1000
              for t, sent in submitted.items()]
    completed = sum(1 for t in submitted if t in done)
    note = "" if completed == probes else (
        f"plain Celery: {completed} of {probes} quick jobs done {censor} s after the last "
        "probe; the others are counted at their wait so far (a lower bound)")

    p50, p99 = percentile(ours, 50), percentile(ours, 99)
    record("S1", "quick end-to-end p50", p50, percentile(theirs, 50), "ms",
           target="<= 10 ms", passed=p50 <= 10, note=note)
    record("S1", "quick end-to-end p99", p99, percentile(theirs, 99), "ms",
           target="<= 50 ms", passed=p99 <= 50)
    distribution("S1 switchyard quick lane", ours)
    distribution("S1 plain Celery, one queue", theirs)


# S2 -----------------------------------------------------------------------------

def _overtakes(waits: list[tuple[float, float]], standard_starts: list[float]) -> list[int]:
    """For each premium job (queued, started): standard jobs that started in between."""
    starts = sorted(standard_starts)
    out = []
    for queued, started in waits:
        out.append(sum(1 for s in starts if queued < s < started))
    return out


def test_s2_premium_overtakes_a_standard_backlog(start_role, management, plain_worker,
                                                 lanes_empty):
    """Standard slow backlog; premium slow jobs arrive; how long does premium wait?"""
    backlog, premium, duration = scale(5_000, 400), scale(100, 15), 0.5
    interval = duration / SLOW_CONCURRENCY * 1.6  # premium alone never fills the lane
    standard_tenant, premium_tenant = _tenant("s2-std", "standard"), _tenant("s2-prem", "premium")

    job_submit_bulk(tenant=standard_tenant, jobs=[
        BulkJob("demo.slow_task", {"seconds": duration})] * backlog, enforce_quotas=False)
    dispatcher = start_role("dispatcher")
    slow = start_lane(start_role, management, "slow", SLOW_CONCURRENCY)
    harness.wait_for(lambda: Job.objects.filter(status="started").count() >= 1, 60,
                     "slow workers busy", [slow])
    ids = []
    for _ in range(premium):
        job, _ = job_submit(tenant=premium_tenant, task="demo.slow_task",
                            params={"seconds": duration})
        ids.append(job.id)
        time.sleep(interval)
    harness.wait_for(lambda: _finished(ids) == premium, 120, "premium jobs", [slow], 0.2)
    slow.stop()
    dispatcher.stop()
    jobs = list(Job.objects.filter(id__in=ids))
    ours = [(j.started_at - j.submitted_at).total_seconds() * 1000 for j in jobs]
    std_starts = [s.timestamp() for s in Job.objects.filter(
        tenant=standard_tenant, started_at__isnull=False).values_list("started_at", flat=True)]
    ours_over = _overtakes([(j.submitted_at.timestamp(), j.started_at.timestamp())
                            for j in jobs], std_starts)
    _purge(lanes_empty, "slow")

    # Baseline: the same priority queue with Celery's defaults (prefetch x4, early ack).
    proc, app, timing_file = plain_worker(concurrency=SLOW_CONCURRENCY, priority=True)
    with app.producer_or_acquire() as producer:
        for _ in range(backlog):
            app.send_task("plain.sleep", args=(duration, "std"), priority=2, producer=producer)
    time.sleep(2)
    submitted = {}
    for _ in range(premium):
        result = app.send_task("plain.sleep", args=(duration, "prem"), priority=7)
        submitted[result.id] = time.time()
        time.sleep(interval)
    harness.wait_for(lambda: all(t in timings(timing_file) for t in submitted), 120,
                     "baseline premium jobs", [proc], 0.3)
    done = timings(timing_file)
    theirs = [(done[t][1] - sent) * 1000 for t, sent in submitted.items()]
    their_over = _overtakes([(sent, done[t][1]) for t, sent in submitted.items()],
                            [v[1] for v in done.values() if v[0] == "std"])

    limit = duration * 1000 + 50
    p99 = percentile(ours, 99)
    record("S2", "premium queue wait p50", percentile(ours, 50), percentile(theirs, 50), "ms")
    record("S2", "premium queue wait p99", p99, percentile(theirs, 99), "ms",
           target=f"<= {limit:.0f} ms", passed=p99 <= limit,
           note=f"slow task {duration * 1000:.0f} ms, {SLOW_CONCURRENCY} processes, premium "
                f"every {interval * 1000:.0f} ms over a {backlog:,}-job standard backlog")
    record("S2", "standard starts while a premium waited (max)", max(ours_over),
           max(their_over), "jobs", target=f"<= {SLOW_CONCURRENCY}",
           passed=max(ours_over) <= SLOW_CONCURRENCY)
    distribution("S2 switchyard premium wait", ours)
    distribution("S2 plain Celery defaults premium wait", theirs)


# S3 -----------------------------------------------------------------------------

def test_s3_submitting_jobs_with_publisher_confirms(start_role, management, plain_worker,
                                                    lanes_empty):
    """100,000 jobs submitted, each recorded and confirmed by the broker."""
    total, per_request, baseline_n = scale(100_000, 5_000), 10_000, scale(10_000, 1_000)
    tenant = _tenant("s3", "standard")

    jobs = [BulkJob("demo.quick_task", {"x": i}) for i in range(total)]
    started = time.perf_counter()
    outcome = job_submit_bulk(tenant=tenant, jobs=jobs)
    python_s = time.perf_counter() - started
    python_rate = total / python_s
    python_note = "" if outcome.published == total else (
        f"{outcome.published} confirmed, {outcome.deferred} left to the dispatcher")
    _purge(lanes_empty, "quick")

    # The same messages through the same publisher with nothing recorded: what
    # the broker itself takes, persistent and confirmed, on this machine.
    rows = _Rows(tenant, timezone.now())
    messages = [rows.build(uuid.uuid4(), BulkJob("demo.quick_task", {"x": i}), None, None)[1]
                for i in range(total)]
    started = time.perf_counter()
    with wire.ConfirmingPublisher.from_url(lanes_empty) as publisher:
        alone = publisher.publish(messages, deadline=300)
    publisher_rate = len(alone.confirmed) / (time.perf_counter() - started)
    _purge(lanes_empty, "quick")

    api_key = _tenant("s3-api", "standard").key
    web, port = _web(start_role)
    _post(port, "/api/v1/jobs/bulk", json.dumps({"jobs": [{"task": "demo.quick_task"}]}).encode(),
          api_key)
    size = min(per_request, total)
    bodies = [json.dumps({"jobs": [{"task": "demo.quick_task", "params": {"x": i}}
                                   for i in range(start, min(start + size, total))]}).encode()
              for start in range(0, total, size)]
    confirmed = 0
    started = time.perf_counter()
    for body in bodies:
        code, payload, _ = _post(port, "/api/v1/jobs/bulk", body, api_key)
        assert code == 202, payload
        confirmed += payload["published"]
    api_rate = total / (time.perf_counter() - started)
    web_rss = harness.peak_rss_mb(web)
    web.stop()
    _purge(lanes_empty, "quick")

    # Baseline: apply_async with confirm_publish, one message at a time.
    _, app, _ = plain_worker(start_worker=False, queue="plain-s3")
    app.conf.broker_transport_options = {"confirm_publish": True}
    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i in range(baseline_n):
            app.send_task("plain.noop", args=(i,), producer=producer)
    celery_rate = baseline_n / (time.perf_counter() - started)
    _purge(lanes_empty, "plain-s3")

    # Ceiling: raw pika, no confirms, no record, a message of the same size.
    params = pika.URLParameters(lanes_empty)
    body = json.dumps([[], {"x": 1}, {"callbacks": None, "errbacks": None, "chain": None,
                                      "chord": None}]).encode()
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    props = pika.BasicProperties(content_type="application/json", delivery_mode=2, priority=2,
                                 headers={"task": "demo.quick_task", "id": str(uuid.uuid4())})
    started = time.perf_counter()
    for _ in range(total):
        channel.basic_publish("", "plain-s3", body, props)
    channel.queue_declare("plain-s3", passive=True)  # every publish reached the broker
    pika_rate = total / (time.perf_counter() - started)
    connection.close()
    _purge(lanes_empty, "plain-s3")

    record("S3", f"bulk submit, Python, {total:,} jobs", python_rate, celery_rate, "jobs/s",
           target=">= 10,000/s", passed=python_rate >= 10_000, note=python_note)
    record("S3", f"bulk submit, HTTP {size:,}/request", api_rate, celery_rate, "jobs/s",
           target=">= 10,000/s", passed=api_rate >= 10_000,
           note=f"{confirmed:,} of {total:,} confirmed before the answers")
    record("S3", "publisher alone: persistent, confirmed, no record", publisher_rate, None,
           "msg/s", note="the broker's own ceiling for this path: the bulk path's messages "
                         "and publisher, nothing written to PostgreSQL")
    record("S3", "ceiling: raw pika, no confirms, no record", None, pika_rate, "msg/s",
           note="baseline column: what the client library alone reaches")
    harness.WEB_RSS_MB = web_rss


# S4 and S5 ----------------------------------------------------------------------

def _witnessed_rate(timing_file) -> float:
    """Runs per second from the first run's start to the last run's end (timing lines)."""
    runs = timings(timing_file).values()
    return len(runs) / (max(end for _, _, end in runs) - min(start for _, start, _ in runs))


def _sqlalchemy_url() -> str:
    """This run's PostgreSQL database as a SQLAlchemy URL (psycopg 3)."""
    from django.db import connection

    s = connection.settings_dict
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return (f"postgresql+psycopg://{auth}@{s.get('HOST') or '127.0.0.1'}:"
            f"{s.get('PORT') or 5432}/{s['NAME']}")


def test_s4_s5_worker_overhead_and_memory(start_role, management, plain_worker, lanes_empty):
    """No-op jobs drained per second by one worker (2 processes), and peak memory."""
    total = scale(100_000, 1_500)
    tenant = _tenant("s4", "standard")
    flower_port, default_port = free_port(), free_port()
    flower = start_role("flower", FLOWER_PORT=str(flower_port), FLOWER_ADDRESS="127.0.0.1",
                        FLOWER_BASIC_AUTH="bench:bench-password-1")
    default_flower = start_role("flower", name="flower-defaults", FLOWER_PORT=str(default_port),
                                FLOWER_ADDRESS="127.0.0.1",
                                FLOWER_BASIC_AUTH="bench:bench-password-1",
                                FLOWER_MAX_TASKS="100000")
    harness.wait_for(lambda: _http(f"http://127.0.0.1:{flower_port}/healthcheck") in (200, 401)
                     and _http(f"http://127.0.0.1:{default_port}/healthcheck") in (200, 401),
                     60, "both Flowers", [flower, default_flower])

    outcome = job_submit_bulk(tenant=tenant, jobs=[BulkJob("demo.quick_task", {"x": 1})] * total,
                              enforce_quotas=False)
    assert outcome.published == total, outcome
    worker = start_lane(start_role, management, "quick", QUICK_CONCURRENCY)
    # The figure: from the first job's start to the last job's outcome, as the job records
    # (Switchyard's own witness) say; every job must be finished, and succeeded.
    jobs = Job.objects.filter(task="demo.quick_task", tenant=tenant)
    harness.wait_for(lambda: jobs.filter(finished_at__isnull=False).count() == total, 300,
                     "every job's outcome recorded", [worker])
    succeeded = jobs.filter(status="succeeded").count()
    assert succeeded == total, f"{succeeded} of {total} succeeded"
    span = jobs.aggregate(a=Min("started_at"), b=Max("finished_at"))
    ours = total / (span["b"] - span["a"]).total_seconds()
    time.sleep(3)  # let both Flowers take in the last events
    worker_rss, flower_rss = harness.peak_rss_mb(worker), harness.peak_rss_mb(flower)
    worker_pss = harness.pss_mb(worker)
    default_rss = harness.peak_rss_mb(default_flower)
    worker.stop()

    proc, app, _ = plain_worker(concurrency=QUICK_CONCURRENCY, acks_late=True, prefetch=1,
                                queue="plain-s4", start_worker=False)
    with app.producer_or_acquire() as producer:
        for _ in range(total):
            app.send_task("plain.quick", args=(1,), producer=producer)
    proc, _, timing_file = plain_worker(concurrency=QUICK_CONCURRENCY, acks_late=True,
                                        prefetch=1, queue="plain-s4")
    # The same figure for plain Celery, from its own witness: each run's start and end,
    # appended by the task (one short write per run, its only bookkeeping).
    harness.wait_for(lambda: len(timings(timing_file)) == total, 300, "every plain run",
                     [proc])
    theirs = _witnessed_rate(timing_file)
    plain_rss, plain_pss = harness.peak_rss_mb(proc), harness.pss_mb(proc)
    proc.stop()

    # A second baseline: plain Celery with its database result backend on the same
    # PostgreSQL (each task's STARTED and SUCCESS written to a table), the setup a team
    # picks when it wants status per task, as Switchyard's job records give.
    results = _sqlalchemy_url()
    proc, app, _ = plain_worker(concurrency=QUICK_CONCURRENCY, acks_late=True, prefetch=1,
                                queue="plain-s4r", start_worker=False, results=results)
    with app.producer_or_acquire() as producer:
        for _ in range(total):
            app.send_task("plain.quick", args=(1,), producer=producer)
    proc, _, timing_file = plain_worker(concurrency=QUICK_CONCURRENCY, acks_late=True,
                                        prefetch=1, queue="plain-s4r", results=results)
    harness.wait_for(lambda: len(timings(timing_file)) == total, 300,
                     "every plain run with results", [proc])
    with_results = _witnessed_rate(timing_file)
    from django.db import connection
    with connection.cursor() as cursor:  # the backend really wrote every outcome
        cursor.execute("SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'")
        stored = cursor.fetchone()[0]
    assert stored == total, f"{stored} of {total} results stored"

    record("S4", "no-op jobs run, 1 worker x2", ours, theirs, "jobs/s",
           target=">= 0.8x baseline", passed=ours >= 0.8 * theirs,
           note=f"first start to last end, each side by its own witness (Switchyard: the "
                f"job records, all {total:,} succeeded; Celery: each run's timing line); same "
                f"ack (late) and prefetch (1)")
    record("S4", "no-op jobs run, vs Celery + database results", ours, with_results, "jobs/s",
           target=">= 1.0x baseline", passed=ours >= with_results,
           note="baseline: plain Celery with its SQLAlchemy result backend on the same "
                "PostgreSQL, task_track_started on (a STARTED and a SUCCESS row per task); "
                "same ack, prefetch and witness as above")
    record("S5", f"worker peak RSS after {total:,} jobs", worker_rss, plain_rss, "MB",
           note="process group: main process and 2 pool children")
    record("S5", f"worker PSS after {total:,} jobs", worker_pss, plain_pss, "MB",
           target="<= 1.3x baseline", passed=worker_pss <= 1.3 * plain_pss,
           note="proportional set size: pages the pool children share with the main "
                "process counted once")
    record("S5", f"Flower peak RSS after {total:,} jobs", flower_rss, default_rss, "MB",
           note="Switchyard's Flower (max_tasks 10,000) vs Flower with its default 100,000")
    web_rss = getattr(harness, "WEB_RSS_MB", None)
    if web_rss is not None:
        record("S5", "web peak RSS (gunicorn, 2 workers) after S3's HTTP bulk", web_rss, None,
               "MB")


# S6 -----------------------------------------------------------------------------

def test_s6_a_batch_accepted_and_completed_in_chunks(start_role, management, plain_worker,
                                                     lanes_empty):
    items, baseline_n = scale(100_000, 2_000), scale(20_000, 1_000)
    key = _tenant("s6", "premium").key
    web, port = _web(start_role)
    body = json.dumps({"task": "demo.checksum", "items": [
        {"data": f"s3://media/uploads/2026/11/{i:08d}.jpg"} for i in range(items)]}).encode()
    accepts = []
    batch_id = None
    for _ in range(scale(3, 1)):
        code, payload, took = _post(port, "/api/v1/batches", body, key)
        assert code == 202, payload
        accepts.append(took)
        if batch_id is not None:  # keep only the last batch to run
            Job.objects.filter(batch_id=batch_id).update(status="cancelled")
        batch_id = payload["id"]
    web.stop()
    started = time.perf_counter()
    roles = [start_role("dispatcher"), start_lane(start_role, management, "quick",
                                                  QUICK_CONCURRENCY)]
    harness.wait_for(lambda: not Job.objects.filter(
        batch_id=batch_id, status__in=("queued", "started")).exists(), 900, "the batch",
        roles, 0.5)
    ours = items / (time.perf_counter() - started)
    for role in roles:
        role.stop()

    # Baseline: one plain Celery task per item, sent then drained by one worker (x2).
    _, app, _ = plain_worker(start_worker=False, queue="plain-s6", acks_late=True, prefetch=1)
    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i in range(baseline_n):
            app.send_task("plain.noop", args=(i,), producer=producer)
    proc, _, _ = plain_worker(queue="plain-s6", acks_late=True, prefetch=1,
                              concurrency=QUICK_CONCURRENCY)
    with Connection(lanes_empty) as conn:
        harness.wait_for(lambda: _ready(conn, "plain-s6") == 0, 900, "baseline items", [proc],
                         0.1)
    theirs = baseline_n / (time.perf_counter() - started)

    accept = median(accepts)
    record("S6", f"{items:,}-item batch accepted (HTTP, median of {len(accepts)})", accept,
           None, "s", target="<= 3 s", passed=accept <= 3,
           note=f"{len(body) / 1e6:.1f} MB body")
    record("S6", "items completed per second", ours, theirs, "items/s",
           note=f"baseline: one Celery task per item ({baseline_n:,} items, send + drain)")


# S7 -----------------------------------------------------------------------------

def _plain_waits(submitted: dict[str, float], done: dict, now: float) -> list[float]:
    """Waits (ms) of plain Celery jobs: to their start, or so far if not finished
    (a lower bound: the plain task records its start only when it ends)."""
    return [((done[t][1] - sent) if t in done else (now - sent)) * 1000
            for t, sent in submitted.items()]


def test_s7_noisy_neighbour(start_role, management, plain_worker, lanes_empty):
    """Tenant A floods the premium band of the slow lane; tenant B then submits 20."""
    flood, probes, duration = scale(10_000, 300), scale(20, 6), 0.5
    pace = duration * 1.25  # B asks for 80 % of its fair share (half the lane)
    censor = scale(20, 3)
    a, b = _tenant("s7-a", "premium"), _tenant("s7-b", "premium")

    job_submit_bulk(tenant=a, jobs=[BulkJob("demo.slow_task", {"seconds": duration})] * flood,
                    enforce_quotas=False)
    roles = [start_role("dispatcher"), start_lane(start_role, management, "slow",
                                                  SLOW_CONCURRENCY)]
    harness.wait_for(lambda: Job.objects.filter(tenant=a, status="started").count()
                     >= SLOW_CONCURRENCY, 60, "A's flood running", roles)
    ids = []
    for _ in range(probes):
        ids.append(job_submit(tenant=b, task="demo.slow_task",
                              params={"seconds": duration})[0].id)
        time.sleep(pace)
    harness.wait_for(lambda: Job.objects.filter(id__in=ids, started_at__isnull=False).count()
                     == probes, 120, "B's jobs", roles, 0.2)
    ours = [(j.started_at - j.submitted_at).total_seconds() * 1000
            for j in Job.objects.filter(id__in=ids).order_by("submitted_at")]
    # Then a third tenant submits as many at once: its first job starts behind A's window;
    # the rest at its fair share (half the lane: A is backlogged, B has finished).
    c = _tenant("s7-c", "premium")
    burst = [job_submit(tenant=c, task="demo.slow_task", params={"seconds": duration})[0].id
             for _ in range(probes)]
    harness.wait_for(lambda: Job.objects.filter(id__in=burst, started_at__isnull=False)
                     .count() == probes, 180, "C's burst", roles, 0.2)
    ours_burst = [(j.started_at - j.submitted_at).total_seconds() * 1000
                  for j in Job.objects.filter(id__in=burst)]
    # Baseline: one priority queue, same ack (late) and prefetch (1), no fair sharing.
    proc, app, timing_file = _plain_slow_flood(roles, lanes_empty, plain_worker, flood,
                                               duration, "a")
    submitted = {}
    for _ in range(probes):
        submitted[app.send_task("plain.sleep", args=(duration, "b"), priority=7).id] = time.time()
        time.sleep(pace)
    deadline = time.time() + censor
    while time.time() < deadline and not all(t in timings(timing_file) for t in submitted):
        time.sleep(0.5)
    burst_sent = {}
    for _ in range(probes):
        burst_sent[app.send_task("plain.sleep", args=(duration, "c"), priority=7).id] = (
            time.time())
    time.sleep(censor)
    done = timings(timing_file)
    now = time.time()
    theirs = _plain_waits(submitted, done, now)
    theirs_burst = _plain_waits(burst_sent, done, now)
    finished = sum(1 for t in submitted if t in done)
    expected = flood * duration / SLOW_CONCURRENCY

    limit = 2 * duration * 1000
    p99 = percentile(ours, 99)
    record("S7", "B's queue wait p50", percentile(ours, 50), percentile(theirs, 50), "ms")
    record("S7", "B's queue wait p99", p99, percentile(theirs, 99), "ms",
           target=f"<= {limit:.0f} ms (2 slow tasks)", passed=p99 <= limit,
           note=f"A: {flood:,} premium slow jobs ({duration * 1000:.0f} ms, {SLOW_CONCURRENCY} "
                f"processes); B: {probes} premium jobs, one every {pace * 1000:.0f} ms. "
                f"Baseline: {finished} of {probes} of B's jobs done {censor} s after the last; "
                f"the others are counted at their wait so far (a lower bound; A's backlog "
                f"alone takes about {expected:,.0f} s)")
    record("S7", "B's first job's queue wait", ours[0] if ours else None,
           theirs[0] if theirs else None, "ms")
    record("S7", f"C: {probes} at once, first job's queue wait", min(ours_burst),
           min(theirs_burst), "ms")
    record("S7", f"C: {probes} at once, last job's queue wait", max(ours_burst),
           max(theirs_burst), "ms",
           note=f"C's fair share is half the lane ({SLOW_CONCURRENCY} processes, A "
                f"backlogged): its {probes} jobs start over about "
                f"{probes * duration * 2 / SLOW_CONCURRENCY:.0f} s; "
                f"baseline: counted at the wait so far {censor} s after (a lower bound)")
    distribution("S7 switchyard fair share, B's wait", ours)
    distribution("S7 plain priority queue, B's wait", theirs)


# S8 -----------------------------------------------------------------------------

def test_s8_standard_under_a_premium_flood(start_role, management, plain_worker, lanes_empty,
                                           settings):
    """Premium work above the slow lane's capacity for 2 minutes, standard arriving steadily."""
    span, duration, every = scale(120, 6), 0.5, 2.0
    capacity = SLOW_CONCURRENCY / duration
    flood = int(capacity * span * 2)  # twice what the lane can serve in the span
    min_share = settings.SWITCHYARD_STANDARD_MIN_SHARE["slow"]
    max_wait = settings.SWITCHYARD_STANDARD_MAX_WAIT["slow"]
    premium, standard = _tenant("s8-prem", "premium"), _tenant("s8-std", "standard")

    job_submit_bulk(tenant=premium, jobs=[BulkJob("demo.slow_task", {"seconds": duration})]
                    * flood, enforce_quotas=False)
    roles = [start_role("dispatcher"), start_lane(start_role, management, "slow",
                                                  SLOW_CONCURRENCY)]
    harness.wait_for(lambda: Job.objects.filter(status="started").count() >= SLOW_CONCURRENCY,
                     60, "premium flood running", roles)
    begin = timezone.now()
    ids = []
    while (timezone.now() - begin).total_seconds() < span:
        ids.append(job_submit(tenant=standard, task="demo.slow_task",
                              params={"seconds": duration})[0].id)
        time.sleep(every)
    end = timezone.now()
    in_span = Job.objects.filter(lane="slow", started_at__gte=begin, started_at__lt=end)
    total = in_span.count()
    ours_share = in_span.filter(tier="standard").count() / total if total else float("nan")
    jobs = list(Job.objects.filter(id__in=ids))
    ours_wait = max(((j.started_at or end) - j.submitted_at).total_seconds() for j in jobs)
    ours_unstarted = sum(1 for j in jobs if j.started_at is None)
    # Baseline: plain strict priority on one priority queue, the same load.
    proc, app, timing_file = _plain_slow_flood(roles, lanes_empty, plain_worker, flood,
                                               duration, "prem")
    started_at = time.time()
    submitted = {}
    while time.time() - started_at < span:
        submitted[app.send_task("plain.sleep", args=(duration, "std"), priority=2).id] = (
            time.time())
        time.sleep(every)
    finished_at = time.time()
    done = timings(timing_file)
    in_window = [v for v in done.values() if started_at <= v[1] < finished_at]
    theirs_share = (sum(1 for v in in_window if v[0] == "std") / len(in_window)
                    if in_window else float("nan"))
    theirs_wait = max(_plain_waits(submitted, done, finished_at)) / 1000

    record("S8", "standard share of the lane's starts", ours_share * 100, theirs_share * 100,
           "%", target=f">= {min_share * 100:.0f} %", passed=ours_share >= min_share,
           note=f"{span} s of premium backlog ({flood:,} slow jobs of {duration * 1000:.0f} ms, "
                f"{SLOW_CONCURRENCY} processes: {capacity:.0f} jobs/s) with a standard job every "
                f"{every:.0f} s ({100 / (every * capacity):.1f} % of capacity); "
                f"{ours_unstarted} standard job(s) not started at the end")
    record("S8", "longest standard wait", ours_wait, theirs_wait, "s",
           target=f"<= {max_wait:.0f} s", passed=ours_wait <= max_wait,
           note="unstarted jobs count at their wait so far (baseline: all of them)")


# S9 -----------------------------------------------------------------------------

def test_s9_celery_native_calls(start_role, management, plain_worker, lanes_empty):
    """The field reports' calls through switchyard_client: ``delay()`` one at a time,
    each confirmed by the broker, beside plain Celery's confirmed ``send_task``; then
    native quick calls while a slow backlog is deep (the S1 case, natively)."""
    import switchyard_client

    calls, backlog = scale(5_000, 500), scale(20_000, 500)
    probes, span = scale(200, 20), scale(10, 2)
    tenant = _tenant("s9", "standard")
    _, url = broker_user_issue(tenant=tenant)
    web, port = _web(start_role)
    app = switchyard_client.connect(url, api_url=f"http://127.0.0.1:{port}", token=tenant.key)
    quick_task = app.remote_task("demo.quick_task")
    quick_task.delay(-1)  # the catalogue fetched, the connection open: as a running service
    started = time.perf_counter()
    for i in range(calls):
        quick_task.delay(i)
    native_rate = calls / (time.perf_counter() - started)
    _purge(lanes_empty, "quick")

    # Baseline: plain Celery's send_task with publisher confirms, one message at a time.
    _, plain, _ = plain_worker(start_worker=False, queue="plain-s9")
    plain.conf.broker_transport_options = {"confirm_publish": True}
    plain.send_task("plain.noop", args=(-1,))
    started = time.perf_counter()
    for i in range(calls):
        plain.send_task("plain.noop", args=(i,))
    celery_rate = calls / (time.perf_counter() - started)
    _purge(lanes_empty, "plain-s9")

    # Native quick calls behind a slow backlog, each timed from its delay() call to its
    # outcome in the job record (one clock: this machine's).
    dispatcher, slow, quick = _behind_a_slow_backlog(start_role, management, tenant, backlog)
    sent, call_ms = {}, []
    for i in range(probes):
        called = time.time()
        sent[quick_task.delay(i).id] = called
        call_ms.append((time.time() - called) * 1000)
        time.sleep(span / probes)
    harness.wait_for(lambda: _finished(sent) == probes, 60, "native quick calls",
                     [slow, quick], interval=0.2)
    finished = list(Job.objects.filter(id__in=list(sent)))
    ours = [(job.finished_at.timestamp() - sent[str(job.id)]) * 1000 for job in finished]
    # Where the time goes: the call to the worker's first sight (publish, queue,
    # delivery), then first sight to the recorded outcome (admission, run, outcome).
    to_sight = median([(job.submitted_at.timestamp() - sent[str(job.id)]) * 1000
                       for job in finished])
    to_outcome = median([(job.finished_at - job.submitted_at).total_seconds() * 1000
                         for job in finished])
    succeeded = Job.objects.filter(id__in=list(sent), status="succeeded").count()
    for role in (slow, quick, dispatcher, web):
        role.stop()
    _purge(lanes_empty, "slow", "quick")

    record("S9", "native delay(), confirmed, one at a time", native_rate, celery_rate, "calls/s",
           target=">= 0.9x baseline", passed=native_rate >= 0.9 * celery_rate,
           note="switchyard_client (catalogue routing, user_id, JSON, confirms) vs plain "
                "Celery send_task with confirm_publish")
    p50, p99 = percentile(ours, 50), percentile(ours, 99)
    record("S9", "native quick end-to-end p50", p50, None, "ms", target="<= 10 ms",
           passed=p50 <= 10,
           note=f"{probes} quick.delay() calls over {span} s behind {backlog:,} slow jobs; "
                f"{succeeded} succeeded; from the call to the recorded outcome (median: the call "
                f"returns after {median(call_ms):.1f} ms, the worker records it "
                f"{to_sight:.1f} ms after the call, and its outcome {to_outcome:.1f} ms later); "
                "plain Celery's one-queue figure is S1's baseline")
    record("S9", "native quick end-to-end p99", p99, None, "ms", target="<= 50 ms",
           passed=p99 <= 50)
    distribution("S9 switchyard_client quick calls", ours)


# S10 ----------------------------------------------------------------------------

def _pool_child(role) -> int:
    from tests.test_drills_broker import pool_children
    return harness.wait_for(lambda: (c := pool_children(role.proc.pid)) and c[0], 30,
                            "a live pool process", [role])


def _chord_run(make_chord, done_headers, role, headers: int, *, kill: bool,
               timeout: float) -> tuple[float | None, object, str]:
    """Time from ``apply_async`` to the callback's result as the caller reads it (its
    ``get()``); with ``kill``, a pool process is SIGKILLed once a third of the headers
    ran. Returns (seconds or None, the result or the error, what was killed)."""
    started = time.perf_counter()
    result = make_chord().apply_async()
    killed = ""
    if kill:
        harness.wait_for(lambda: done_headers() >= headers // 3, timeout, "a third of the "
                         "headers", [role], interval=0.05)
        child = _pool_child(role)
        os.kill(child, signal.SIGKILL)
        killed = f"pool process {child} SIGKILLed after {headers // 3:,} headers"
    try:
        # Celery's default poll interval (0.5 s) on both sides: what a caller's get() does
        # unless told otherwise, and no side's poll loads the machine the chord runs on.
        value = result.get(timeout=timeout, interval=0.5)
    except Exception as exc:  # the callback never came: say how it ended
        return None, f"{type(exc).__name__}: {str(exc)[:120]}", killed
    return time.perf_counter() - started, value, killed


def test_s10_a_chord_fan_out_and_fan_in(start_role, management, plain_worker, lanes_empty):
    """A chord of N headers and one callback, through Celery's own canvas API on both
    sides: Switchyard (switchyard_client; the last header releases the callback in the
    transaction recording it) against plain Celery with its database result backend on
    the same PostgreSQL (``chord_unlock`` polls it). Time to the callback's result; then
    the same chord with a pool process SIGKILLed mid-run."""
    import celery
    import switchyard_client
    from django.db import connection

    from jobs.models import Workflow

    # With its callback: a workflow of 10,000 steps. BENCH_S10_HEADERS sets another size
    # (a profile, a quick comparison between two commits).
    headers = int(os.environ.get("BENCH_S10_HEADERS") or scale(9_999, 100))
    expected = sum(i + 1 for i in range(headers))
    timeout = scale(900, 180)
    tenant = _tenant("s10", "premium")
    Tenant.objects.filter(id=tenant.id).update(max_queued_jobs=10 * headers,
                                               submissions_per_minute=10 * headers)
    _, url = broker_user_issue(tenant=tenant)
    web, port = _web(start_role)
    dispatcher = start_role("dispatcher")
    worker = start_lane(start_role, management, "quick", QUICK_CONCURRENCY)
    app = switchyard_client.connect(url, api_url=f"http://127.0.0.1:{port}", token=tenant.key)
    add, total = app.remote_task("demo.add"), app.remote_task("demo.total")

    def ours_chord():
        return celery.chord((add.s(i, 1) for i in range(headers)), total.s())

    def ours_done():
        return Job.objects.filter(task="demo.add", tenant=tenant, status="succeeded").count()

    ours = _chord_run(ours_chord, ours_done, worker, headers, kill=False, timeout=timeout)
    Job.objects.filter(tenant=tenant).delete()
    ours_kill = _chord_run(ours_chord, ours_done, worker, headers, kill=True, timeout=timeout)
    lost_ours = headers - ours_done()
    chord_flows = Workflow.objects.filter(tenant=tenant, kind="chord").count()
    for role in (worker, dispatcher, web):
        role.stop()

    results = _sqlalchemy_url()
    proc, plain, _ = plain_worker(concurrency=QUICK_CONCURRENCY, acks_late=True, prefetch=1,
                                  queue="plain-s10", results=results)

    def theirs_chord():
        return celery.chord((plain.signature("plain.add", args=(i, 1)) for i in range(headers)),
                            plain.signature("plain.total"))

    def theirs_done():
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'")
            return cursor.fetchone()[0]

    theirs = _chord_run(theirs_chord, theirs_done, proc, headers, kill=False, timeout=timeout)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM celery_taskmeta")
    theirs_kill = _chord_run(theirs_chord, theirs_done, proc, headers, kill=True,
                             timeout=timeout)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM celery_taskmeta WHERE status = 'FAILURE'")
        lost_theirs = cursor.fetchone()[0]
    proc.stop()

    def outcome(run) -> str:
        seconds, value, _ = run
        return "callback right" if seconds is not None and value == expected else \
            f"callback {'wrong: ' + str(value) if seconds is not None else 'never: ' + value}"

    record("S10", f"chord of {headers:,} headers: time to the callback's result", ours[0],
           theirs[0], "s", target="< baseline",
           passed=ours[0] is not None and theirs[0] is not None and ours[0] < theirs[0],
           note=f"Celery's chord API on both sides, quick worker x{QUICK_CONCURRENCY}, from "
                f"apply_async to get(); Switchyard: {outcome(ours)}; Celery + database "
                f"results (chord_unlock polling): {outcome(theirs)}")
    record("S10", "the same chord, a pool process SIGKILLed mid-run: headers lost",
           lost_ours, lost_theirs, "headers", target="0", passed=lost_ours == 0,
           note=f"Switchyard: {outcome(ours_kill)} in "
                f"{ours_kill[0] or 0:.1f} s ({chord_flows} chord workflows); Celery "
                f"(acks_late, default reject_on_worker_lost): {outcome(theirs_kill)}; "
                f"{ours_kill[2]}")


# S11 ----------------------------------------------------------------------------

def test_s11_schedule_lateness_under_a_full_slow_lane(start_role, management, plain_worker,
                                                      lanes_empty, tmp_path):
    """A premium tenant's schedules on the quick lane, all due at the same instants every
    10 s, while a standard backlog keeps the slow lane full: how late does each fire's job
    start (its fire time to its ``started_at``)? Against Celery beat with a plain worker
    per queue, under the same slow flood."""
    from schedules.models import ScheduleFire
    from schedules.services import schedule_create
    from switchyard.clock import platform_now

    entries, fires, every = scale(30, 6), scale(6, 1), 10
    backlog = scale(20_000, 300)
    standard, premium = _tenant("s11-std", "standard"), _tenant("s11-prem", "premium")

    dispatcher, slow, quick = _behind_a_slow_backlog(start_role, management, standard,
                                                     backlog)
    start = (platform_now() + dt.timedelta(seconds=2.5)).replace(microsecond=0)
    schedules = [schedule_create(tenant=premium, task="demo.quick_task", params={"x": i},
                                 every=every, start_at=start, overlap="allow",
                                 end_at=start + dt.timedelta(seconds=every * (fires - 1) + 1))
                 for i in range(entries)]
    expected = entries * fires
    harness.wait_for(
        lambda: Job.objects.filter(tenant=premium, started_at__isnull=False).count()
        >= expected, every * fires + 60, "every fire's job to start", [dispatcher, quick],
        interval=0.2)
    stages = list(ScheduleFire.objects.filter(schedule__in=schedules, outcome="fired")
                  .values_list("fire_at", "job__published_at", "job__started_at"))
    ours = [(started - fire_at).total_seconds() * 1000 for fire_at, _, started in stages]
    # Where the time goes: the fire pass and the publish pass, then the lane.
    published = median([(at - fire_at).total_seconds() * 1000 for fire_at, at, _ in stages])
    slow_busy = Job.objects.filter(tenant=standard, status="started").count()
    skipped = ScheduleFire.objects.filter(schedule__in=schedules).exclude(outcome="fired")

    # Baseline: Celery beat, a plain worker for the fired task's queue, and the same slow
    # flood on another plain worker's queue.
    proc, _, _ = _plain_slow_flood([quick, slow, dispatcher], lanes_empty, plain_worker,
                                   backlog, 1.0, "slow")
    beat_queue = "plain-s11"
    worker, _, timing_file = plain_worker(concurrency=QUICK_CONCURRENCY, acks_late=True,
                                          prefetch=1, queue=beat_queue)
    sent_file = tmp_path / "beat-sent.txt"
    env = role_env(lanes_empty, PLAIN_BEAT_ENTRIES=str(entries), PLAIN_BEAT_EVERY=str(every),
                   PLAIN_BEAT_QUEUE=beat_queue, PLAIN_TIMINGS=str(sent_file),
                   PYTHONPATH=str(harness.REPO))
    env.pop("DJANGO_SETTINGS_MODULE")
    beat = Role("plain-beat", [], env, tmp_path, command=[
        sys.executable, "-m", "celery", "-A", "bench.plain_celery", "beat", "-l", "WARNING",
        "-s", str(tmp_path / "beat-schedule")])

    def runs() -> dict[str, list[tuple[float, float]]]:
        """Per beat entry, each run's (sent by beat, started by the worker), in order."""
        sent = {task_id: at for task_id, (_, at, _) in timings(sent_file).items()}
        per_entry: dict[str, list[tuple[float, float]]] = {}
        for task_id, (kind, started, _) in timings(timing_file).items():
            per_entry.setdefault(kind, []).append((sent.get(task_id, started), started))
        return {kind: sorted(pairs) for kind, pairs in per_entry.items()}

    try:
        harness.wait_for(lambda: len(seen := runs()) == entries and
                         all(len(pairs) > fires for pairs in seen.values()),
                         every * (fires + 1) + 60, "beat's fires", [beat, worker, proc],
                         interval=0.5)
    finally:
        beat.stop()
    # Beat's fire time for a run is its previous run's send plus the period (beat's own
    # rule for an ``every`` entry); an entry's first run has none stated.
    theirs = [(started - (previous_sent + every)) * 1000
              for pairs in runs().values()
              for (previous_sent, _), (_, started) in zip(pairs[:fires], pairs[1:fires + 1],
                                                          strict=True)]

    p99 = percentile(ours, 99)
    record("S11", "schedule lateness p50 (fire time to job started)", percentile(ours, 50),
           percentile(theirs, 50), "ms")
    record("S11", "schedule lateness p99", p99, percentile(theirs, 99), "ms",
           target="<= 1,000 ms", passed=p99 <= 1000 and len(ours) == expected,
           note=f"{entries} premium schedules every {every} s on the quick lane, all due at "
                f"once, {len(ours)} of {expected} fires ran ({skipped.count()} not fired; "
                f"jobs published a median {published:.0f} ms after their fire time), "
                f"the slow lane full ({slow_busy} standard slow jobs running of a "
                f"{backlog:,} backlog); Celery beat: each run after an entry's first, against "
                f"its previous send + {every} s (beat's rule; its first run states no time)")
    distribution("S11 switchyard schedule lateness", ours)
    distribution("S11 Celery beat lateness", theirs)

"""Reliability drills for faults inside the platform's reach: poison tasks, RabbitMQ's
``consumer_timeout``, a publisher whose clock is wrong, and the network between the API
and the broker cut.

Each drill runs real role processes against the run's vhost, submits witness jobs
(``demo.witness``), breaks something, lets Switchyard recover, and counts with
``tests/drills.py``: an accepted job that neither ran nor ended dead-lettered, expired or
cancelled is lost. The figures are printed and kept in ``var/drills/figures.json``.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings

from jobs.models import Job
from jobs.options import RetryPolicy, SubmitOptions
from jobs.submission import job_submit
from routing.management import Management
from tenants.models import Tenant
from tenants.services import tenant_create
from tests import runbooks
from tests.conftest import IN_CI
from tests.drills import (
    Flood,
    all_finished,
    count,
    left_in_queues,
    record,
    web_up,
    witnessed_runs,
)
from tests.processes import BIN, REPO, Role, role_env, wait_until
from tests.tcp_proxy import TcpProxy
from tests.test_lanes import consumers_on, start_lane

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers]

@pytest.fixture
def role_env_defaults(witness_dir: Path) -> dict[str, str]:
    """Every role of these drills notes its witness runs in the test's directory."""
    return {"SWITCHYARD_WITNESS_DIR": str(witness_dir)}


def queued_total(management: Management) -> int:
    """Messages left in the lane queues (dead-letter queues hold accounted jobs)."""
    left = left_in_queues()
    return sum(n for name, n in left.items() if not name.endswith(".dead"))


# -- 1. Poison tasks ----------------------------------------------------------------------


def test_poison_jobs_cycle_while_the_lane_serves_every_other_job(
        start_role, management, witness_dir, tmp_path):
    started = time.monotonic()
    # Given a slow worker with two pool processes, and three jobs that kill the process
    # running them on every delivery, mixed with 40 ordinary jobs
    tenant = Tenant.objects.create(name="poisoned", tier="standard")
    marker = tmp_path / "bug"
    marker.write_text("kill the process while this exists")
    poison = [job_submit(tenant=tenant, task="demo.poison", params={"marker": str(marker)})[0]
              for _ in range(3)]
    ordinary = [job_submit(tenant=tenant, task="demo.witness_slow",
                           params={"seconds": 0.05})[0] for _ in range(40)]
    worker = start_lane(start_role, management, "slow", 2)
    # the slow lane's fair-share window holds most of them in the table: the dispatcher
    # publishes them as the window frees
    dispatcher = start_role("dispatcher")

    # When the poison jobs cycle (three deliveries each) among the ordinary ones
    ids = [j.id for j in poison + ordinary]
    wait_until(lambda: all_finished(ids), 120, "every job to end", interval=0.2,
               roles=[worker, dispatcher])

    # Then every ordinary job ran exactly once and each poison job is dead, in slow.dead
    wait_until(lambda: management.queue(settings.TEST_VHOST, "slow.dead")["messages"] == 3,
               15, "three messages in slow.dead")
    worker.assert_running()
    figures = record(count("poison-kills-its-process", submitted=len(ids), job_ids=ids,
                           witness_dir=witness_dir, started=started,
                           left=queued_total(management),
                           notes="3 poison jobs among 40 slow witness jobs, 2 pool processes"))
    assert (figures.lost, figures.duplicated, figures.executed) == (0, 0, 40)
    assert figures.dead_lettered == 3 and figures.left_in_queues == 0
    for job in Job.objects.filter(id__in=[j.id for j in poison]):
        assert job.status == Job.Status.DEAD and job.attempts == job.max_attempts + 2
        assert "slow.dead" in job.error


def test_a_job_that_always_raises_is_dead_lettered_after_its_attempts_and_replays(
        start_role, management, witness_dir, tmp_path):
    started = time.monotonic()
    book = "poison-messages.md"
    operator = role_env(settings.CELERY_BROKER_URL)
    roles = [start_lane(start_role, management, "quick", 2), start_role("dispatcher")]
    tenant = Tenant.objects.create(name="buggy", tier="premium")
    marker = tmp_path / "bug"
    marker.write_text("raise while this exists")

    # Given a job whose task raises on every attempt, allowed 3 attempts by its retry
    # policy, among ordinary jobs
    policy = RetryPolicy(max_retries=2, backoff=0.2)
    failing, _ = job_submit(tenant=tenant, task="demo.failing", params={"marker": str(marker)},
                            options=SubmitOptions(retry_policy=policy))
    ordinary = [job_submit(tenant=tenant, task="demo.witness")[0] for _ in range(20)]
    ids = [failing.id, *(j.id for j in ordinary)]

    # When its attempts are spent
    wait_until(lambda: all_finished(ids), 60, "every job to end", roles=roles)

    # Then the job is dead with the reason and the last error, its message is in
    # quick.dead, and `dlq list` shows the reason
    job = Job.objects.get(id=failing.id)
    assert (job.status, job.attempts, job.max_attempts) == ("dead", 3, 3)
    assert job.error.startswith("failed 3 of 3 attempts (retry policy spent); message moved "
                                "to quick.dead; last error: RuntimeError: bug not fixed yet")
    wait_until(lambda: management.queue(settings.TEST_VHOST, "quick.dead")["messages"] == 1,
               15, "the message in quick.dead")
    at_death = count("always-raises", submitted=len(ids), job_ids=ids, witness_dir=witness_dir,
                     started=started)
    assert (at_death.lost, at_death.dead_lettered, at_death.executed) == (0, 1, 20)
    listed = subprocess.run([sys.executable, "platform/manage.py", "dlq", "list", "--lane",
                             "quick"], cwd=REPO, env=operator, capture_output=True, text=True,
                            timeout=60)
    line = next(row for row in listed.stdout.splitlines() if str(job.id) in row)
    assert "demo.failing" in line and "job=dead" in line and "retry policy spent" in line

    # When the fix is deployed and the runbook's replay runs
    marker.unlink()
    replayed = runbooks.run(runbooks.find(book, r"dlq replay --lane slow JOB_ID", "Fix")
                            .replace("--lane slow", "--lane quick"), operator,
                            JOB_ID=str(job.id))
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr

    # Then the same job runs once and succeeds; nothing is left in the queues
    wait_until(lambda: Job.objects.get(id=job.id).status == Job.Status.SUCCEEDED, 30,
               "the replayed job to succeed", roles=roles)
    wait_until(lambda: queued_total(management) == 0, 15, "the queues to empty")
    figures = record(count("always-raises", submitted=len(ids), job_ids=ids,
                           witness_dir=witness_dir, started=started, recovered=1,
                           left=queued_total(management),
                           notes="dead-lettered after 3 attempts, then replayed after the fix"))
    assert (figures.lost, figures.duplicated, figures.executed) == (0, 0, 21)
    assert Job.objects.get(id=job.id).attempts == 1


# -- 2. consumer_timeout -------------------------------------------------------------------


def test_worker_refuses_to_start_when_a_lane_outlives_the_brokers_consumer_timeout(
        start_role):
    # Given a broker whose consumer_timeout (10 minutes) is below the slow lane's hard
    # time limit (25 minutes) but above the quick lane's
    started = time.monotonic()
    worker = start_role("worker", "slow", SWITCHYARD_BROKER_CONSUMER_TIMEOUT_MS="600000")

    # When the slow worker starts, then it exits non-zero at once, naming the lane
    wait_until(lambda: worker.proc.poll() is not None, 60, "the worker to refuse to start")
    log = worker.log()
    assert worker.proc.returncode == 78, log  # EX_CONFIG: a restart loop will not fix it
    assert "Switchyard worker cannot start" in log
    assert "lane 'slow'" in log and "consumer_timeout" in log
    assert "lane 'quick'" not in log
    assert time.monotonic() - started < 60


def _rabbit_env(key: str, value: int | None = None, *, unset: bool = False) -> str:
    """Read (after setting or unsetting) one of RabbitMQ's application settings."""
    if unset:
        expr = f"application:unset_env(rabbit, {key})."
    elif value is not None:
        expr = f"application:set_env(rabbit, {key}, {value})."
    if unset or value is not None:
        subprocess.run(["rabbitmqctl", "eval", expr], check=True, capture_output=True,
                       timeout=60)
    return subprocess.run(["rabbitmqctl", "eval", f"application:get_env(rabbit, {key})."],
                          check=True, capture_output=True, text=True, timeout=60).stdout.strip()


def _restore(key: str, original: str) -> None:
    if original.startswith("{ok,"):
        _rabbit_env(key, int(original[4:-1]))
    else:
        _rabbit_env(key, unset=True)


@pytest.mark.exclusive  # the consumer timeout is the whole node's
def test_a_broker_timeout_lowered_behind_switchyards_back_loses_nothing(
        start_role, management, witness_dir):
    if shutil.which("rabbitmqctl") is None:
        if IN_CI:
            pytest.fail("rabbitmqctl is required under CI=true")
        pytest.skip("rabbitmqctl not found")
    started = time.monotonic()
    tenant = Tenant.objects.create(name="patient", tier="standard")
    job, _ = job_submit(tenant=tenant, task="demo.witness_slow", params={"seconds": 12})
    # Given a slow worker whose channel RabbitMQ opened while its consumer_timeout was
    # 5 s: RabbitMQ 3.10 reads it when a channel opens, so the broker-wide value goes
    # back as soon as the worker consumes (other users of this broker keep theirs).
    # Channels check their deliveries on each tick, every 60 s by default: 1 s here,
    # until the worker is gone.
    timeout, tick = _rabbit_env("consumer_timeout"), _rabbit_env("channel_tick_interval")
    try:
        try:
            _rabbit_env("channel_tick_interval", 1000)
            _rabbit_env("consumer_timeout", 5000)
            worker = start_role("worker", "slow", SWITCHYARD_SLOW_CONCURRENCY="1")
            wait_until(lambda: consumers_on(management, "slow") >= 1, 60,
                       "the worker to consume", roles=[worker])
        finally:
            _restore("consumer_timeout", timeout)

        # When its task holds the delivery past the timeout, RabbitMQ closes the channel
        # and the worker exits (the runbook's symptom), once its running task is over:
        # the acknowledgement of that run cannot reach the broker any more
        wait_until(lambda: worker.proc.poll() is not None, 60, "the worker to exit")
    finally:
        _restore("channel_tick_interval", tick)
    assert _rabbit_env("consumer_timeout") == timeout
    log = worker.log_path.read_text(errors="replace")
    assert "PreconditionFailed" in log and "timed out" in log, log[-3000:]
    assert worker.proc.returncode != 0

    # Then the message is still in the queue; the next worker takes it and, the job
    # being recorded succeeded, acknowledges it without running it again
    assert management.queue(settings.TEST_VHOST, "slow")["messages"] == 1
    again = start_role("worker", "slow", name="worker-slow-again",
                       SWITCHYARD_SLOW_CONCURRENCY="1")
    wait_until(lambda: Job.objects.get(id=job.id).status == Job.Status.SUCCEEDED, 60,
               "the job to succeed", roles=[again])
    wait_until(lambda: queued_total(management) == 0, 30, "the redelivery to be consumed",
               interval=0.5, roles=[again])
    figures = record(count("consumer-timeout-lowered", submitted=1, job_ids=[job.id],
                           witness_dir=witness_dir, started=started, recovered=1,
                           left=queued_total(management),
                           notes="a 12 s slow task on a channel with a 5 s consumer_timeout; "
                                 "recovered = the message redelivered to the next worker"))
    assert (figures.lost, figures.duplicated, figures.left_in_queues) == (0, 0, 0)
    assert figures.executed == 1


# -- 3. Publisher clock skew -----------------------------------------------------------------


SUBMIT_SCRIPT = """
import json
from jobs.options import SubmitOptions
from jobs.submission import job_submit
from tenants.models import Tenant
tenant = Tenant.objects.get(name="skewed")
expiring, _ = job_submit(tenant=tenant, task="demo.witness", options=SubmitOptions(expires=300))
delayed, _ = job_submit(tenant=tenant, task="demo.witness", options=SubmitOptions(countdown=2))
print(json.dumps({"expiring": str(expiring.id), "delayed": str(delayed.id)}))
"""


def faketime() -> str:
    found = shutil.which("faketime")
    if found is None:
        message = ("Debian's faketime is needed for the clock drills: apt-get install -y "
                   "faketime (.ci/run installs it)")
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.mark.parametrize("skew", ["-1h", "+1h"])
def test_a_publisher_clock_off_by_an_hour_changes_no_expiry_and_no_countdown(
        start_role, management, witness_dir, skew):
    program = faketime()
    started = time.monotonic()
    Tenant.objects.create(name="skewed", tier="standard")
    roles = [start_lane(start_role, management, "quick", 2), start_role("dispatcher")]

    # Given a submitting process whose clock is an hour off
    env = role_env(settings.CELERY_BROKER_URL)
    shown = subprocess.run([program, "-f", skew, sys.executable, "-c",
                            "import datetime; print(datetime.datetime.now(datetime.UTC)"
                            ".isoformat())"], env=env, capture_output=True, text=True, timeout=30)
    off = dt.datetime.fromisoformat(shown.stdout.strip()) - dt.datetime.now(dt.UTC)
    assert abs(abs(off.total_seconds()) - 3600) < 60, "faketime did not move the clock"

    # When it submits a job that expires in 5 minutes and one with a 2 s countdown
    submitted_at = time.time()
    out = subprocess.run([program, "-f", skew, sys.executable, "platform/manage.py", "shell",
                          "-v", "0", "-c", SUBMIT_SCRIPT], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ids = json.loads(out.stdout.strip().splitlines()[-1])

    # Then both run as if its clock were right: the first at once, not expired; the
    # second about 2 s later, not an hour early or late
    wait_until(lambda: all_finished(ids.values()), 30, "both jobs to run", roles=roles)
    expiring = Job.objects.get(id=ids["expiring"])
    delayed = Job.objects.get(id=ids["delayed"])
    assert expiring.status == delayed.status == Job.Status.SUCCEEDED
    real_submit = dt.datetime.fromtimestamp(submitted_at, dt.UTC)
    assert abs((expiring.submitted_at - real_submit).total_seconds()) < 30
    assert abs((expiring.expires_at - real_submit).total_seconds() - 300) < 30
    wait = (delayed.started_at - delayed.submitted_at).total_seconds()
    assert 2.0 <= wait < 10.0, wait
    figures = record(count(f"publisher-clock{skew}", submitted=2, job_ids=ids.values(),
                           witness_dir=witness_dir, started=started,
                           left=queued_total(management),
                           notes=f"submitter under faketime {skew}: expires 300 s, countdown "
                                 f"2 s (started after {wait:.1f} s)"))
    assert (figures.lost, figures.expired, figures.duplicated, figures.executed) == (0, 0, 0, 2)


def test_a_worker_clock_an_hour_ahead_expires_nothing_early(
        transactional_db, lanes_empty, management, witness_dir, tmp_path):
    program = faketime()
    started = time.monotonic()
    tenant = Tenant.objects.create(name="ahead", tier="standard")
    # Given jobs that expire in 5 minutes, and the quick lane's only worker an hour ahead
    ids = [job_submit(tenant=tenant, task="demo.witness", options=SubmitOptions(expires=300))[0]
           .id for _ in range(5)]
    env = role_env(lanes_empty, SWITCHYARD_WITNESS_DIR=str(witness_dir),
                   SWITCHYARD_QUICK_CONCURRENCY="1")
    worker = Role("worker-quick-ahead", [], env, tmp_path,
                  command=[program, "-f", "+1h", str(BIN / "worker"), "quick"])
    try:
        # When it consumes them, then they run: none is taken for expired
        wait_until(lambda: all_finished(ids), 60, "the jobs to end", roles=[worker])
    finally:
        worker.stop()
    # (the management API's counts lag by a few seconds)
    wait_until(lambda: queued_total(management) == 0, 15, "the queues to empty", interval=0.5)
    figures = record(count("worker-clock+1h", submitted=len(ids), job_ids=ids,
                           witness_dir=witness_dir, started=started,
                           left=queued_total(management),
                           notes="quick worker under faketime +1h, jobs expiring in 300 s"))
    assert (figures.expired, figures.lost, figures.executed) == (0, 0, 5)
    # And their start is on the platform's clock (the reaper compares it with that clock)
    for job in Job.objects.filter(id__in=ids):
        assert abs((job.started_at - job.submitted_at).total_seconds()) < 60


# -- 4. Network cut between the API and the broker -------------------------------------------


def _through(url: str, port: int) -> str:
    parts = urlsplit(url)
    auth = parts.netloc.rsplit("@", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{auth}@127.0.0.1:{port}"))


@pytest.mark.parametrize("cut", ["reset", "black-hole"])
def test_api_keeps_answering_through_a_broker_network_cut_and_loses_nothing(
        start_role, management, witness_dir, cut):
    started = time.monotonic()
    deadline = settings.SWITCHYARD_PUBLISH_DEADLINE
    tenant, key = tenant_create(name="flooder", tier="standard")
    Tenant.objects.filter(id=tenant.id).update(submissions_per_minute=100_000,
                                               max_queued_jobs=100_000)
    # Given a quick worker and a dispatcher on the broker, and the web reaching the broker
    # only through a proxy this test controls
    roles = [start_lane(start_role, management, "quick", 2), start_role("dispatcher")]
    with TcpProxy((urlsplit(settings.CELERY_BROKER_URL).hostname or "127.0.0.1",
                   urlsplit(settings.CELERY_BROKER_URL).port or 5672)) as proxy:
        web, port = web_up(start_role,
                           CELERY_BROKER_URL=_through(settings.CELERY_BROKER_URL, proxy.port))

        # When clients flood the API while the network is cut, then healed
        with Flood(port, key, threads=2) as flood:
            time.sleep(3)
            if cut == "reset":
                proxy.refuse()  # every connection reset, every new one refused
            else:
                proxy.black_hole()  # connections open, nothing gets through
            time.sleep(6)
            during = len(flood.answers)
            proxy.heal()
            time.sleep(4)
        web.assert_running()

    # Then every request was answered 202 within the publish deadline plus a margin
    answers = flood.answers
    codes = {status for status, _, _ in answers}
    slowest = max(seconds for _, seconds, _ in answers)
    assert codes == {202}, codes
    assert slowest < deadline + 1.5, slowest
    assert len(answers) - during > 5, "no request answered after healing"

    # And after healing every accepted job runs exactly once
    ids = flood.accepted()
    wait_until(lambda: all_finished(ids), 90, "every accepted job to run", interval=0.5,
               roles=roles)
    late = Job.objects.filter(id__in=ids, publications__gt=0).extra(
        where=["published_at > submitted_at + interval '1 second' * %s"], params=[deadline]
    ).count()
    wait_until(lambda: queued_total(management) == 0, 15, "the queues to empty")
    figures = record(count(f"api-broker-cut-{cut}", submitted=len(answers), job_ids=ids,
                           witness_dir=witness_dir, started=started, recovered=late,
                           left=queued_total(management),
                           notes=f"{len(answers)} requests by 2 clients, 6 s cut, slowest "
                                 f"answer {slowest:.2f} s; recovered = published by the "
                                 "dispatcher"))
    assert (figures.lost, figures.duplicated) == (0, 0)
    assert figures.executed == len(set(ids)) == len(ids)
    assert sum(witnessed_runs(witness_dir).values()) == len(ids)



def test_the_proxy_really_cuts(broker_url):
    """The drill's own tool: forwarding, reset and black hole do what they say."""
    import pika

    upstream = urlsplit(broker_url)
    with TcpProxy((upstream.hostname, upstream.port or 5672)) as proxy:
        params = pika.URLParameters(_through(broker_url, proxy.port) + "?socket_timeout=2"
                                    "&blocked_connection_timeout=2&connection_attempts=1")
        connection = pika.BlockingConnection(params)
        assert connection.channel().is_open
        proxy.refuse()
        with pytest.raises(pika.exceptions.AMQPError):
            connection.channel()
        # A connection reset right after accept surfaces from pika as an AMQP error, or as
        # the ValueError it raises when the socket is gone before it could be wrapped
        with pytest.raises((pika.exceptions.AMQPError, ValueError)):
            pika.BlockingConnection(params)
        proxy.heal()
        connection = pika.BlockingConnection(params)
        proxy.black_hole()
        began = time.monotonic()
        with pytest.raises(pika.exceptions.AMQPError):
            pika.BlockingConnection(params)  # accepted, then silence until the timeout
        assert time.monotonic() - began >= 1.5
        proxy.heal()
        connection = pika.BlockingConnection(params)
        assert connection.channel().is_open
        connection.close()

"""Reliability drills on the real broker: kill workers, restart RabbitMQ, cut every connection.

Each drill runs real role processes (web, workers, dispatcher, beat) against the
run's vhost, submits ``demo.witness`` jobs, breaks something while they run, lets
the platform recover on its own, then counts from the job table and the workers'
witness logs (``tests/drills.py``): submitted, accepted, executed, lost,
duplicated, recovered, left in queues. The promise under test is at-least-once:
``lost`` must be 0 and every job must end ``succeeded``; duplicates are counted
and reported, never hidden (docs/reliability.md).

``stop_app`` and the memory alarm act on the whole node, not only the run's
vhost: the drills restore the node before they return, whatever happens, and
no other test of the run is running meanwhile. Two test runs on one broker at
once would see each other's restart; CI runs one.
"""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db.models import Count, F

from jobs.bulk import BulkJob, job_submit_bulk
from jobs.models import Job
from jobs.publishing import PUBLISH_GRACE
from tenants.models import Tenant
from tenants.services import tenant_create
from tests import drills
from tests.drills import all_finished
from tests.processes import wait_until
from tests.test_lanes import consumers_on, start_lane

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers, pytest.mark.exclusive]


def rabbitmqctl(*args: str, timeout: float = 120) -> str:
    return subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, text=True,
                          timeout=timeout).stdout


def pool_children(pid: int) -> list[int]:
    """Pids of the live pool processes of the worker whose main process is ``pid``."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    alive = []
    for child in map(int, found.split()):
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(child)
    return alive


def statuses(job_ids) -> dict[str, int]:
    return dict(Job.objects.filter(id__in=list(job_ids)).values_list("status")
                .annotate(n=Count("id")).order_by())


def test_kill_drill_workers_and_pool_children_sigkilled_lose_nothing(
        start_role, management, witness_dir):
    """SIGKILL pool children, then whole workers, while 2,000 quick jobs run."""
    tenant = Tenant.objects.create(name="killdrill", tier="premium")
    started = time.monotonic()
    total = 2000
    outcome = job_submit_bulk(tenant=tenant, enforce_quotas=False, jobs=[
        BulkJob(task="demo.witness", params={"seconds": 0.02})] * total)
    assert outcome.published == total
    env = {"SWITCHYARD_WITNESS_DIR": str(witness_dir)}
    dispatcher = start_role("dispatcher")

    def worker():
        return start_lane(start_role, management, "quick", 4, **env)

    current = worker()
    done = lambda: Job.objects.filter(  # noqa: E731
        id__in=outcome.job_ids, status=Job.Status.SUCCEEDED).count()
    kills = []
    # When pool children die mid-task three times (the OOM killer, a segfault)...
    for round_ in range(3):
        wait_until(lambda r=round_: done() >= (r + 1) * 200, 120, "progress", interval=0.2,
                   roles=[current, dispatcher])
        children = wait_until(lambda: (c := pool_children(current.proc.pid)) and
                              len(c) == 4 and c, 30, "four live pool processes")
        victim = children[round_ % len(children)]
        subprocess.run(["kill", "-KILL", str(victim)], check=True)
        kills.append(f"pool child {victim}")
    # ... and then the whole worker is SIGKILLed twice (the machine lost), a new one starting
    for round_ in range(2):
        wait_until(lambda r=round_: done() >= 800 + r * 400, 120, "progress", interval=0.2,
                   roles=[current, dispatcher])
        current.proc.send_signal(9)
        for child in pool_children(current.proc.pid):
            subprocess.run(["kill", "-KILL", str(child)])
        current.proc.wait(10)
        kills.append(f"worker {current.proc.pid}")
        current = worker()
    # Then every job ends succeeded, none lost, the killed ones run again
    wait_until(lambda: all_finished(outcome.job_ids), 300, "every job to finish", interval=0.5,
               roles=[current, dispatcher])
    recovered = Job.objects.filter(id__in=outcome.job_ids, attempts__gt=1).count()
    figures = drills.record(drills.count(
        "kill-workers", submitted=total, job_ids=outcome.job_ids, witness_dir=witness_dir,
        started=started, recovered=recovered,
        left=sum(drills.left_in_queues().values()),
        notes="; ".join(kills)))
    assert statuses(outcome.job_ids) == {Job.Status.SUCCEEDED: total}
    assert (figures.lost, figures.executed, figures.left_in_queues) == (0, total, 0)
    # The runs cut short by the kills were delivered again and recorded as such
    assert recovered >= 1
    assert figures.duplicated <= len(kills) * 4  # at most the prefetched runs in flight


def flood_tenant(name: str) -> str:
    tenant, key = tenant_create(name=name, tier="premium")
    Tenant.objects.filter(id=tenant.id).update(submissions_per_minute=1_000_000)
    return key


class broker_stopped:
    """``rabbitmqctl stop_app`` for ``seconds``, then ``start_app``; the node is always
    started again, and its management API answers again, before this returns."""

    def __init__(self, management) -> None:
        self.management = management

    def __enter__(self):
        rabbitmqctl("stop_app")
        return self

    def __exit__(self, *exc) -> None:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
        wait_until(lambda: _answers(self.management), 60, "the management API")


def _answers(management) -> bool:
    try:
        management.get("overview")
    except Exception:
        return False
    return True


def test_broker_restart_during_an_api_flood_loses_no_accepted_job(
        start_role, management, witness_dir):
    """``rabbitmqctl stop_app`` / ``start_app`` while four clients post jobs to the API."""
    key = flood_tenant("restartdrill")
    roles, port = drills.platform_up(start_role, management, witness_dir)
    started = time.monotonic()
    # Slow jobs that are running when the broker goes: their worker must not finish them
    # as well as the worker the broker redelivers them to
    tenant = Tenant.objects.get(name="restartdrill")
    slow = job_submit_bulk(tenant=tenant, enforce_quotas=False, jobs=[
        BulkJob(task="demo.witness_slow", params={"seconds": 6})] * 4).job_ids
    with drills.Flood(port, key, params={"seconds": 0.01}) as flood:
        wait_until(lambda: flood.count() >= 200 and Job.objects.filter(
            id__in=slow, status=Job.Status.STARTED).count() == 2, 60,
            "the flood to get going and two slow jobs to start", roles=roles)
        # When RabbitMQ stops for about 10 s in the middle of the flood
        with broker_stopped(management):
            before = flood.count()
            time.sleep(10)
            during = flood.count() - before
        restarted = flood.count()
        wait_until(lambda: flood.count() >= restarted + 200, 60, "submissions after the restart",
                   roles=roles)
    answers = flood.answers
    accepted = flood.accepted()
    # Then every request got an HTTP answer in time: 202 (kept, published later) or 503
    unanswered = [a for a in answers if a[0] == 0]
    assert not unanswered, unanswered[:5]
    assert {status for status, _, _ in answers} <= {202, 503}, answers[:5]
    slowest = max(seconds for _, seconds, _ in answers)
    assert slowest < settings.SWITCHYARD_PUBLISH_DEADLINE + 2.0, slowest
    assert during > 0, "no request was answered while the broker was stopped"
    # And every accepted job runs: the web, the workers and the dispatcher came back alone
    accepted += [str(i) for i in slow]
    wait_until(lambda: all_finished(accepted), 180, "every accepted job to finish", interval=1,
               roles=roles)
    slow_runs = drills.witnessed_runs(witness_dir)
    figures = drills.record(drills.count(
        "broker-restart", submitted=len(answers) + len(slow), job_ids=accepted,
        witness_dir=witness_dir,
        started=started, left=sum(drills.left_in_queues().values()),
        recovered=Job.objects.filter(  # kept while the broker was away, published later
            id__in=accepted, published_at__gte=F("submitted_at") + PUBLISH_GRACE).count(),
        notes=f"{during} answered while stopped; slowest answer {slowest:.2f} s; "
              f"{sum(1 for a in answers if a[0] == 503)} answered 503; 4 slow jobs of 6 s, "
              f"2 running at the stop, {sum(slow_runs[str(i)] for i in slow)} runs in all"))
    assert statuses(accepted) == {Job.Status.SUCCEEDED: len(accepted)}
    assert (figures.lost, figures.executed, figures.left_in_queues) == (0, len(accepted), 0)
    # The slow jobs cut by the restart ran again to the end, each exactly once
    assert [slow_runs[str(i)] for i in slow] == [1, 1, 1, 1]
    assert Job.objects.filter(id__in=slow, attempts__gt=1).count() >= 2


def test_every_role_recovers_when_the_broker_closes_all_its_connections(
        start_role, management, witness_dir, tmp_path):
    """``rabbitmqctl close_all_connections`` on the run's vhost: web, workers, dispatcher
    and beat reconnect by themselves, with nobody restarting them."""
    key = flood_tenant("closedrill")
    env = {"SWITCHYARD_WITNESS_DIR": str(witness_dir)}
    web, port = drills.web_up(start_role)
    roles = [web, start_role("dispatcher"),
             start_role("worker", "quick", SWITCHYARD_QUICK_CONCURRENCY="2", **env),
             start_role("worker", "slow", SWITCHYARD_SLOW_CONCURRENCY="1", **env),
             start_role("beat", SWITCHYARD_MEDIA_PURGE_EVERY="1",
                        SWITCHYARD_VAR_DIR=str(tmp_path / "var"))]
    wait_until(lambda: consumers_on(management, "quick") >= 1 and
               consumers_on(management, "slow") >= 1, 60, "consumers on both lanes", roles=roles)
    client = drills.Flood(port, key, params={"seconds": 0.01})

    def submit_round(extra: dict | None = None) -> list[str]:
        ids = []
        for _ in range(20):
            status, _, ident = client.post(**(extra or {}))
            assert status == 202, ident
            ids.append(ident)
        return ids

    def purges() -> int:
        return Job.objects.filter(task="media.purge_trashed", status="succeeded").count()

    started = time.monotonic()
    before = submit_round()
    wait_until(lambda: all_finished(before) and purges() >= 1, 60, "jobs and a purge to run",
               roles=roles)
    # When the broker closes every connection of the vhost
    closing = rabbitmqctl("close_all_connections", "--vhost", settings.TEST_VHOST,
                          "switchyard drill")
    connections = int(re.search(r"Closed (\d+) connections", closing).group(1))
    closed_at = purges()
    # Then new submissions run (web and workers reconnected), a countdown job runs (the
    # dispatcher reconnected) and beat's purge keeps firing (beat reconnected)
    after = submit_round()
    delayed = submit_round({"options": {"countdown": 1}})
    wait_until(lambda: all_finished(after + delayed) and purges() >= closed_at + 2, 90,
               "every role to recover", interval=0.5, roles=roles)
    accepted = before + after + delayed
    figures = drills.record(drills.count(
        "close-all-connections", submitted=len(accepted), job_ids=accepted,
        witness_dir=witness_dir, started=started, left=sum(drills.left_in_queues().values()),
        recovered=len(roles), notes=f"{connections} connections closed; "
                                    f"{purges() - closed_at} beat purges after"))
    for role in roles:
        role.assert_running()
    assert statuses(accepted) == {Job.Status.SUCCEEDED: len(accepted)}
    assert (figures.lost, figures.duplicated, figures.left_in_queues) == (0, 0, 0)
    assert connections >= len(roles), closing  # every role had a connection cut



def test_memory_alarm_during_an_api_flood_answers_in_time_and_loses_nothing(
        start_role, management, witness_dir):
    """RabbitMQ's memory alarm blocks every publisher for about 8 s of a four-client flood."""
    key = flood_tenant("alarmdrill")
    env = {"SWITCHYARD_WITNESS_DIR": str(witness_dir)}
    web, port = drills.web_up(start_role)
    roles = [web, start_role("dispatcher"), start_lane(start_role, management, "quick", 4, **env)]
    started = time.monotonic()
    with drills.Flood(port, key, params={"seconds": 0.01}) as flood:
        wait_until(lambda: flood.count() >= 100, 60, "the flood to get going", roles=roles)
        # When the broker blocks publishers
        with drills.memory_alarm(management):
            before = flood.count()
            time.sleep(8)
            during = flood.answers[before:]
        after = flood.count()
        wait_until(lambda: flood.count() >= after + 100, 60, "submissions after the alarm",
                   roles=roles)
    answers, accepted = flood.answers, flood.accepted()
    # Then every request was answered within 2 s, during the alarm too
    assert during, "no request was answered during the alarm"
    assert not [a for a in answers if a[0] == 0], [a for a in answers if a[0] == 0][:5]
    slowest = max(seconds for _, seconds, _ in answers)
    assert slowest < 2.0, slowest
    # And every accepted job ran once the alarm cleared
    wait_until(lambda: all_finished(accepted), 180, "every accepted job to finish", interval=1,
               roles=roles)
    figures = drills.record(drills.count(
        "memory-alarm", submitted=len(answers), job_ids=accepted, witness_dir=witness_dir,
        started=started, left=sum(drills.left_in_queues().values()),
        recovered=Job.objects.filter(
            id__in=accepted, published_at__gte=F("submitted_at") + PUBLISH_GRACE).count(),
        notes=f"{len(during)} answered during the alarm; slowest answer {slowest:.2f} s; "
              f"{sum(1 for a in answers if a[0] == 503)} answered 503"))
    assert statuses(accepted) == {Job.Status.SUCCEEDED: len(accepted)}
    assert (figures.lost, figures.executed, figures.left_in_queues) == (0, len(accepted), 0)

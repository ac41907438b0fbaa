"""PostgreSQL, the source of truth, restarted under an API flood with every role running.

The web must answer each request within 2 s (``202`` for what it recorded, ``503``
with ``Retry-After`` for what it could not), the workers must neither lose nor
run twice the jobs they hold when the database goes, and the dispatcher must carry
on by itself. The restart acts on the whole PostgreSQL cluster, not only the run's
database: no other test of the run is running meanwhile (docs/reliability.md).
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from django.db import connection

from jobs.bulk import BulkJob, job_submit_bulk
from jobs.models import Job
from jobs.options import SubmitOptions
from jobs.submission import job_submit
from tenants.models import Tenant
from tests import drills
from tests.processes import wait_until
from tests.test_drills_broker import flood_tenant

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers, pytest.mark.exclusive]


def _cluster() -> tuple[str, str]:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[0]
    return version, "main"


def restart_postgresql() -> float:
    """``pg_ctlcluster restart`` (fast shutdown: every session cut); its seconds."""
    began = time.monotonic()
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", *_cluster(), "restart",
                    "--", "-m", "fast"], check=True, capture_output=True, timeout=120)
    wait_until(lambda: subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"]).returncode == 0,
               60, "PostgreSQL to accept connections")
    connection.close()  # this process's session died with the server
    return time.monotonic() - began


def test_postgresql_restart_during_an_api_flood_loses_no_accepted_job(
        start_role, management, witness_dir):
    key = flood_tenant("pgrestart")
    roles, port = drills.platform_up(start_role, management, witness_dir)
    started = time.monotonic()
    tenant = Tenant.objects.get(name="pgrestart")
    with drills.Flood(port, key, params={"seconds": 0.01}) as flood:
        wait_until(lambda: flood.count() >= 200, 60, "the flood to get going", roles=roles)
        # Slow jobs that are running when the database goes (submitted once the flood is
        # going: however slowly it starts, they are still running at the restart)
        slow = [str(i) for i in job_submit_bulk(tenant=tenant, enforce_quotas=False, jobs=[
            BulkJob("demo.witness_slow", {"seconds": 4})] * 2).job_ids]
        wait_until(lambda: Job.objects.filter(id__in=slow, status=Job.Status.STARTED).count()
                   == 2, 30, "the slow jobs to start", roles=roles)
        # When PostgreSQL restarts in the middle of the flood
        before = flood.count()
        outage = restart_postgresql()
        during = flood.count() - before
        restarted = flood.count()
        wait_until(lambda: flood.count() >= restarted + 200, 60, "submissions after the restart",
                   roles=roles)
    # And a job the dispatcher must publish (a countdown) is submitted after it
    later, _ = job_submit(tenant=tenant, task="demo.witness", params={"seconds": 0},
                          options=SubmitOptions(countdown=1))
    answers = flood.answers
    # Then every request got an HTTP answer within 2 s: 202, or 503 with Retry-After
    assert [a for a in answers if a[0] == 0] == []
    assert {status for status, _, _ in answers} <= {202, 503}, answers[:5]
    slowest = max(seconds for _, seconds, _ in answers)
    assert slowest < 2.0, slowest
    refused = [a for a in answers if a[0] == 503]
    assert len(flood.retry_after) == len(refused) and None not in flood.retry_after
    # And every accepted job runs once, the held slow ones included; the dispatcher resumed
    accepted = flood.accepted() + slow + [str(later.id)]
    wait_until(lambda: drills.all_finished(accepted), 240, "every accepted job to finish",
               interval=1, roles=roles)
    figures = drills.record(drills.count(
        "postgresql-restart", submitted=len(answers) + len(slow) + 1, job_ids=accepted,
        witness_dir=witness_dir, started=started,
        left=sum(drills.left_in_queues().values()),
        recovered=Job.objects.filter(id__in=accepted, attempts__gt=1).count(),
        notes=f"restart took {outage:.1f} s; {during} answered meanwhile, {len(refused)} of "
              f"them 503; slowest answer {slowest:.2f} s; 2 slow jobs of 4 s running at the "
              "restart"))
    assert (figures.lost, figures.duplicated, figures.left_in_queues) == (0, 0, 0), \
        figures.line()
    assert Job.objects.filter(id__in=accepted).exclude(status=Job.Status.SUCCEEDED).count() == 0
    for role in roles:
        role.assert_running()

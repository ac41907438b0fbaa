"""Drill: one tenant floods a lane; the operator pauses, cancels and resumes it.

On the real broker, with a real slow worker and the dispatcher, and the commands run
as the backlog runbook (docs/runbooks/backlog-growing.md) writes them. Runs are
counted from the workers' witness logs (``tests.drills``), outside the job table:
what the operator paused never starts while paused, the other tenant's work runs
meanwhile, everything resumed runs exactly once, and nothing cancelled ever runs.
"""
from __future__ import annotations

import datetime as dt

import pytest

from jobs.bulk import BulkJob, job_submit_bulk
from jobs.models import Job
from jobs.publishing import publish_job
from jobs.submission import job_submit
from tenants.models import Tenant
from tests import runbooks
from tests.drills import left_in_queues, witnessed_runs
from tests.processes import role_env, wait_until
from tests.test_lanes import start_lane
from tests.test_native import native_send, tenant_with_user

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers]

BOOK = "backlog-growing.md"
#: The flood: every job straight into the broker (no fair-share window in the lane), as
#: a tenant's bulk submission lands when windows are off or wide.
NO_WINDOW = {"SWITCHYARD_FAIR_WINDOW_SLOW": "0"}


def _tenant(name: str) -> Tenant:
    return Tenant.objects.create(name=name, tier="premium", max_queued_jobs=10**6,
                                 submissions_per_minute=10**6)


def runbook(pattern: str, section: str, env: dict[str, str]) -> str:
    """Run the backlog runbook's command matching ``pattern``; its output."""
    result = runbooks.run(runbooks.find(BOOK, pattern, section), env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_a_paused_flood_waits_while_others_run_then_resumes_once_and_cancelled_never_runs(
        start_role, management, lanes_empty, witness_dir, settings):
    settings.SWITCHYARD_FAIR_WINDOW = {"slow": 0, "quick": 0}
    operator = role_env(lanes_empty)
    witness = {"SWITCHYARD_WITNESS_DIR": str(witness_dir), **NO_WINDOW}
    roles = [start_role("dispatcher", **NO_WINDOW),
             start_lane(start_role, management, "slow", 2, **witness)]
    acme, globex = _tenant("acme"), _tenant("globex")

    # Given acme's flood of 200 slow jobs, all in the broker, under way
    flood = job_submit_bulk(tenant=acme, jobs=[BulkJob("demo.witness_slow",
                                                       {"seconds": 0.2})] * 200)
    assert flood.published == 200
    acme_jobs = Job.objects.filter(tenant=acme)
    wait_until(lambda: acme_jobs.filter(status="succeeded").count() >= 4, 60,
               "the flood under way", roles=roles)

    # When the operator pauses acme, as the runbook says
    out = runbook(r"tenant_work pause acme --reason", "Fix", operator)
    started_by_pause = set(acme_jobs.filter(started_at__isnull=False)
                           .values_list("id", flat=True))
    assert "paused acme: " in out and "taken back from the broker" in out
    # (and a copy escapes the pause: published as the pause commits, by a dispatcher
    # that read the tenant just before)
    escaped = acme_jobs.filter(status="queued").first()
    publish_job(escaped)
    # and acme submits more while paused: accepted, held
    late, _ = job_submit(tenant=acme, task="demo.witness_slow", params={"seconds": 0.2})

    # Then the other tenant's jobs run meanwhile
    theirs = [job_submit(tenant=globex, task="demo.witness_slow", params={"seconds": 0})[0].id
              for _ in range(5)]
    wait_until(lambda: Job.objects.filter(id__in=theirs, status="succeeded").count() == 5, 60,
               "the other tenant's jobs", roles=roles)
    # And once the stale copies are consumed, nothing of acme started after the pause:
    # what ran at the pause finished, the escaped copy was acknowledged unrun and its
    # job kept for the resume
    wait_until(lambda: left_in_queues(lanes_empty)["slow"] == 0, 60, "the stale copies",
               roles=roles)
    wait_until(lambda: not acme_jobs.filter(status="started").exists(), 30,
               "acme's running jobs to finish", roles=roles)
    assert set(acme_jobs.filter(started_at__isnull=False)
               .values_list("id", flat=True)) == started_by_pause
    escaped.refresh_from_db()
    assert (escaped.status, escaped.published_at, escaped.attempts) == ("queued", None, 0)
    assert str(escaped.id) not in witnessed_runs(witness_dir)
    assert Job.objects.get(id=late.id).published_at is None
    status = runbook(r"tenant_work status acme", "Verify", operator)
    assert status.startswith("acme: paused since") and ": flood on slow" in status
    slow_row = next(line.split() for line in status.splitlines() if line.startswith("slow"))
    waiting = acme_jobs.filter(status="queued").count()
    assert slow_row[1:3] == ["0", str(waiting)]  # none in the broker, all held

    # When the operator cancels what is older than 2 hours (half of the held flood,
    # submitted long ago here), first with --dry-run
    old = list(acme_jobs.filter(status="queued").exclude(id__in=[late.id, escaped.id])
               .values_list("id", flat=True)[:100])
    Job.objects.filter(id__in=old).update(submitted_at=dt.datetime.now(dt.UTC)
                                          - dt.timedelta(hours=3))
    before = sorted(Job.objects.values_list("id", "status", "published_at", "publications"))
    dry = runbook(r"tenant_work cancel acme .*--dry-run", "Fix", operator)
    assert dry.strip() == ("would cancel 100 job(s) of acme not yet started (lane slow, "
                           "submitted more than 2h ago); dry run, nothing changed")
    assert sorted(Job.objects.values_list("id", "status", "published_at",
                                          "publications")) == before
    done = runbook(r"tenant_work cancel acme --lane slow --older-than 2h$", "Fix", operator)
    assert done.strip() == ("cancelled 100 job(s) of acme not yet started (lane slow, "
                            "submitted more than 2h ago)")

    # And resumes it: the dispatcher publishes the rest, each runs exactly once
    resumed = runbook(r"tenant_work resume acme", "Fix", operator)
    assert f"publishes its {waiting - 100} held job(s)" in resumed
    wait_until(lambda: not acme_jobs.filter(status__in=Job.UNFINISHED).exists(), 120,
               "acme's resumed jobs", roles=roles)
    runs = witnessed_runs(witness_dir)
    ran = {str(i) for i in acme_jobs.filter(status="succeeded").values_list("id", flat=True)}
    cancelled = {str(i) for i in acme_jobs.filter(status="cancelled").values_list("id",
                                                                                  flat=True)}
    assert cancelled == {str(i) for i in old}
    assert len(ran) + len(cancelled) == 201  # nothing lost
    assert {i: runs[i] for i in ran} == dict.fromkeys(ran, 1)  # each ran once
    assert not cancelled & set(runs)  # nothing cancelled ever ran
    assert str(escaped.id) in ran and str(late.id) in ran


def test_a_paused_tenants_celery_native_message_is_kept_and_runs_once_on_resume(
        start_role, management, lanes_empty, witness_dir):
    operator = role_env(lanes_empty)
    roles = [start_role("dispatcher"),
             start_lane(start_role, management, "quick", 1,
                        SWITCHYARD_WITNESS_DIR=str(witness_dir))]
    tenant, url = tenant_with_user("acme", "premium")
    runbook(r"tenant_work pause acme --reason", "Fix", operator)

    # When the paused tenant's service publishes with Celery's own API: one message in
    # its band (run as it comes, were the tenant not paused), one without a priority
    # (re-published by the platform in its band)
    sent = [native_send(url, task="demo.witness", routing_key="quick.premium.demo.witness",
                        kwargs={"seconds": 0}, **extra) for extra in ({"priority": 7}, {})]

    # Then the worker records both jobs, unpublished, and runs neither
    wait_until(lambda: Job.objects.filter(id__in=sent).count() == 2, 30,
               "the native jobs recorded", roles=roles)
    wait_until(lambda: left_in_queues(lanes_empty)["quick"] == 0, 30, "the messages consumed",
               roles=roles)
    jobs = Job.objects.filter(id__in=sent)
    assert {(job.tenant, job.status, job.published_at, job.attempts) for job in jobs} == {
        (tenant, "queued", None, 0)}
    assert not set(sent) & set(witnessed_runs(witness_dir))

    # And once resumed, the dispatcher publishes them and each runs, once
    runbook(r"tenant_work resume acme", "Fix", operator)
    wait_until(lambda: jobs.filter(status="succeeded").count() == 2, 30,
               "the native jobs to run after the resume", roles=roles)
    runs = witnessed_runs(witness_dir)
    assert [runs[i] for i in sent] == [1, 1]

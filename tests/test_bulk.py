"""Bulk submission: many jobs recorded with one COPY and published with
pipelined publisher confirms, on the real broker and PostgreSQL."""
from __future__ import annotations

import datetime as dt

import amqp
import pytest
from django.conf import settings
from django.utils import timezone
from kombu import Connection
from rest_framework.test import APIClient

from jobs.bulk import BulkJob, job_submit_bulk
from jobs.dispatch import job_publish_due, job_reclaim_unconfirmed
from jobs.errors import InvalidSubmission, QuotaExceeded
from jobs.models import Job, PendingConfirm
from jobs.options import Link, RetryPolicy, SubmitOptions
from jobs.publishing import PUBLISH_GRACE, publish_job
from jobs.signals import DUE_HEADER, SUBMITTED_HEADER, job_event
from jobs.submission import new_job
from routing import topology, wire
from tenants.models import Tenant
from tenants.services import tenant_create
from tests.processes import wait_until
from tests.test_lanes import start_lane

pytestmark = [pytest.mark.rabbitmq]


def _get_all(broker_url: str, queue: str) -> list[amqp.Message]:
    """Every message in ``queue``, removed from it."""
    with Connection(broker_url) as conn:
        channel = conn.channel()
        got = []
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            got.append(message)
        return got


@pytest.fixture
def tenant(transactional_db):
    return Tenant.objects.create(name="bulk", tier="premium", submissions_per_minute=1_000_000,
                                 max_queued_jobs=1_000_000)


def test_a_bulk_message_is_the_message_send_task_publishes(tenant, lanes_empty):
    # Given one job published the single way (Celery's send_task) ...
    params = {"x": {"file": "é.jpg", "n": [1, 2.5, None, True]}}
    single = new_job(tenant=tenant, task="demo.quick_task", params=params, priority=3,
                     now=timezone.now())
    single.expires_at = timezone.now() + dt.timedelta(minutes=5)
    single.link = {"task": "demo.quick_task", "params": {}}
    single.save()
    publish_job(single)
    # ... and the same job submitted in bulk
    options = SubmitOptions(priority=3, expires=single.expires_at,
                            link=Link(task="demo.quick_task"))
    outcome = job_submit_bulk(tenant=tenant, jobs=[BulkJob("demo.quick_task", params, options)])
    assert (outcome.accepted, outcome.published) == (1, 1)

    # Then both messages are the same but for the job id
    a, b = _get_all(lanes_empty, "quick")
    for message, job_id in ((a, str(single.id)), (b, str(outcome.job_ids[0]))):
        headers = message.properties["application_headers"]
        assert headers["id"] == headers["root_id"] == message.properties["correlation_id"] \
            == job_id
    # The timing headers (jobs.signals) carry each job's own submission time.
    strip = {"id", "root_id", "origin", SUBMITTED_HEADER, DUE_HEADER}
    for message in (a, b):
        headers = message.properties["application_headers"]
        assert headers[SUBMITTED_HEADER] == headers[DUE_HEADER] > 0
    assert {k: v for k, v in a.properties["application_headers"].items() if k not in strip} \
        == {k: v for k, v in b.properties["application_headers"].items() if k not in strip}
    assert {k: v for k, v in a.properties.items() if k not in ("application_headers",
                                                                  "correlation_id")} \
        == {k: v for k, v in b.properties.items() if k not in ("application_headers",
                                                                  "correlation_id")}
    assert a.body == b.body
    assert a.delivery_info["routing_key"] == b.delivery_info["routing_key"] \
        == "quick.premium.demo.quick_task"


def test_bulk_jobs_are_recorded_confirmed_and_run_by_the_workers(tenant, start_role,
                                                                management):
    # Given 3,000 quick jobs and 2 scheduled ones, with their own priorities and retries
    jobs = [BulkJob("demo.quick_task", {"x": i}, SubmitOptions(priority=i % 10))
            for i in range(3000)]
    jobs.append(BulkJob("demo.quick_task", {"x": "later"}, SubmitOptions(countdown=1)))
    jobs.append(BulkJob("demo.flaky", {"fail_runs": 1},
                        SubmitOptions(retry_policy=RetryPolicy(max_retries=2, backoff=0.1))))

    # When they are submitted in bulk, in chunks of 1,000
    outcome = job_submit_bulk(tenant=tenant, jobs=jobs, chunk=1000)

    # Then every job is recorded, in order, and the broker confirmed each immediate one
    assert (outcome.accepted, outcome.published, outcome.scheduled, outcome.deferred) == (
        3002, 3001, 1, 0)
    assert not PendingConfirm.objects.exists()
    records = Job.objects.in_bulk(outcome.job_ids)
    assert records[outcome.job_ids[0]].params == {"x": 0}
    assert records[outcome.job_ids[7]].priority == 5 + round(7 * 4 / 9)
    flaky = records[outcome.job_ids[3001]]
    assert (flaky.max_attempts, flaky.retry_policy["max_retries"]) == (3, 2)
    assert records[outcome.job_ids[3000]].published_at is None  # its countdown runs first

    # And the workers (and the dispatcher, for the scheduled one and the retry) run them all
    roles = [start_lane(start_role, management, "quick", 2), start_role("dispatcher")]
    wait_until(lambda: Job.objects.filter(id__in=outcome.job_ids,
                                          status=Job.Status.SUCCEEDED).count() == 3002,
               120, "every bulk job to succeed", roles=roles)
    assert Job.objects.get(id=outcome.job_ids[3001]).attempts == 2
    assert Job.objects.get(id=outcome.job_ids[5]).result == 5


def test_a_broker_that_cannot_be_reached_leaves_the_jobs_to_the_dispatcher(
        tenant, lanes_empty):
    # Given a broker address nobody answers on
    from switchyard.celery import app
    good = app.conf.broker_url
    app.conf.broker_url = "amqp://guest:guest@127.0.0.1:1//"
    try:
        outcome = job_submit_bulk(tenant=tenant, jobs=[BulkJob("demo.quick_task", {"x": i})
                                                       for i in range(50)])
    finally:
        app.conf.broker_url = good
    # Then all are accepted, none reported published, all left to the dispatcher
    assert (outcome.accepted, outcome.published, outcome.deferred) == (50, 0, 50)
    assert "refused" in outcome.broker_error.lower()
    assert Job.objects.filter(id__in=outcome.job_ids, published_at__isnull=True).count() == 50
    assert not PendingConfirm.objects.exists()
    # And once the broker is back the dispatcher publishes each of them
    published = job_publish_due(now=timezone.now() + dt.timedelta(seconds=10))
    assert published == 50
    assert len(_get_all(lanes_empty, "quick")) == 50


def test_jobs_of_a_submitter_that_died_before_the_confirms_are_published_again(
        tenant, lanes_empty):
    # Given jobs recorded as published with their PendingConfirm row, as a bulk
    # submission leaves them if its process dies before the broker answers
    now = timezone.now()
    jobs = [new_job(tenant=tenant, task="demo.quick_task", params={"x": i}, priority=None,
                    now=now) for i in range(3)]
    for job in jobs:
        job.published_at, job.publications = now, 1
    Job.objects.bulk_create(jobs)
    Job.objects.filter(id=jobs[2].id).update(status=Job.Status.STARTED)  # one did get out
    PendingConfirm.objects.create(created_at=now, job_ids=[str(j.id) for j in jobs])

    # When the dispatcher looks before the grace period ends, nothing changes
    assert job_reclaim_unconfirmed(now=now + dt.timedelta(seconds=10)) == 0
    # Then after it, the two still queued go back to the dispatcher and are published
    later = now + dt.timedelta(seconds=settings.SWITCHYARD_BULK_CONFIRM_GRACE + 1)
    assert job_reclaim_unconfirmed(now=later) == 2
    assert not PendingConfirm.objects.exists()
    assert job_publish_due(now=later) == 2
    messages = _get_all(lanes_empty, "quick")
    assert sorted(m.properties["correlation_id"] for m in messages) == sorted(
        str(j.id) for j in jobs[:2])
    # Republished with a higher publication number: a late first copy is not run
    assert {m.properties["application_headers"]["switchyard_publication"]
            for m in messages} == {2}


def test_an_unroutable_job_stays_unpublished_and_is_published_once_routable(
        tenant, lanes_empty):
    # Given the quick lane's binding removed (a topology mistake, or a queue re-declared)
    with Connection(lanes_empty) as conn:
        conn.default_channel.queue_unbind("quick", topology.EXCHANGE_NAME,
                                          topology.binding_key("quick"))
    seen = []
    job_event.connect(lambda sender=None, **kw: seen.append(kw), dispatch_uid="probe",
                      weak=False)
    try:
        outcome = job_submit_bulk(tenant=tenant, jobs=[
            BulkJob("demo.quick_task", {"x": 1}), BulkJob("demo.slow_task", {"seconds": 0})])
    finally:
        job_event.disconnect(dispatch_uid="probe")
        with Connection(lanes_empty) as conn:
            conn.default_channel.queue_bind("quick", topology.EXCHANGE_NAME,
                                            topology.binding_key("quick"))
    # Then the slow one is published; the quick one came back and waits, unpublished
    assert (outcome.published, outcome.returned, outcome.deferred) == (1, 1, 1)
    quick = Job.objects.get(id=outcome.job_ids[0])
    assert (quick.status, quick.published_at) == (Job.Status.QUEUED, None)
    assert Job.objects.get(id=outcome.job_ids[1]).published_at is not None
    # And the return is counted in the metrics
    assert ("returned", "quick", "premium", "demo.quick_task", 1) in [
        (e["event"], e["lane"], e["tier"], e["task"], e["count"]) for e in seen]
    # And with the binding back, the dispatcher publishes it to the quick queue
    assert job_publish_due(now=timezone.now() + PUBLISH_GRACE) == 1
    with Connection(lanes_empty) as conn:
        message = conn.default_channel.basic_get("quick", no_ack=True)
    assert message.properties["application_headers"]["id"] == str(quick.id)


def test_nothing_is_written_when_one_job_is_invalid(tenant):
    jobs = [BulkJob("demo.quick_task", {"x": 1}), BulkJob("demo.quick_task", {},
                                                          SubmitOptions(priority=12))]
    with pytest.raises(InvalidSubmission) as err:
        job_submit_bulk(tenant=tenant, jobs=jobs)
    assert err.value.field == "jobs.1.options.priority"
    with pytest.raises(InvalidSubmission) as err:
        job_submit_bulk(tenant=tenant, jobs=[BulkJob("no.such.task")])
    assert err.value.field == "jobs.0.task"
    assert not Job.objects.exists()


def test_bulk_counts_against_both_quotas(transactional_db):
    tenant = Tenant.objects.create(name="small", tier="standard", max_queued_jobs=100,
                                   submissions_per_minute=1000)
    with pytest.raises(QuotaExceeded, match="quota is 100"):
        job_submit_bulk(tenant=tenant, jobs=[BulkJob("demo.quick_task")] * 101)
    Tenant.objects.filter(id=tenant.id).update(max_queued_jobs=10_000)
    tenant.refresh_from_db()
    with pytest.raises(QuotaExceeded, match="smaller parts"):
        job_submit_bulk(tenant=tenant, jobs=[BulkJob("demo.quick_task")] * 1001)
    assert not Job.objects.exists()


# The HTTP API ------------------------------------------------------------------

@pytest.fixture
def api(transactional_db):
    tenant, key = tenant_create(name="bulk-api", tier="standard")
    Tenant.objects.filter(id=tenant.id).update(submissions_per_minute=100_000)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def test_api_bulk_answers_202_with_every_job_confirmed(api, lanes_empty):
    body = {"jobs": [{"task": "demo.quick_task", "params": {"x": i}} for i in range(500)]
            + [{"task": "demo.slow_task", "params": {"seconds": 0},
                "options": {"priority": 9, "expires": 600}}]}
    resp = api.post("/api/v1/jobs/bulk", body, format="json")
    assert resp.status_code == 202, resp.json()
    answer = resp.json()
    assert {k: answer[k] for k in ("accepted", "published", "scheduled", "deferred", "returned")} \
        == {"accepted": 501, "published": 501, "scheduled": 0, "deferred": 0, "returned": 0}
    slow = api.get(f"/api/v1/jobs/{answer['jobs'][500]}").json()
    assert (slow["task"], slow["tier"], slow["priority"]) == ("demo.slow_task", "standard", 4)
    assert len(_get_all(lanes_empty, "quick")) == 500


def test_api_bulk_holds_slow_jobs_past_the_tenants_window(api, lanes_empty, settings):
    settings.SWITCHYARD_FAIR_WINDOW = {"slow": 2, "quick": 0}
    body = {"jobs": [{"task": "demo.slow_task", "params": {"seconds": 0}}] * 5}
    answer = api.post("/api/v1/jobs/bulk", body, format="json").json()
    assert {k: answer[k] for k in ("accepted", "published", "held", "scheduled")} == {
        "accepted": 5, "published": 2, "held": 3, "scheduled": 0}
    assert len(_get_all(lanes_empty, "slow")) == 2


@pytest.mark.parametrize(("jobs", "field"), [
    ([{"task": "demo.quick_task"}, {"task": "nope"}], "jobs.1.task"),
    ([{"task": "demo.slow_task", "params": {"seconds": "long"}}], "jobs.0.params.seconds"),
    ([{"task": "demo.quick_task", "options": {"queue": "slow"}}], "jobs.0.options.queue"),
    ([{"task": "demo.quick_task", "tier": "premium"}], "jobs.0.tier"),
    ([], "jobs"),
    ("all", "jobs"),
])
def test_api_bulk_names_the_bad_job_and_accepts_none(api, jobs, field):
    resp = api.post("/api/v1/jobs/bulk", {"jobs": jobs}, format="json")
    assert resp.status_code == 400
    assert field in resp.json()["errors"], resp.json()
    assert not Job.objects.exists()


def test_api_bulk_refuses_more_jobs_than_its_limit(api, settings):
    settings.SWITCHYARD_MAX_BULK_JOBS = 10
    resp = api.post("/api/v1/jobs/bulk", {"jobs": [{"task": "demo.quick_task"}] * 11},
                    format="json")
    assert resp.status_code == 400
    assert "at most 10" in resp.json()["errors"]["jobs"][0]


def test_the_wire_encoding_reads_back_through_amqp(lanes_empty):
    # Field tables the bulk path writes decode to the same values in py-amqp
    table = {"s": "é", "i": 7, "big": 2**40, "f": 1.5, "t": True, "n": None,
             "a": [1, "x", None], "d": {"k": [False]}}
    from amqp.serialization import loads
    decoded, _ = loads("F", wire.encode_table(table), 0)
    assert decoded[0] == table
    with pytest.raises(wire.WireError):
        wire.encode_value(object())


def test_reused_quota_counts_still_count_this_process_s_own_submissions(transactional_db,
                                                                          settings):
    # Counts are reused for SWITCHYARD_QUOTA_COUNT_TTL, plus what this process added
    from jobs.quotas import _quota_cache, check_quotas
    settings.SWITCHYARD_QUOTA_COUNT_TTL = 60
    tenant = Tenant.objects.create(name="ttl", tier="standard", max_queued_jobs=5,
                                   submissions_per_minute=100)
    _quota_cache.pop(tenant.id, None)
    now = timezone.now()
    check_quotas(tenant, now, adding=3, submissions=3)  # read from the database: 0 waiting
    with pytest.raises(QuotaExceeded, match="3 jobs are waiting and this adds 3"):
        check_quotas(tenant, now, adding=3, submissions=3)
    check_quotas(tenant, now, adding=2, submissions=2)  # exactly at the quota
    with pytest.raises(QuotaExceeded):
        check_quotas(tenant, now, adding=1)

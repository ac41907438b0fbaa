"""Workflows through the API and the outcome recorders, on the real database.

Steps are "run" here by the same recorders a worker calls (``jobs.outcomes``), so
each test decides which step ends how and in what order; tests/test_workflows_e2e.py
runs workflows on real workers.
"""
from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now
from rest_framework.test import APIClient

from jobs.models import Batch, Job, Workflow, WorkflowStep
from jobs.outcomes import job_record_failure, job_record_success
from jobs.selectors import stuck_workflows, workflow_health
from jobs.workflows import steps_ended, workflow_sweep
from tenants.services import tenant_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def api():
    tenant, key = tenant_create(name="flows", tier="premium")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    client.tenant = tenant
    return client


def submit(api, body, status=202) -> dict:
    resp = api.post("/api/v1/workflows", body, format="json")
    assert resp.status_code == status, resp.json()
    return resp.json()


def steps(api, workflow_id) -> dict[str, dict]:
    body = api.get(f"/api/v1/workflows/{workflow_id}").json()
    return {step["id"]: step for step in body["steps"]}


def start(job_id) -> None:
    assert Job.objects.filter(id=job_id, status__in=Job.WAITING).update(
        status=Job.Status.STARTED, started_at=Now(), attempts=F("attempts") + 1), \
        f"job {job_id} was not waiting: {Job.objects.get(id=job_id).status}"


def succeed(job_id, result) -> None:
    start(job_id)
    assert job_record_success(job_id=job_id, result=result, has_link=True)


def fail(job_id, error="boom") -> None:
    start(job_id)
    assert job_record_failure(job_id=job_id, error=error, retryable=False) == "failed"


def job(step) -> Job:
    return Job.objects.get(id=step["job"])


DIAMOND = {"steps": [
    {"id": "a", "task": "demo.add", "params": {"x": 1, "y": 2}},
    {"id": "b", "task": "demo.add", "params": {"y": 10}, "depends_on": ["a"],
     "from": {"x": "a"}},
    {"id": "c", "task": "demo.add", "params": {"y": 100}, "depends_on": ["a"],
     "from": {"x": "a"}},
    {"id": "d", "task": "demo.total", "depends_on": ["b", "c"], "from": {"numbers": ["b", "c"]}},
]}


def test_a_diamond_runs_in_dependency_order_with_results_passed(api):
    body = submit(api, DIAMOND)
    assert body["status"] == "running" and body["progress"]["steps"] == 4
    s = {step["id"]: step for step in body["steps"]}
    assert [s[n]["status"] for n in "abcd"] == ["queued", "blocked", "blocked", "blocked"]

    succeed(s["a"]["job"], 3)
    s = steps(api, body["id"])
    assert [s[n]["status"] for n in "abcd"] == ["succeeded", "queued", "queued", "blocked"]
    assert job(s["b"]).params == {"x": 3, "y": 10}

    succeed(s["b"]["job"], 13)
    assert job(s["d"]).status == "blocked"  # still waiting for c
    succeed(s["c"]["job"], 103)
    d = job(s["d"])
    assert d.status == "queued" and d.params == {"numbers": [13, 103]}
    succeed(d.id, 116)
    workflow = api.get(f"/api/v1/workflows/{body['id']}").json()
    assert workflow["status"] == "succeeded" and workflow["finished_at"]
    assert workflow["progress"] == {"steps": 4, "ended": 4, "succeeded": 4}


def test_a_step_end_counted_twice_releases_its_dependents_once(api):
    body = submit(api, DIAMOND)
    s = {step["id"]: step for step in body["steps"]}
    succeed(s["a"]["job"], 3)
    # A second recording of the same end (a redelivery racing the first) changes nothing.
    assert not job_record_success(job_id=s["a"]["job"], result=3, has_link=True)
    with pytest.raises(AssertionError):
        start(s["a"]["job"])
    workflow_sweep()  # the sweep finds nothing left to count
    assert WorkflowStep.objects.get(job_id=s["b"]["job"]).waiting_for == 0
    assert WorkflowStep.objects.get(job_id=s["d"]["job"]).waiting_for == 2
    assert Workflow.objects.get(id=body["id"]).open_steps == 3


def test_fail_workflow_cancels_descendants_and_on_complete_still_runs(api):
    body = submit(api, {**DIAMOND, "on_complete": {"task": "demo.quick_task",
                                                   "summary": "x"}})
    s = {step["id"]: step for step in body["steps"]}
    succeed(s["a"]["job"], 3)
    fail(s["b"]["job"], "disk full")
    s = steps(api, body["id"])
    assert s["d"]["status"] == "cancelled"
    assert job(s["d"]).error == "not run: step 'b' ended failed"
    assert s["c"]["status"] == "queued"  # not a descendant of b: it runs
    assert s["on_complete"]["status"] == "blocked"
    succeed(s["c"]["job"], 103)
    final = job(s["on_complete"])
    assert final.status == "queued"
    assert final.params["x"] == {"workflow": body["id"], "steps": 4, "succeeded": 2,
                                 "failed": 1, "dead": 0, "expired": 0, "cancelled": 1}
    assert Workflow.objects.get(id=body["id"]).status == "running"
    succeed(final.id, "reported")
    workflow = Workflow.objects.get(id=body["id"])
    assert workflow.status == "failed"
    assert workflow.reason == "step 'b' ended failed: disk full"


def test_continue_lets_dependents_run_with_null_for_the_failed_result(api):
    flow = {"steps": [
        {"id": "a", "task": "demo.fail", "on_failure": "continue"},
        {"id": "b", "task": "demo.quick_task", "depends_on": ["a"], "from": {"x": "a"}}],
        "on_complete": {"task": "demo.quick_task", "summary": "x"}}
    body = submit(api, flow)
    s = {step["id"]: step for step in body["steps"]}
    fail(s["a"]["job"])
    b = job(s["b"])
    assert b.status == "queued" and b.params == {"x": None}
    succeed(b.id, None)
    succeed(job(s["on_complete"]).id, None)
    assert Workflow.objects.get(id=body["id"]).status == "succeeded"


def test_cancel_stops_every_step_not_started_and_names_the_running_ones(api):
    body = submit(api, {**DIAMOND, "on_complete": {"task": "demo.quick_task"}})
    s = {step["id"]: step for step in body["steps"]}
    succeed(s["a"]["job"], 3)
    start(s["b"]["job"])
    resp = api.post(f"/api/v1/workflows/{body['id']}/cancel")
    assert resp.status_code == 200, resp.json()
    answer = resp.json()
    assert answer["running"] == ["b"] and answer["cancelled"] == 3
    s = steps(api, body["id"])
    assert [s[n]["status"] for n in ["c", "d", "on_complete"]] == ["cancelled"] * 3
    assert answer["workflow"]["status"] == "running"  # b still runs
    assert job_record_success(job_id=s["b"]["job"], result=13, has_link=True)
    assert job(s["d"]).status == "cancelled"  # b's end released nothing
    workflow = Workflow.objects.get(id=body["id"])
    assert workflow.status == "cancelled" and workflow.open_steps == 0
    again = api.post(f"/api/v1/workflows/{body['id']}/cancel")
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]


def test_a_cancelled_step_counts_as_ended_by_its_policy(api):
    body = submit(api, DIAMOND)
    s = {step["id"]: step for step in body["steps"]}
    succeed(s["a"]["job"], 3)
    resp = api.post(f"/api/v1/jobs/{s['c']['job']}/cancel")
    assert resp.status_code == 200, resp.json()
    assert job(s["d"]).status == "cancelled"
    blocked = api.post(f"/api/v1/jobs/{s['d']['job']}/cancel")
    assert blocked.status_code == 409


def test_an_expiry_seen_elsewhere_is_counted_by_the_sweep(api):
    flow = {"steps": [{"id": "a", "task": "demo.quick_task", "options": {"expires": 5}},
                      {"id": "b", "task": "demo.quick_task", "depends_on": ["a"]}]}
    body = submit(api, flow)
    s = {step["id"]: step for step in body["steps"]}
    Job.objects.filter(id=s["a"]["job"]).update(status="expired", finished_at=Now())
    assert workflow_sweep() == 1
    assert job(s["b"]).status == "cancelled"
    assert workflow_sweep() == 0
    assert Workflow.objects.get(id=body["id"]).status == "failed"


def test_released_params_that_do_not_fit_end_the_step_dead_with_the_reason(api):
    flow = {"steps": [{"id": "a", "task": "demo.quick_task", "params": {"x": "text"}},
                      {"id": "b", "task": "demo.add", "params": {"y": 1},
                       "depends_on": ["a"], "from": {"x": "a"}}]}
    body = submit(api, flow)
    s = {step["id"]: step for step in body["steps"]}
    succeed(s["a"]["job"], "text")
    b = job(s["b"])
    assert b.status == "dead"
    assert "params.x" in b.error and "demo.add" in b.error
    assert Workflow.objects.get(id=body["id"]).status == "failed"


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"steps": []}, "steps", "non-empty"),
    ({"steps": [{"id": "a", "task": "nope"}]}, "steps.0.task", "nope"),
    ({"steps": [{"id": "a", "task": "demo.add", "params": {"x": 1}}]},
     "steps.0.params", "y"),
    ({"steps": [{"id": "a", "task": "demo.add", "params": {"x": "1", "y": 1}}]},
     "steps.0.params.x", "number"),
    ({"steps": [{"id": "a", "task": "demo.quick_task", "depends_on": ["z"]}]},
     "steps.0.depends_on.0", "'z'"),
    ({"steps": [{"id": "a", "task": "demo.quick_task"}, {"id": "a", "task": "demo.quick_task"}]},
     "steps.1.id", "another step"),
    ({"steps": [{"id": "a", "task": "demo.quick_task", "depends_on": ["c"]},
                {"id": "b", "task": "demo.quick_task", "depends_on": ["a"]},
                {"id": "c", "task": "demo.quick_task", "depends_on": ["b"]}]},
     "depends_on", "cycle"),
    ({"steps": [{"id": "a", "task": "demo.quick_task"},
                {"id": "b", "task": "demo.quick_task", "from": {"x": "a"}}]},
     "steps.1.from.x", "depends on"),
    ({"steps": [{"id": "a", "task": "demo.quick_task", "on_failure": "ignore"}]},
     "steps.0.on_failure", "fail_workflow"),
    ({"steps": [{"id": "a", "task": "demo.quick_task", "colour": "red"}]},
     "steps.0.colour", "unknown field"),
    ({"steps": [{"id": "a", "task": "demo.quick_task",
                 "options": {"link": "demo.quick_task"}}]},
     "steps.0.options.link", "depends on it"),
    ({"steps": [{"id": "a", "task": "demo.quick_task", "options": {"priority": 12}}]},
     "steps.0.options.priority", "9"),
    ({"steps": [{"id": "a", "task": "demo.quick_task"}],
      "on_complete": {"task": "demo.add", "params": {"x": 1}}}, "on_complete.params", "y"),
])
def test_a_bad_workflow_is_refused_naming_the_step_and_field(api, body, field, words):
    answer = submit(api, body, status=400)["errors"]
    matching = [key for key in answer if key.startswith(field) or key.endswith(field)]
    assert matching, answer
    assert words in str(answer[matching[0]]), answer
    assert not Workflow.objects.exists() and not Job.objects.exists()


def test_a_cycle_is_named_step_by_step(api):
    answer = submit(api, {"steps": [
        {"id": "a", "task": "demo.quick_task"},
        {"id": "b", "task": "demo.quick_task", "depends_on": ["a", "d"]},
        {"id": "c", "task": "demo.quick_task", "depends_on": ["b"]},
        {"id": "d", "task": "demo.quick_task", "depends_on": ["c"]}]}, status=400)["errors"]
    (field, messages), = answer.items()
    assert field.endswith(".depends_on")
    assert any(cycle in messages[0] for cycle in ("b -> c -> d -> b", "c -> d -> b -> c",
                                                  "d -> b -> c -> d")), messages


def test_more_than_ten_thousand_steps_are_refused(api):
    body = {"steps": [{"id": str(i), "task": "demo.quick_task"} for i in range(10_001)]}
    assert "10000" in str(submit(api, body, status=400)["errors"]["steps"])


def test_a_ten_thousand_step_fan_in_is_accepted_and_released_once(api):
    fan = [{"id": f"h{i}", "task": "demo.add", "params": {"x": i, "y": 0}}
           for i in range(9_999)]
    body = submit(api, {"steps": [*fan, {"id": "sum", "task": "demo.total",
                                         "depends_on": [f"h{i}" for i in range(9_999)],
                                         "from": {"numbers": [f"h{i}" for i in range(9_999)]}}]})
    workflow = Workflow.objects.get(id=body["id"])
    assert workflow.step_count == 10_000
    # Many roots at once are left to the dispatcher (due now), not published inline.
    assert Job.objects.filter(workflow=workflow, status="queued", run_at__isnull=False).count() \
        == 9_999
    # Every head ends at once, counted in one go (as the sweep counts ends it finds).
    heads = dict(Job.objects.filter(workflow=workflow, status="queued")
                 .values_list("id", "params"))
    for job_id, params in heads.items():
        Job.objects.filter(id=job_id).update(status="succeeded", result=params["x"],
                                             finished_at=Now())
    with transaction.atomic():
        steps_ended([(job_id, workflow.id, "succeeded") for job_id in heads])
        steps_ended([(job_id, workflow.id, "succeeded") for job_id in heads])  # no-op
    final = Job.objects.get(step__workflow=workflow, step__name="sum")
    assert final.status == "queued"
    assert final.params["numbers"] == list(range(9_999))
    assert Workflow.objects.get(id=workflow.id).open_steps == 1


def test_idempotency_key_replays_the_same_workflow(api):
    first = api.post("/api/v1/workflows", DIAMOND, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    again = api.post("/api/v1/workflows", DIAMOND, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert first.status_code == again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert first.json()["id"] == again.json()["id"] and Workflow.objects.count() == 1
    other = api.post("/api/v1/workflows", {"steps": DIAMOND["steps"][:1]}, format="json",
                     HTTP_IDEMPOTENCY_KEY="k1")
    assert other.status_code == 409


def test_workflows_are_listed_for_their_tenant_only(api):
    submit(api, DIAMOND)
    _, other_key = tenant_create(name="others", tier="standard")
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Token {other_key}")
    mine = api.get("/api/v1/workflows").json()["results"]
    assert len(mine) == 1 and mine[0]["step_count"] == 4 and mine[0]["open_steps"] == 4
    assert other.get("/api/v1/workflows").json()["results"] == []
    assert other.get(f"/api/v1/workflows/{mine[0]['id']}").status_code == 404
    assert other.post(f"/api/v1/workflows/{mine[0]['id']}/cancel").status_code == 404


def test_a_batch_on_complete_runs_once_after_every_chunk_with_its_counts(api):
    resp = api.post("/api/v1/batches", {
        "task": "demo.checksum", "items": [{"data": f"f{i}"} for i in range(5)],
        "chunk_size": 2, "on_complete": {"task": "demo.quick_task", "summary": "x"}},
        format="json")
    assert resp.status_code == 202, resp.json()
    batch = Batch.objects.get(id=resp.json()["id"])
    final = Job.objects.get(id=resp.json()["on_complete"])
    assert final.status == "blocked"
    chunks = list(Job.objects.filter(batch=batch).order_by("chunk_index"))
    succeed(chunks[0].id, {"failed": []})
    fail(chunks[1].id)
    assert Job.objects.get(id=final.id).status == "blocked"
    api.post(f"/api/v1/batches/{batch.id}/cancel")  # the last chunk, not started
    final.refresh_from_db()
    assert final.status == "queued"
    assert final.params["x"]["batch"] == str(batch.id)
    assert final.params["x"]["total_items"] == 5
    assert (final.params["x"]["succeeded"], final.params["x"]["failed"],
            final.params["x"]["cancelled"]) == (1, 1, 1)


def test_a_workflow_left_with_nothing_to_run_is_stuck_until_the_sweep_counts_its_end(api):
    body = submit(api, DIAMOND)
    s = {step["id"]: step for step in body["steps"]}
    # An end recorded on a path that does not count it (as an expiry in the dispatcher)
    Job.objects.filter(id=s["a"]["job"]).update(status="succeeded", result=3,
                                                finished_at=Now())
    assert [str(w.id) for w in stuck_workflows()] == [body["id"]]
    assert workflow_health().stuck == 1
    out = io.StringIO()
    call_command("workflows", "list", "--stuck", stdout=out)
    assert body["id"] in out.getvalue() and "1 stuck" in out.getvalue()
    out = io.StringIO()
    call_command("workflows", "show", body["id"], stdout=out)
    assert "ended, not yet counted" in out.getvalue()
    call_command("workflows", "sweep", stdout=io.StringIO())
    assert list(stuck_workflows()) == []
    assert job(s["b"]).status == "queued"


def test_operators_see_and_cancel_workflows_in_the_admin_and_the_dashboard(api, admin_client):
    body = submit(api, DIAMOND)
    page = admin_client.get(f"/admin/jobs/workflow/{body['id']}/change/")
    assert page.status_code == 200
    assert b"4 of 4 steps shown" in page.content and b"blocked" in page.content
    done = admin_client.post("/admin/jobs/workflow/", {
        "action": "cancel_workflows", "_selected_action": [body["id"]]}, follow=True)
    assert b"4 step(s) cancelled" in done.content
    assert Workflow.objects.get(id=body["id"]).status == "cancelled"
    data = admin_client.get("/dashboard/data").json()["workflows"]
    assert data["running"] == 0 and data["finished_last_hour"]["cancelled"] == 1


def test_workflow_gauges_and_counters_are_exported(api, admin_client, settings):
    submit(api, DIAMOND)
    text = admin_client.get("/metrics").content.decode()
    assert "switchyard_workflows_running 1.0" in text
    assert "switchyard_workflows_stuck 0.0" in text
    assert "switchyard_oldest_running_workflow_age_seconds" in text

"""Celery's canvas through switchyard_client: chain, group and chord run as Switchyard
workflows on the real platform (its web, RabbitMQ as the tenant's broker user, workers),
with Celery's results, and no ``chord_unlock`` polling."""
from __future__ import annotations

import celery
import celery.exceptions
import pytest
import switchyard_client

from jobs.models import Job, Workflow, WorkflowStep
from tests.test_client import caller, web  # noqa: F401 - fixtures
from tests.test_lanes import start_lane

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers]


@pytest.fixture
def app(caller, web, start_role, management):  # noqa: F811 - fixtures
    service = caller("canvas-co", "premium")
    client = switchyard_client.connect(service.broker_url, api_url=web, token=service.token)
    client.roles = [start_lane(start_role, management, "quick", concurrency=2),
                    start_role("dispatcher")]
    return client


def test_a_chain_passes_each_result_to_the_next_task(app):
    add = app.remote_task("demo.add")
    result = celery.chain(add.s(1, 2), add.s(3), add.s(10)).apply_async()
    assert result.get(timeout=60) == 16
    assert result.parent.get(timeout=5) == 6 and result.parent.parent.get(timeout=5) == 3
    workflow = Workflow.objects.get(jobs__id=result.id)
    assert (workflow.kind, workflow.status, workflow.step_count) == ("chain", "succeeded", 3)
    assert list(workflow.steps.values_list("name", flat=True)) == [
        "1.demo.add", "2.demo.add", "3.demo.add"]
    for app_role in app.roles:
        app_role.assert_running()


def test_an_immutable_signature_in_a_chain_takes_no_result(app):
    add = app.remote_task("demo.add")
    assert celery.chain(add.s(1, 2), add.si(5, 5)).apply_async().get(timeout=60) == 10


def test_a_failing_chain_task_cancels_the_rest_with_the_reason(app):
    add, fail = app.remote_task("demo.add"), app.remote_task("demo.fail")
    result = celery.chain(add.s(1, 2), fail.si("disk full"), add.s(3)).apply_async()
    # The last task's own outcome (follow_parents=False: Celery's get() would first raise a
    # parent's error if it has already failed by the time it looks).
    with pytest.raises(switchyard_client.JobCancelled):
        result.get(timeout=60, follow_parents=False)
    with pytest.raises(switchyard_client.JobFailed, match="disk full"):
        result.get(timeout=5)  # Celery's default: the failed parent's error
    last = Job.objects.get(id=result.id)
    assert last.status == "cancelled" and "ended failed" in last.error
    with pytest.raises(switchyard_client.JobFailed, match="disk full"):
        result.parent.get(timeout=5)
    assert Workflow.objects.get(jobs__id=result.id).status == "failed"


def test_a_group_gives_every_result_in_order(app):
    add = app.remote_task("demo.add")
    assert celery.group(add.s(i, i) for i in range(10)).apply_async().get(timeout=60) == [
        2 * i for i in range(10)]


def test_a_chord_over_a_thousand_headers_calls_its_callback_exactly_once(app):
    add, total = app.remote_task("demo.add"), app.remote_task("demo.total")
    result = celery.chord((add.s(i, 1) for i in range(1000)), total.s()).apply_async()
    assert result.get(timeout=240) == sum(i + 1 for i in range(1000))
    workflow = Workflow.objects.get(id=result.parent.id)
    assert (workflow.kind, workflow.status, workflow.step_count) == ("chord", "succeeded", 1001)
    body = Job.objects.get(id=result.id)
    assert (body.task, body.attempts, body.status) == ("demo.total", 1, "succeeded")
    assert body.params["numbers"] == [i + 1 for i in range(1000)]  # header order kept
    assert Job.objects.filter(workflow=workflow, task="demo.total").count() == 1
    assert WorkflowStep.objects.filter(workflow=workflow, outcome="succeeded").count() == 1001
    # No chord_unlock (or any celery.* task) was ever sent: Celery's own would poll.
    assert not Job.objects.filter(task__startswith="celery.").exists()


def test_a_chord_whose_header_fails_cancels_its_callback(app):
    add, fail, total = (app.remote_task(n) for n in ("demo.add", "demo.fail", "demo.total"))
    result = celery.chord([add.s(1, 1), fail.si("bad input"), add.s(2, 2)],
                          total.s()).apply_async()
    with pytest.raises(switchyard_client.JobCancelled):
        result.get(timeout=60, follow_parents=False)
    assert "ended failed" in Job.objects.get(id=result.id).error


def test_a_chord_with_an_unknown_callback_is_refused_before_anything_is_published(app):
    add = app.remote_task("demo.add")
    with pytest.raises(switchyard_client.ApiError, match="body.task"):
        celery.chord([add.s(1, 1)], app.remote_task("nope.never").s()).apply_async()
    assert not Job.objects.filter(task="demo.add").exists()


def test_a_nested_canvas_is_dead_with_the_reason(app):
    add = app.remote_task("demo.add")
    inner = celery.chord([add.s(1, 1), add.s(2, 2)], app.remote_task("demo.total").s())
    result = celery.chain(add.s(1, 2), inner).apply_async()
    first = result
    while first.parent is not None:
        first = first.parent
    with pytest.raises(switchyard_client.JobDead, match="workflow"):
        first.get(timeout=60)

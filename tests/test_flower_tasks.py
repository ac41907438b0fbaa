"""The lane, tier and tenant of Flower's tasks (``monitoring.flower_tasks``), in one
process: looked up from the job table in batches, indexed for the Tasks page's filters.
The real Flower in a browser: tests/test_browser_flower.py.
"""
from __future__ import annotations

import datetime as dt

import pytest
from celery.events.state import Task
from django.db import connection
from django.test.utils import CaptureQueriesContext

from monitoring import flower_tasks
from monitoring.flower_tasks import (
    GIVE_UP_SECONDS,
    JobLabels,
    LabelledEventsState,
    job_labels_lookup,
    task_columns,
)
from tenants.models import Tenant
from tests.test_monitoring import _job


@pytest.fixture
def tenants(db):
    return (Tenant.objects.create(name="acme", tier="premium"),
            Tenant.objects.create(name="smallco", tier="standard"))


def _flower_task(task_id: str, routing_key: str | None = None) -> dict:
    event = {"type": "task-received", "uuid": task_id, "hostname": "quick@test",
             "timestamp": 1.0, "local_received": 1.0, "clock": 1, "name": "demo.quick_task"}
    if routing_key:
        event.update(type="task-sent", routing_key=routing_key)
    return event


@pytest.mark.django_db
def test_flower_tasks_get_their_job_labels_and_the_search_filters_on_them(tenants):
    acme, smallco = tenants
    quick = _job(acme, submitted=dt.datetime.now(dt.UTC))
    slow = _job(smallco, lane="slow", tier="standard", submitted=dt.datetime.now(dt.UTC),
                task="demo.slow_task")
    not_a_job = "c0ffee00-0000-4000-8000-000000000000"
    state = LabelledEventsState(max_tasks_in_memory=100)
    for task_id in (str(quick.id), str(slow.id)):
        state.event(_flower_task(task_id))
    state.event(_flower_task(not_a_job, routing_key="slow.premium.demo.slow_task"))
    state.event(_flower_task("not-a-uuid"))
    # Every new task waits for its labels, oldest first
    batch = state.next_batch()
    assert batch == [str(quick.id), str(slow.id), not_a_job, "not-a-uuid"]
    # One query on the primary key finds the jobs among them
    with CaptureQueriesContext(connection) as queries:
        found = job_labels_lookup(batch)
    assert len(queries) == 1
    assert found == {str(quick.id): JobLabels("quick", "premium", "acme"),
                     str(slow.id): JobLabels("slow", "standard", "smallco")}
    state.apply_labels(batch, found, now=0.0)
    assert state.tasks[str(quick.id)].job_labels == JobLabels("quick", "premium", "acme")
    # Those not found are asked again, until they get their routing key's labels
    assert state.next_batch() == [not_a_job, "not-a-uuid"]
    state.apply_labels([not_a_job, "not-a-uuid"], {}, now=GIVE_UP_SECONDS + 1e9)
    assert state.tasks[not_a_job].job_labels == JobLabels("slow", "premium", "")
    assert state.next_batch() == []
    # The exact index filters every task Flower holds
    engine = state.search_engine
    assert engine.labelled(lane="slow") == {str(slow.id), not_a_job}
    assert engine.labelled(lane="slow", tier="standard") == {str(slow.id)}
    assert engine.labelled(tenant="acme") == {str(quick.id)}
    assert engine.labelled(tenant="nobody") == set()
    assert engine.labelled(lane="", tier="", tenant="") is None
    assert engine.values("tenant") == ["acme", "smallco"]
    # ... and forgets a task Flower evicts
    engine.remove(str(quick.id))
    assert engine.labelled(tenant="acme") == set()


def test_label_columns_follow_flowers_setting():
    assert task_columns("name,uuid,state,lane,tier,tenant,received,nonsense") == [
        ("name", "Name"), ("uuid", "UUID"), ("state", "State"), ("lane", "Lane"),
        ("tier", "Tier"), ("tenant", "Tenant"), ("received", "Received")]


def test_a_task_that_is_no_job_and_has_no_routing_key_gets_empty_labels():
    assert flower_tasks.labels_from_routing_key(Task("x")) == JobLabels()

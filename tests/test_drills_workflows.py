"""Workflow drills on real workers, two dispatchers and RabbitMQ, counted from the job
table and the workers' witness logs (tests/drills.py): a 200-step DAG under SIGKILL of
pool processes, of a whole worker and of a dispatcher; a cancel during a run."""
from __future__ import annotations

import subprocess
import time

import pytest
from django.db import transaction
from django.db.models import Max

from jobs.models import Job, Workflow, WorkflowStep
from jobs.workflow_submission import StepSpec, check_graph, workflow_submit
from jobs.workflows import workflow_cancel
from tenants.models import Tenant
from tests import drills
from tests.processes import wait_until
from tests.test_drills_broker import pool_children
from tests.test_lanes import start_lane

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers]


def diamond_dag(width: int, seconds: float) -> list[StepSpec]:
    """root -> ``width`` fan-out steps -> ``width`` steps each joining two neighbours ->
    one sink: ``2 * width + 2`` steps of ``demo.witness``."""
    params = {"seconds": seconds}
    steps = [StepSpec(name="root", task="demo.witness", params=params, where="root")]
    steps += [StepSpec(name=f"a{i}", task="demo.witness", params=params, depends_on=["root"],
                       where=f"a{i}") for i in range(width)]
    steps += [StepSpec(name=f"b{i}", task="demo.witness", params=params,
                       depends_on=[f"a{i}", f"a{(i + 1) % width}"], where=f"b{i}")
              for i in range(width)]
    steps.append(StepSpec(name="sink", task="demo.witness", params=params,
                          depends_on=[f"b{i}" for i in range(width)], where="sink"))
    check_graph(steps)
    return steps


def submit(tenant: Tenant, steps: list[StepSpec]) -> Workflow:
    with transaction.atomic():
        return workflow_submit(tenant=tenant, steps=steps)


def started_after_upstreams(workflow: Workflow) -> list[str]:
    """Steps whose job started before one of the steps it depends on had ended."""
    ends = dict(Job.objects.filter(workflow=workflow).values_list("step__name", "finished_at"))
    starts = dict(Job.objects.filter(workflow=workflow).values_list("step__name", "started_at"))
    early = []
    for name, depends_on in WorkflowStep.objects.filter(workflow=workflow).values_list(
            "name", "depends_on"):
        if depends_on and starts[name] < max(ends[d] for d in depends_on):
            early.append(name)
    return early


def test_a_200_step_dag_finishes_exactly_once_through_sigkills(start_role, management,
                                                               witness_dir):
    tenant = Tenant.objects.create(name="dagdrill", tier="premium")
    env = {"SWITCHYARD_WITNESS_DIR": str(witness_dir)}
    dispatchers = [start_role("dispatcher"), start_role("dispatcher")]
    worker = start_lane(start_role, management, "quick", 4, **env)
    started = time.monotonic()
    workflow = submit(tenant, diamond_dag(99, 0.15))
    ids = list(Job.objects.filter(workflow=workflow).values_list("id", flat=True))
    assert len(ids) == 200
    done = lambda: Job.objects.filter(workflow=workflow, status="succeeded").count()  # noqa: E731
    kills = []
    # While the fan-out runs, a pool process dies mid-task (the OOM killer)...
    wait_until(lambda: done() >= 20, 120, "the fan-out to run", interval=0.1,
               roles=[worker, *dispatchers])
    children = wait_until(lambda: (c := pool_children(worker.proc.pid)) and len(c) == 4 and c,
                          30, "four live pool processes")
    subprocess.run(["kill", "-KILL", str(children[0])], check=True)
    kills.append("a pool process")
    # ... then one dispatcher is SIGKILLed and started again ...
    wait_until(lambda: done() >= 60, 120, "progress", interval=0.1, roles=[worker])
    dispatchers[0].proc.send_signal(9)
    dispatchers[0].proc.wait(10)
    dispatchers[0] = start_role("dispatcher")
    kills.append("a dispatcher")
    # ... and, in the fan-in, the whole worker (the machine lost); a new one starts.
    wait_until(lambda: done() >= 120, 120, "the fan-in to run", interval=0.1,
               roles=[worker, *dispatchers])
    worker.proc.send_signal(9)
    for child in pool_children(worker.proc.pid):
        subprocess.run(["kill", "-KILL", str(child)])
    worker.proc.wait(10)
    kills.append("a whole worker")
    worker = start_lane(start_role, management, "quick", 4, **env)
    # Every step ends, in dependency order, and the workflow with them.
    wait_until(lambda: Workflow.objects.get(id=workflow.id).status != "running", 600,
               "the workflow to finish", interval=0.5, roles=[worker, *dispatchers])
    figures = drills.record(drills.count(
        "workflow-dag-kills", submitted=200, job_ids=ids, witness_dir=witness_dir,
        started=started, recovered=Job.objects.filter(id__in=ids, attempts__gt=1).count(),
        left=sum(drills.left_in_queues().values()), notes="; ".join(kills)))
    workflow.refresh_from_db()
    assert (workflow.status, workflow.open_steps) == ("succeeded", 0)
    assert (figures.lost, figures.executed, figures.left_in_queues) == (0, 200, 0)
    # Each step's successors were released once: none started before all it waits for
    # ended, none is still waiting for anything, each step counted once.
    assert started_after_upstreams(workflow) == []
    assert not WorkflowStep.objects.filter(workflow=workflow, waiting_for__gt=0).exists()
    assert WorkflowStep.objects.filter(workflow=workflow, outcome="succeeded").count() == 200
    # Runs the kills cut short ran again; at most the runs in flight at each kill twice.
    assert figures.duplicated <= 2 * 4


def test_nothing_not_yet_started_starts_after_a_cancel(start_role, management, witness_dir):
    tenant = Tenant.objects.create(name="canceldrill", tier="premium")
    env = {"SWITCHYARD_WITNESS_DIR": str(witness_dir)}
    roles = [start_role("dispatcher"), start_lane(start_role, management, "quick", 2, **env)]
    workflow = submit(tenant, diamond_dag(20, 0.3))
    wait_until(lambda: Job.objects.filter(workflow=workflow, status="succeeded").count() >= 6,
               120, "the fan-out to run", interval=0.05, roles=roles)
    outcome = workflow_cancel(workflow=workflow)
    cancelled_at = Workflow.objects.get(id=workflow.id).cancelled_at
    wait_until(lambda: Workflow.objects.get(id=workflow.id).status == "cancelled", 60,
               "the running steps to end", interval=0.1, roles=roles)
    time.sleep(2)  # what a stale message or a late release would start, it would by now
    started_late = Job.objects.filter(workflow=workflow, started_at__gt=cancelled_at).count()
    cancelled = set(map(str, Job.objects.filter(workflow=workflow, status="cancelled")
                        .values_list("id", flat=True)))
    runs = drills.witnessed_runs(witness_dir)
    assert outcome.cancelled == len(cancelled) > 0
    assert started_late == 0
    assert not cancelled & set(runs)  # no cancelled step ever ran
    last_end = Job.objects.filter(workflow=workflow).aggregate(m=Max("finished_at"))["m"]
    assert last_end >= cancelled_at
    assert Job.objects.filter(workflow=workflow, status="succeeded").count() + len(cancelled) \
        == 42

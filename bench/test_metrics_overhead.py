"""Metrics overhead on worker throughput: no-op tasks with and without metrics.

Run with ``make bench-metrics`` (figures, not assertions; never part of ``make test``).
Each run queues N ``demo.quick_task`` jobs with no worker running, then starts a
quick-lane worker (concurrency 2) and measures tasks per second from the first
start to the last finish (job table timestamps, so worker start-up is not
counted). Runs alternate between metrics on (recording into a multiprocess
directory) and off (``SWITCHYARD_METRICS_ENABLED=false``). Writes
``var/bench/metrics.json``.

``SWITCHYARD_BENCH_QUICK=1``: 300 tasks, one run each way (under a minute);
otherwise ``BENCH_METRICS_TASKS`` (default 5000) and ``BENCH_METRICS_RUNS`` (3).
"""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest
from django.db.models import Max, Min

from jobs.bulk import BulkJob, job_submit_bulk
from jobs.models import Job
from tenants.models import Tenant
from tests.processes import wait_until
from tests.test_lanes import start_lane

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers]

QUICK = os.environ.get("SWITCHYARD_BENCH_QUICK", "").lower() in {"1", "true", "yes"}
TASKS = 300 if QUICK else int(os.environ.get("BENCH_METRICS_TASKS", "5000"))
RUNS = 1 if QUICK else int(os.environ.get("BENCH_METRICS_RUNS", "3"))
CONCURRENCY = 2
OUT = Path(__file__).resolve().parents[1] / "var" / "bench" / "metrics.json"


def one_run(start_role, management, tenant, enabled: bool, metrics_dir: Path) -> float:
    Job.objects.all().delete()
    job_submit_bulk(tenant=tenant, enforce_quotas=False,
                    jobs=[BulkJob(task="demo.quick_task", params={"x": i}) for i in range(TASKS)])
    env = {"SWITCHYARD_METRICS_ENABLED": "true" if enabled else "false",
           "SWITCHYARD_METRICS_DIR": str(metrics_dir) if enabled else ""}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        worker = start_lane(start_role, management, "quick", CONCURRENCY)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    wait_until(lambda: Job.objects.filter(status=Job.Status.SUCCEEDED).count() == TASKS,
               600, f"{TASKS} no-op tasks", roles=[worker], interval=0.2)
    worker.stop()
    span = Job.objects.aggregate(first=Min("started_at"), last=Max("finished_at"))
    return TASKS / (span["last"] - span["first"]).total_seconds()


def test_metrics_overhead(start_role, management, tmp_path):
    tenant = Tenant.objects.create(name="bench-metrics", tier="premium",
                                   submissions_per_minute=10_000_000, max_queued_jobs=10_000_000)
    rates: dict[str, list[float]] = {"with_metrics": [], "without_metrics": []}
    for i in range(RUNS):
        order = (True, False) if i % 2 == 0 else (False, True)
        for enabled in order:
            rate = one_run(start_role, management, tenant, enabled, tmp_path / f"metrics-{i}")
            rates["with_metrics" if enabled else "without_metrics"].append(round(rate, 1))
    with_m = statistics.median(rates["with_metrics"])
    without = statistics.median(rates["without_metrics"])
    result = {
        "tasks_per_run": TASKS, "runs": RUNS, "worker_concurrency": CONCURRENCY,
        "quick_mode": QUICK, "tasks_per_second": rates,
        "median_with_metrics": with_m, "median_without_metrics": without,
        "overhead_percent": round((without - with_m) / without * 100, 1),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print("\nno-op tasks/s (quick lane, concurrency 2):",
          f"with metrics {with_m}, without {without}, overhead {result['overhead_percent']} %",
          f"\nruns: {rates}")

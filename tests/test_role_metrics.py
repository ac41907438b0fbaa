"""Each worker process group, the dispatcher and beat serve ``/metrics`` on their own port
when ``SWITCHYARD_METRICS_PORT`` is set (monitoring/exporter.py): real role scripts,
scraped over HTTP as Prometheus would.
"""
from __future__ import annotations

import re
import socket
import urllib.request
from pathlib import Path

import pytest

from jobs.models import Job
from jobs.submission import job_submit
from tenants.models import Tenant
from tests.processes import wait_until
from tests.test_lanes import start_lane
from tests.test_monitoring import samples
from tests.test_platform import free_port

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers]


def scrape(port: int) -> tuple[str, str] | None:
    """``(content type, body)`` of the port's /metrics, or None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return answer.headers["Content-Type"], answer.read().decode()
    except OSError:
        return None


def test_a_workers_port_serves_the_sum_of_its_pool_processes(start_role, management,
                                                              tmp_path: Path):
    # Given a slow worker with two pool processes, serving its metrics on a port, on a host
    # whose other roles record into a shared directory
    shared = tmp_path / "metrics"
    port = free_port()
    worker = start_lane(start_role, management, "slow", 2, SWITCHYARD_METRICS_PORT=str(port),
                        SWITCHYARD_METRICS_DIR=str(shared))
    tenant = Tenant.objects.create(name="acme", tier="premium")

    # When four jobs run, two at a time, one in each pool process
    jobs = [job_submit(tenant=tenant, task="demo.slow_task", params={"seconds": 0.6})[0]
            for _ in range(4)]
    wait_until(lambda: Job.objects.filter(id__in=[j.id for j in jobs],
                                          status=Job.Status.SUCCEEDED).count() == 4,
               60, "four slow jobs to succeed", roles=[worker])

    # Then the worker's port answers in Prometheus' text format with all four, summed over
    # the pool processes that ran them (each wrote its own file)
    content_type, text = wait_until(lambda: scrape(port), 10, "the worker's metrics port",
                                    roles=[worker])
    assert content_type.startswith("text/plain")
    found = samples(text)
    labels = (("lane", "slow"), ("task", "demo.slow_task"), ("tier", "premium"))
    assert found[("switchyard_jobs_started_total", labels)] == 4
    assert found[("switchyard_jobs_succeeded_total", labels)] == 4
    assert found[("switchyard_job_run_seconds_count", labels[:1] + labels[2:])] == 4
    group = shared / f"role-{port}"
    writers = {re.sub(r"^\w+?_(\d+)\.db$", r"\1", p.name) for p in group.glob("counter_*.db")}
    assert len(writers) >= 2, sorted(p.name for p in group.iterdir())
    # And none of it is in the shared directory, which the host's web sums: each job is
    # served by one target only
    assert list(shared.glob("*.db")) == []


def test_the_dispatcher_and_beat_serve_their_own_port(start_role, tmp_path: Path):
    ports = {"dispatcher": free_port(), "beat": free_port()}
    roles = [start_role(role, SWITCHYARD_METRICS_PORT=str(port),
                        SWITCHYARD_METRICS_DIR=str(tmp_path / "metrics"))
             for role, port in ports.items()]
    for (role, port), process in zip(ports.items(), roles, strict=True):
        content_type, _ = wait_until(lambda p=port: scrape(p), 60, f"{role}'s metrics port",
                                     roles=[process])
        assert content_type.startswith("text/plain"), role
        assert (tmp_path / "metrics" / f"role-{port}").is_dir(), role


def test_without_the_variable_no_role_opens_a_port(start_role, management, tmp_path: Path):
    worker = start_lane(start_role, management, "quick", 1)
    log = worker.log()
    assert "metrics on http" not in log
    assert not (tmp_path / "metrics").exists()


def test_a_web_without_a_metrics_directory_sums_its_gunicorn_workers(start_role):
    # Given a web of two gunicorn workers started with no SWITCHYARD_METRICS_DIR
    from concurrent.futures import ThreadPoolExecutor

    from tenants.services import tenant_create
    from tests.test_api_e2e import _http
    from tests.test_metrics_workload import Web

    port = free_port()
    role = start_role("web", WEB_BIND=f"127.0.0.1:{port}", WEB_WORKERS="2",
                      SWITCHYARD_METRICS_DIR="")
    wait_until(lambda: _http(f"http://127.0.0.1:{port}/healthz") == 200, 60, "web",
               roles=[role])
    web = Web(port)
    _, key = tenant_create(name="acme", tier="premium")

    # When 24 jobs are submitted four at a time (so both workers take some)
    body = {"task": "demo.quick_task", "params": {"x": 1}}
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: web.submit(key, body), range(24)))

    # Then every scrape, whichever worker answers it, counts all 24
    labels = (("lane", "quick"), ("task", "demo.quick_task"), ("tier", "premium"))
    for _ in range(6):
        assert web.metrics()[("switchyard_jobs_submitted_total", labels)] == 24


def test_a_worker_whose_metrics_port_is_taken_stops_saying_so(start_role):
    # Given the port already held by another process on the host
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        worker = start_role("worker", "quick", SWITCHYARD_METRICS_PORT=str(port),
                            SWITCHYARD_METRICS_ADDRESS="127.0.0.1")
        # Then the worker exits, naming the port, rather than run with no metrics
        wait_until(lambda: worker.proc.poll() is not None, 60, "the worker to exit")
    assert worker.proc.returncode != 0
    assert f"cannot serve metrics on 127.0.0.1:{port}" in worker.log()

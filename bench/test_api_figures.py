"""Job API figures: single-submit latency over HTTP and 100,000-item batch acceptance.

Run with ``make bench-api`` (not part of ``make test``: figures are measured,
never asserted). The web runs as in production (gunicorn, 2 workers, publisher
confirms, PostgreSQL); the client is one keep-alive HTTP connection, requests
one after another. Prints a table and writes ``var/bench/api.json``.
"""
from __future__ import annotations

import http.client
import json
import os
import statistics
import time
from pathlib import Path

import pytest

from jobs.models import Job
from tenants.models import Tenant
from tenants.services import tenant_create
from tests.processes import wait_until
from tests.test_api_e2e import _http
from tests.test_lanes import start_lane
from tests.test_platform import free_port

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers]

SUBMITS = int(os.environ.get("BENCH_SUBMITS", "1000"))
BATCH_ITEMS = int(os.environ.get("BENCH_BATCH_ITEMS", "100000"))
BATCH_RUNS = int(os.environ.get("BENCH_BATCH_RUNS", "3"))
OUT = Path(__file__).resolve().parents[1] / "var" / "bench" / "api.json"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def post(conn: http.client.HTTPConnection, path: str, body: bytes, key: str) -> tuple[int, float]:
    started = time.perf_counter()
    conn.request("POST", path, body=body, headers={"Authorization": f"Token {key}",
                                                   "Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    return resp.status, time.perf_counter() - started


def test_api_figures(start_role, management):
    tenant, key = tenant_create(name="bench", tier="premium")
    Tenant.objects.filter(id=tenant.id).update(max_queued_jobs=10_000_000,
                                               submissions_per_minute=1_000_000)
    port = free_port()
    web = start_role("web", WEB_BIND=f"127.0.0.1:{port}", WEB_WORKERS="2")
    wait_until(lambda: _http(f"http://127.0.0.1:{port}/healthz") == 200, 60, "web", roles=[web])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    for _ in range(50):  # warm both gunicorn workers' connections
        post(conn, "/api/v1/jobs", json.dumps({"task": "demo.quick_task"}).encode(), key)
    latencies = []
    for i in range(SUBMITS):
        body = json.dumps({"task": "demo.quick_task", "params": {"x": i}}).encode()
        code, took = post(conn, "/api/v1/jobs", body, key)
        assert code == 202
        latencies.append(took * 1000)
    published = Job.objects.filter(published_at__isnull=False, task="demo.quick_task").count()

    items = [{"data": f"s3://media/uploads/2026/11/{i:08d}.jpg"} for i in range(BATCH_ITEMS)]
    batch_body = json.dumps({"task": "demo.checksum", "items": items}).encode()
    accepts, batch_ids = [], []
    for _ in range(BATCH_RUNS):
        conn.request("POST", "/api/v1/batches", body=batch_body, headers={
            "Authorization": f"Token {key}", "Content-Type": "application/json"})
        started = time.perf_counter()
        resp = conn.getresponse()
        payload = json.loads(resp.read())
        accepts.append(time.perf_counter() - started)
        assert resp.status == 202, payload
        batch_ids.append(payload["id"])

    # Complete the last batch: dispatcher publishes the chunks, one quick worker runs them.
    Job.objects.filter(batch_id__in=batch_ids[:-1]).update(status="cancelled")
    started = time.perf_counter()
    roles = [start_role("dispatcher"), start_lane(start_role, management, "quick", 2)]
    wait_until(lambda: not Job.objects.filter(batch_id=batch_ids[-1],
                                              status__in=("queued", "started")).exists()
               and not Job.objects.filter(task="demo.quick_task", status="queued").exists(),
               900, "the batch to complete", interval=0.5, roles=roles)
    completed = time.perf_counter() - started

    figures = {
        "cores": os.cpu_count(),
        "submits": SUBMITS,
        "submit_ms": {"p50": percentile(latencies, 50), "p90": percentile(latencies, 90),
                      "p99": percentile(latencies, 99), "max": max(latencies),
                      "mean": statistics.fmean(latencies)},
        "published_by_web": published,
        "batch_items": BATCH_ITEMS,
        "batch_body_bytes": len(batch_body),
        "batch_accept_s": {"runs": accepts, "median": statistics.median(accepts)},
        "batch_complete_s": completed,
        "batch_items_per_s": BATCH_ITEMS / completed,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=2))
    s = figures["submit_ms"]
    print(f"\n\nJob API figures ({figures['cores']} cores, gunicorn 2 workers, PostgreSQL, "
          "RabbitMQ with publisher confirms)")
    print(f"{'measure':<46}{'value':>14}")
    rows = [
        (f"single submit, {SUBMITS} sequential: p50 ms", f"{s['p50']:.1f}"),
        ("single submit: p90 ms", f"{s['p90']:.1f}"),
        ("single submit: p99 ms", f"{s['p99']:.1f}"),
        ("single submit: max ms", f"{s['max']:.1f}"),
        ("jobs published by the web before answering", f"{published}/{SUBMITS + 50}"),
        (f"{BATCH_ITEMS}-item batch ({len(batch_body) / 1e6:.1f} MB): accept median s",
         f"{figures['batch_accept_s']['median']:.2f}"),
        ("batch accept runs s", " ".join(f"{a:.2f}" for a in accepts)),
        ("batch completed (dispatch + 1 worker x2) s", f"{completed:.1f}"),
        ("batch items/s", f"{figures['batch_items_per_s']:.0f}"),
    ]
    for name, value in rows:
        print(f"{name:<46}{value:>14}")

"""Benchmarks run on the test fixtures (their own vhost, database and role
processes), plus the baseline's plain Celery workers; the table is printed
when the run ends."""
from __future__ import annotations

import os
import sys

import pytest
from kombu import Connection

from bench import harness
from tests.conftest import *  # noqa: F403
from tests.processes import Role, role_env


@pytest.fixture
def plain_worker(lanes_empty, tmp_path):
    """Start plain Celery workers: ``plain_worker(concurrency=2, priority=True, ...)``.

    Returns ``(proc, app, timings_path)``; the app submits from this process with
    the same settings. The queue is deleted afterwards.
    """
    from bench.plain_celery import make_app

    started: list[tuple[Role | None, str]] = []

    def start(*, concurrency: int = 2, priority: bool = False, acks_late: bool = False,
              prefetch: int = 4, queue: str = "plain", events: bool = False,
              start_worker: bool = True, results: str = ""):
        timings = tmp_path / f"{queue}-timings.txt"
        env = role_env(lanes_empty, PLAIN_QUEUE=queue, PLAIN_PRIORITY="1" if priority else "",
                       PLAIN_ACKS_LATE="1" if acks_late else "", PLAIN_PREFETCH=str(prefetch),
                       PLAIN_TIMINGS=str(timings), PLAIN_RESULTS=results,
                       PYTHONPATH=str(harness.REPO))
        env.pop("DJANGO_SETTINGS_MODULE")  # plain Celery: no Django, no Switchyard
        app = make_app(broker_url=lanes_empty, queue=queue, priority=priority,
                       acks_late=acks_late, prefetch=prefetch, results=results)
        with app.connection_for_write() as conn:  # declared before anything is sent
            app.amqp.queues[queue].bind(conn.default_channel).declare()
        proc = None
        if start_worker:
            argv = [sys.executable, "-m", "celery", "-A", "bench.plain_celery", "worker",
                    "-Q", queue, "-c", str(concurrency), "-P", "prefork", "-l", "WARNING",
                    "--without-mingle", "--without-gossip", "-n", f"{queue}@%h"]
            if events:
                argv.append("-E")
            proc = Role(f"plain-{queue}-{len(started)}", [], env, tmp_path, command=argv)
            started.append((proc, queue))
        else:
            started.append((None, queue))
        return proc, app, timings

    yield start
    for proc, _ in reversed(started):
        if proc is not None:
            proc.stop()
    with Connection(lanes_empty) as conn:
        for _, queue in started:
            try:
                conn.default_channel.queue_delete(queue)
            except Exception:  # already gone
                pass


def pytest_sessionfinish(session, exitstatus):
    harness.report()


def pytest_configure(config):
    os.environ.setdefault("SWITCHYARD_LOG_LEVEL", "WARNING")


@pytest.fixture
def role_env_defaults() -> dict[str, str]:
    """Production's database connection reuse for every role (the tests close
    connections after each task so a test database can be dropped at once; a
    benchmark measures what production runs)."""
    return {"DATABASE_CONN_MAX_AGE": "60"}


@pytest.fixture(autouse=True)
def _production_quota_counts(settings):
    """Submissions made in the benchmark's own process count quotas as production
    does (the test settings re-read them on every submission)."""
    settings.SWITCHYARD_QUOTA_COUNT_TTL = 1.0

"""The embedded default (SQLite, ``DATABASE_URL`` unset) under the platform's own load.

``make run`` without ``DATABASE_URL`` keeps the job table in one SQLite file, written by
every role at once: the web's gunicorn processes, both lanes' workers and the dispatcher.
These tests run exactly those roles on a fresh, migrated SQLite file of their own (the rest
of the suite runs on PostgreSQL) against the run's RabbitMQ vhost, and hold the platform
to what docs/reliability.md promises for this mode: concurrent submissions never answer
5xx for a lock, a lock held for longer than the busy timeout is a 503 with ``Retry-After``
(never a 500), and every accepted job ends in a final state.
"""
from __future__ import annotations

import collections
import json
import logging
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from jobs.models import Job
from tests.drills import left_in_queues
from tests.processes import REPO, role_env, wait_until
from tests.test_platform import free_port, http_status

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers]
logging.getLogger("pika").setLevel(logging.WARNING)

#: The steady load: submitting threads, seconds, and submissions per second in all.
THREADS = 6
SECONDS = 20.0
RATE = 36.0
#: Seconds a statement waits for SQLite's write lock (the roles' base settings).
BUSY_TIMEOUT = settings.SQLITE_BUSY_TIMEOUT


def manage(env: dict[str, str], *args: str) -> str:
    """``manage.py ARGS`` on the SQLite file; its standard output."""
    done = subprocess.run([sys.executable, "platform/manage.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture
def sqlite_platform(start_role, lanes_empty, tmp_path: Path):
    """Web (2 gunicorn workers), both lanes' workers and a dispatcher on a migrated SQLite
    file of their own: ``(port, {tier: token}, database path, roles, role environment)``."""
    path = tmp_path / "switchyard.sqlite3"
    # DATABASE_CONN_MAX_AGE as `make run` has it (role_env's 0 would reconnect per request).
    env = {"DATABASE_URL": f"sqlite:///{path}", "DATABASE_CONN_MAX_AGE": "60"}
    setup = role_env(lanes_empty, **env)
    manage(setup, "migrate", "--noinput", "--verbosity", "0")
    tokens = {tier: manage(setup, "create_tenant", f"sqlite-{tier}", "--tier", tier)
              .strip().splitlines()[-1] for tier in ("premium", "standard")}
    port = free_port()
    roles = [start_role("web", WEB_BIND=f"127.0.0.1:{port}", WEB_WORKERS="2", **env),
             start_role("worker", "quick", **env), start_role("worker", "slow", **env),
             start_role("dispatcher", **env)]
    wait_until(lambda: http_status(f"http://127.0.0.1:{port}/healthz") == 200, 60, "the web",
               roles=roles)
    return port, tokens, path, roles, env


def post_job(port: int, token: str, body: dict) -> tuple[int, dict, dict]:
    """One ``POST /api/v1/jobs``: ``(status, JSON body, headers)``; status 0 when no HTTP
    answer came at all."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/jobs", method="POST", data=json.dumps(body).encode(),
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            answer = json.loads(text)
        except ValueError:
            answer = {"raw": text[:300]}
        return exc.code, answer, dict(exc.headers)
    except OSError as exc:
        return 0, {"error": repr(exc)}, {}


def job_statuses(path: Path) -> dict[str, str]:
    """Every job of the SQLite file, ``{id: status}``, read beside the platform."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
        return {str(uuid.UUID(row[0])): row[1]
                for row in db.execute("SELECT id, status FROM jobs_job")}


class SteadyLoad:
    """``THREADS`` threads submitting ``RATE`` jobs per second in all, for ``SECONDS``:
    quick and slow tasks (one in six slow), premium and standard tenants in turn."""

    def __init__(self, port: int, tokens: dict[str, str]) -> None:
        self.port, self.tokens = port, tokens
        self.answers: list[tuple[int, dict, float]] = []
        self._lock = threading.Lock()

    def _run(self, thread: int) -> None:
        interval = THREADS / RATE
        began = time.monotonic()
        n = 0
        while (due := began + n * interval) < began + SECONDS:
            time.sleep(max(0.0, due - time.monotonic()))
            k = n * THREADS + thread
            tier = ("premium", "standard")[k % 2]
            body = ({"task": "demo.slow_task", "params": {"seconds": 0.05}} if k % 6 == 1
                    else {"task": "demo.quick_task", "params": {"x": k}})
            sent = time.monotonic()
            status, answer, _ = post_job(self.port, self.tokens[tier], body)
            with self._lock:
                self.answers.append((status, answer, time.monotonic() - sent))
            n += 1

    def run(self) -> SteadyLoad:
        threads = [threading.Thread(target=self._run, args=(t,)) for t in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(SECONDS + 120)
        return self


def test_sqlite_holds_a_steady_rest_load_with_no_5xx_and_nothing_lost(sqlite_platform):
    port, tokens, path, roles, _ = sqlite_platform
    started = time.monotonic()

    # When several clients submit quick and slow jobs of both tiers at RATE per second
    load = SteadyLoad(port, tokens).run()

    codes = collections.Counter(status for status, _, _ in load.answers)
    refused = [f"{status}: {str(answer)[:120]}" for status, answer, _ in load.answers
               if status != 202]
    accepted = {answer["id"] for status, answer, _ in load.answers if status == 202}

    def unfinished() -> set[str]:
        statuses = job_statuses(path)
        return {i for i in accepted if statuses.get(i) not in Job.FINISHED}

    # (waited for before asserting, so a failure reports both what was refused and lost)
    deadline = time.monotonic() + 90
    while (left := unfinished()) and time.monotonic() < deadline:
        for role in roles:
            role.assert_running()
        time.sleep(0.5)
    statuses = job_statuses(path)
    print(f"sqlite load: {len(load.answers)} submissions in {SECONDS:g} s by {THREADS} threads, "
          f"answers {dict(codes)}, slowest {max(t for _, _, t in load.answers):.2f} s; "
          f"accepted jobs {dict(collections.Counter(statuses.get(i) for i in accepted))}, "
          f"{len(left)} unfinished; {time.monotonic() - started:.1f} s in all")

    # Then every request got an answer, and none of them a 5xx
    assert len(load.answers) >= 0.9 * RATE * SECONDS
    assert not [r for r in refused if r.startswith(("0:", "5"))], refused[:3]
    assert codes[202] == len(load.answers), refused[:3]
    # And every accepted job ended in a final state, succeeded: nothing was lost
    assert not left, sorted(left)[:5]
    assert collections.Counter(statuses[i] for i in accepted) == {
        Job.Status.SUCCEEDED: len(accepted)}


def test_sqlite_lock_held_past_the_busy_timeout_is_503_and_requeues(sqlite_platform,
                                                                    start_role, lanes_empty):
    port, tokens, path, roles, env = sqlite_platform
    web, quick, slow, dispatcher = roles
    body = {"task": "demo.quick_task", "params": {"x": 1}}
    # Given a job waiting in the quick queue, its lane's worker stopped
    quick.stop()
    status, waiting, _ = post_job(port, tokens["premium"], body)
    assert status == 202, waiting

    # And another process holding the SQLite write lock past the busy timeout
    holder = sqlite3.connect(path, timeout=10, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        # When a job is submitted
        sent = time.monotonic()
        status, answer, headers = post_job(port, tokens["premium"], body)
        took = time.monotonic() - sent
        # Then it is refused as unavailable, with Retry-After, about the busy timeout later
        assert status == 503, (status, answer)
        assert int(headers["Retry-After"]) > 0
        assert set(answer) == {"detail"} and "database" in answer["detail"]
        assert "locked" not in answer["detail"] and "sqlite" not in answer["detail"].lower()
        assert took < 15, took
        # (reads still answer while a writer holds the lock: WAL)
        assert http_status(f"http://127.0.0.1:{port}/healthz") == 200

        # When a worker of the lane starts and is handed the waiting job's message
        quick = start_role("worker", "quick", name="worker-quick-again", **env)
        wait_until(lambda: left_in_queues(lanes_empty)["quick"] == 0, 60,
                   "the worker to take the waiting job's message", roles=[quick])
        # ... while the lock is held for longer than it waits to record the start
        time.sleep(BUSY_TIMEOUT + 2)
        quick.assert_running()
        dispatcher.assert_running()
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    # Then once the lock is released the waiting job runs (its message was put back, not
    # dropped), and submissions are accepted again
    status, answer, _ = post_job(port, tokens["premium"], body)
    assert status == 202, answer
    wait_until(lambda: {job_statuses(path).get(i) for i in (waiting["id"], answer["id"])}
               == {Job.Status.SUCCEEDED}, 30, "both accepted jobs to run",
               roles=[web, quick, dispatcher])
    # Nothing was recorded for the refused submission
    assert len(job_statuses(path)) == 2
    assert "goes back to the queue" in quick.log_path.read_text()

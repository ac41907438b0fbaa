"""The bench smoke run (``python -m bench --quick``), started in the background of a test
session that selects ``tests/test_bench_smoke.py``.

It runs for minutes, mostly waiting on its own role processes, in its own vhost and
database: started as the session begins (``tests/conftest.py``), it overlaps the rest of
the suite, and the smoke test at the end only checks what it produced. Tests marked
``exclusive`` (they stop the broker or the database, or change a broker setting for the
whole node) run after it, once it has ended.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.processes import REPO

SMOKE_TEST = ("tests/test_bench_smoke.py::"
              "test_quick_bench_prints_and_writes_the_table_for_every_scenario")


@dataclass
class Run:
    proc: subprocess.Popen
    out: Path  # BENCH_OUT: results.txt, results.json, latency.png
    log: Path  # its stdout and stderr

    def output(self) -> str:
        return self.log.read_text(errors="replace")


_run: Run | None = None


def start() -> Run:
    """Start the smoke run (once per session)."""
    global _run
    if _run is None:
        out = Path(tempfile.mkdtemp(prefix="switchyard-bench-smoke-"))
        env = dict(os.environ, BENCH_OUT=str(out))
        env.pop("SWITCHYARD_TEST_RUN_ID", None)  # its own vhost and database, not this run's
        log = out / "bench.log"
        with open(log, "wb") as sink:
            proc = subprocess.Popen([sys.executable, "-m", "bench", "--quick"], cwd=REPO,
                                    env=env, stdout=sink, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        _run = Run(proc, out, log)
    return _run


def wait(timeout: float) -> Run | None:
    """Wait for the smoke run to end, if one was started; it is stopped after ``timeout``."""
    if _run is not None and _run.proc.poll() is None:
        try:
            _run.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop()
    return _run


def stop() -> None:
    """Stop a smoke run still going (the session ended first): SIGINT lets its fixtures
    stop its roles and drop its vhost and database; SIGKILL a minute later."""
    if _run is None or _run.proc.poll() is not None:
        return
    os.killpg(_run.proc.pid, signal.SIGINT)
    try:
        _run.proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(_run.proc.pid, signal.SIGKILL)
        _run.proc.wait(10)

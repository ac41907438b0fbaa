"""``python -m bench --quick`` runs every scenario and produces its table,
JSON and chart. A smoke test: no timing is checked (the machine is shared)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.__main__ import SCENARIOS
from tests.processes import REPO

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers]


def test_quick_bench_prints_and_writes_the_table_for_every_scenario(tmp_path, broker_vhost):
    env = dict(os.environ, BENCH_OUT=str(tmp_path))
    env.pop("SWITCHYARD_TEST_RUN_ID", None)  # its own vhost and database, not this run's
    run = subprocess.run([sys.executable, "-m", "bench", "--quick"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    table = (tmp_path / "results.txt").read_text()
    assert "quick smoke run" in table and "cores" in table
    assert table in run.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert {row["scenario"] for row in results["rows"]} == set(SCENARIOS)
    for row in results["rows"]:
        assert row["switchyard"] is not None or row["baseline"] is not None, row
    assert results["machine"]["cores"] == os.cpu_count()
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

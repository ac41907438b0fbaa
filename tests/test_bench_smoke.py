"""``python -m bench --quick`` runs every scenario and produces its table,
JSON and chart. A smoke test: no timing is checked (the machine is shared).

The run is started in the background as the session begins (``tests/background_bench.py``)
and this test, ordered after the others, checks what it produced."""
from __future__ import annotations

import json
import os

import pytest

from bench.__main__ import SCENARIOS
from tests import background_bench

pytestmark = [pytest.mark.rabbitmq, pytest.mark.workers]


@pytest.mark.timeout(1600)
def test_quick_bench_prints_and_writes_the_table_for_every_scenario(broker_vhost):
    run = background_bench.start()  # the run the session began with (or one of its own)
    background_bench.wait(timeout=1500)
    output = run.output()
    assert run.proc.returncode == 0, output[-9000:]
    table = (run.out / "results.txt").read_text()
    assert "quick smoke run" in table and "cores" in table
    assert table in output
    results = json.loads((run.out / "results.json").read_text())
    assert {row["scenario"] for row in results["rows"]} == set(SCENARIOS)
    for row in results["rows"]:
        assert row["switchyard"] is not None or row["baseline"] is not None, row
    assert results["machine"]["cores"] == os.cpu_count()
    assert (run.out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""``python -m bench [--quick] [--only S1,S4]``: run the benchmark scenarios.

Each scenario runs Switchyard and its baseline one after the other in this
run's own vhost and database, then one table is printed and written to
``var/bench/results.{txt,json}`` with the chart ``var/bench/latency.png``.
``--quick`` scales every scenario down (the CI smoke run: it checks the table
is produced, never a timing).
"""
from __future__ import annotations

import argparse
import os
import sys

import pytest

SCENARIOS = ("S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9", "S10", "S11")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="scaled-down smoke run")
    parser.add_argument("--only", default="", help="comma-separated scenarios, e.g. S1,S3")
    args = parser.parse_args(argv)
    if args.quick:
        os.environ["BENCH_QUICK"] = "1"
    selected = [s.strip().upper() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in selected if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    here = os.path.dirname(os.path.abspath(__file__))
    pytest_args = [os.path.join(here, "test_scenarios.py"), "-q", "-s", "-p", "no:cacheprovider",
                   "--timeout", "3600"]
    if selected:  # S4 and S5 are measured in one run of the workers
        tests = {s: "test_s4_s5" if s in ("S4", "S5") else f"test_{s.lower()}_" for s in selected}
        pytest_args += ["-k", " or ".join(sorted(set(tests.values())))]
    return pytest.main(pytest_args)


if __name__ == "__main__":
    sys.exit(main())

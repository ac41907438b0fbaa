"""``make test`` is CI: under ``CI=true`` a skipped test is a failed test.

The fixtures that need RabbitMQ, PostgreSQL, Chromium or faketime skip on a laptop and
fail under ``CI=true`` (tests/conftest.py); this catches every other skip, so no test
that was not run can leave ``make test`` green. ``SWITCHYARD_ALLOW_SKIPS=1`` (``make
test`` sets ``CI=true`` all the same) lets skips be skips, and the summary lists each one.

A pytest plugin without Django, so tests/test_local_services.py can run it on its own;
tests/conftest.py takes its hooks.
"""
from __future__ import annotations

import os

import pytest

TRUE = {"1", "true", "yes"}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in TRUE


def skips_allowed() -> bool:
    return os.environ.get("SWITCHYARD_ALLOW_SKIPS", "").lower() in TRUE


def skips_fail() -> bool:
    """Under CI=true, unless SWITCHYARD_ALLOW_SKIPS=1 says otherwise."""
    return in_ci() and not skips_allowed()


def _reason(report: pytest.TestReport) -> str:
    if isinstance(report.longrepr, tuple):  # (path, line, "Skipped: reason")
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    return str(report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not skips_fail():
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI=true (make test sets it): {_reason(report)}\n"
                       "Install or start what is missing (tools/local-services test), or "
                       "run SWITCHYARD_ALLOW_SKIPS=1 make test to let it skip.")


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not skips_allowed():
        return
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if not hasattr(r, "wasxfail")]
    terminalreporter.section("SWITCHYARD_ALLOW_SKIPS=1", sep="=", bold=True, yellow=True)
    terminalreporter.write_line(
        f"{len(skipped)} test(s) skipped and NOT run; without SWITCHYARD_ALLOW_SKIPS=1 "
        "make test fails on each:")
    for report in skipped:
        terminalreporter.write_line(f"  {report.nodeid}: {_reason(report)}")

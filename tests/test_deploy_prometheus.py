"""The Prometheus files, checked by Prometheus' own tool.

``promtool check rules`` parses ``deploy/prometheus/alerts.yml`` as Prometheus would load
it; ``promtool test rules`` runs ``alerts.test.yml``, in which each alert has a case where
it fires and one where it stays silent. promtool is Debian's ``prometheus`` package
(``make test`` installs it, tools/local-services): missing, it fails these tests under
``make test`` and skips them on a laptop or with ``SWITCHYARD_ALLOW_SKIPS=1``.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.skip_policy import skips_fail

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS = REPO / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERT_TESTS = PROMETHEUS / "alerts.test.yml"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is missing: apt-get install prometheus"
        if skips_fail():
            pytest.fail(message)
        pytest.skip(message)
    return found


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def alert_names() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]


def test_promtool_accepts_the_alert_rules():
    done = run_promtool("check", "rules", ALERTS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in done.stdout


def test_every_alert_fires_when_it_should_and_stays_silent_when_it_should_not():
    # Each alert is tested, with at least one evaluation expecting it to fire and one
    # expecting silence ...
    cases = [case for group in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
             for case in group["alert_rule_test"]]
    for name in alert_names():
        expectations = [bool(c.get("exp_alerts")) for c in cases if c["alertname"] == name]
        assert True in expectations, f"{name}: no case where it fires"
        assert False in expectations, f"{name}: no case where it stays silent"
    assert {c["alertname"] for c in cases} <= set(alert_names())
    # ... and promtool finds every expectation met.
    done = run_promtool("test", "rules", ALERT_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_broken_rule_or_a_wrong_expectation_fails_promtool(tmp_path: Path):
    # A typo in an expression is refused by the parser ...
    broken = tmp_path / "alerts.yml"
    broken.write_text(ALERTS.read_text().replace(
        "max by (lane, tier) (switchyard_oldest_waiting_job_age_seconds) > 600",
        "max by (lane, tier) (switchyard_oldest_waiting_job_age_seconds > 600"))
    done = run_promtool("check", "rules", broken)
    assert done.returncode != 0 and "parse error" in done.stdout + done.stderr
    # ... and a threshold changed behind the tests' back fails them.
    (tmp_path / "alerts.yml").write_text(ALERTS.read_text().replace(
        "switchyard_oldest_waiting_job_age_seconds) > 600",
        "switchyard_oldest_waiting_job_age_seconds) > 6000"))
    shutil.copy(ALERT_TESTS, tmp_path / "alerts.test.yml")
    done = run_promtool("test", "rules", tmp_path / "alerts.test.yml")
    assert done.returncode != 0 and "OldestWaitingJobTooOld" in done.stdout + done.stderr

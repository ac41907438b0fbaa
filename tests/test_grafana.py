"""The Grafana dashboard, its provisioning, and the Prometheus that feeds it in compose.

Every PromQL expression of the dashboard and of ``deploy/prometheus/alerts.yml`` must
name only metrics the platform really exports (read from a real ``/metrics`` scrape after
every kind of job event, never from a list) and must parse: the dashboard's expressions
are written into a rules file as recording rules and given to ``promtool check rules``,
Prometheus' own parser.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from django.utils import timezone

from tests.test_deploy_compose import SERVICES
from tests.test_deploy_prometheus import ALERTS, run_promtool
from tests.test_monitoring import samples

REPO = Path(__file__).resolve().parents[1]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD_PATH = GRAFANA / "dashboards" / "switchyard.json"
DASHBOARD = json.loads(DASHBOARD_PATH.read_text())
DATASOURCES = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
                             .read_text())["datasources"]
PROVIDERS = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "switchyard.yml")
                           .read_text())["providers"]
PROMETHEUS_CONFIG = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml")
                                   .read_text())

#: Grafana's own variables, given a value that Prometheus can parse.
GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)\b")
GRAFANA_VARIABLE = re.compile(r"\$\{?(\w+)\}?")
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                "unless", "bool", "offset", "inf", "nan"}


def panels() -> list[dict]:
    return [p for p in DASHBOARD["panels"] if p["type"] != "row"]


def dashboard_expressions() -> list[str]:
    return [t["expr"] for p in panels() for t in p["targets"]]


def alert_expressions() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def as_prometheus_sees_it(expr: str) -> str:
    """``expr`` with Grafana's variables replaced as Grafana would (All: ``.*``)."""
    return GRAFANA_VARIABLE.sub(".*", GRAFANA_INTERVALS.sub("5m", expr))


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: what is left once strings, label
    matchers, ranges, grouping clauses, functions and keywords are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group()
        if text[match.end():].lstrip().startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def test_metric_names_reads_selectors_only():
    assert metric_names('histogram_quantile(0.99, sum by (lane, le) (rate('
                        'x_bucket{tier="premium"}[5m]))) > 5 and on (lane) y == 1e3') == {
        "x_bucket", "y"}


@pytest.fixture
def exported(client, topology_applied, transactional_db) -> set[str]:
    """Every sample name of a real /metrics answer, once each kind of job event has been
    recorded (the counters and histograms have no series before) and a run has started
    (for the tenant shares), with the management API answering (the broker gauges)."""
    from jobs.models import Job
    from jobs.signals import job_event_send, workflow_event_send
    from monitoring.metrics import EVENTS
    from schedules.signals import schedule_event_send
    from tenants.models import Tenant

    for event in EVENTS:
        job_event_send(event, lane="quick", tier="premium", task="demo.quick_task",
                       wait=0.1, run=0.2, end_to_end=0.3)
    workflow_event_send("started", kind="steps")
    workflow_event_send("finished", kind="steps", status="succeeded")
    for event in ("fired", "skipped", "started"):
        schedule_event_send(event, task="demo.quick_task", reason="missed", lane="quick",
                            tier="premium", lateness=0.05)
    tenant = Tenant.objects.create(name="acme", tier="premium")
    now = timezone.now()
    Job.objects.create(tenant=tenant, tenant_name=tenant.name, task="demo.quick_task",
                       lane="quick", tier="premium", priority=7,
                       routing_key="quick.premium.demo.quick_task", status="started",
                       submitted_at=now, started_at=now)
    answer = client.get("/metrics")
    assert answer.status_code == 200
    found = samples(answer.content.decode())
    assert found[("switchyard_management_api_up", ())] == 1
    return {name for name, _ in found}


@pytest.mark.rabbitmq
def test_every_expression_names_only_exported_metrics(exported):
    expressions = {"dashboard": dashboard_expressions(), "alerts.yml": alert_expressions()}
    for where, exprs in expressions.items():
        assert exprs, where
        for expr in exprs:
            used = metric_names(as_prometheus_sees_it(expr))
            assert used, (where, expr)
            assert used <= exported, (where, sorted(used - exported), expr)
    # The variables' values come from an exported metric too.
    for variable in DASHBOARD["templating"]["list"]:
        (metric,) = re.fullmatch(r"label_values\((\w+), \w+\)",
                                 variable["query"]["query"]).groups()
        assert metric in exported, variable["name"]
    # The scrape did see the histograms and the per-tenant gauge the dashboard reads.
    assert {"switchyard_job_queue_wait_seconds_bucket", "switchyard_lane_tenant_share",
            "switchyard_dead_letter_messages"} <= exported


def _recording_rules(exprs: list[str]) -> dict:
    return {"groups": [{"name": "switchyard-dashboard", "rules": [
        {"record": f"switchyard_dashboard:expr_{i}", "expr": as_prometheus_sees_it(e)}
        for i, e in enumerate(exprs)]}]}


def test_every_dashboard_expression_parses(tmp_path: Path):
    # Given the dashboard's expressions as recording rules, promtool parses each
    exprs = dashboard_expressions()
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text(yaml.safe_dump(_recording_rules(exprs)))
    done = run_promtool("check", "rules", rules)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in done.stdout
    # and refuses one with a parenthesis missing
    rules.write_text(yaml.safe_dump(_recording_rules([*exprs, exprs[0].rstrip(")")])))
    done = run_promtool("check", "rules", rules)
    assert done.returncode != 0 and "parse error" in done.stdout + done.stderr


def _expressions_of(title: str) -> str:
    (panel,) = [p for p in panels() if p["title"] == title]
    return "\n".join(t["expr"] for t in panel["targets"])


def test_the_dashboard_shows_each_view_per_lane_and_tier():
    views = {
        "Runs finished per second": ["switchyard_jobs_succeeded_total",
                                     "switchyard_jobs_failed_total"],
        "Queue wait p50 / p95 / p99": ["histogram_quantile(0.5,", "histogram_quantile(0.95,",
                                       "histogram_quantile(0.99,",
                                       "switchyard_job_queue_wait_seconds_bucket"],
        "Backlog: jobs waiting": ["switchyard_jobs_waiting", "switchyard_queue_messages_ready"],
        "Oldest waiting job's age": ["switchyard_oldest_waiting_job_age_seconds"],
        "Dead letters": ["switchyard_dead_letter_messages",
                         "switchyard_jobs_dead_lettered_total"],
        "Tenant shares of each lane's starts": ["switchyard_lane_tenant_share"],
        "Workflows: running, stuck, and finished per minute by outcome": [
            "switchyard_workflows_running", "switchyard_workflows_stuck",
            "switchyard_workflows_finished_total"],
        "Schedule fires and skips per minute": ["switchyard_schedule_fires_total",
                                                "switchyard_schedule_skips_total"],
        "Schedule lateness p50 / p95 / p99": ["histogram_quantile(0.99,",
                                              "switchyard_schedule_lateness_seconds_bucket"],
    }
    for title, needles in views.items():
        text = _expressions_of(title)
        for needle in needles:
            assert needle in text, (title, needle)
    # Every expression on a metric with a tier keeps lane and tier apart (and follows the
    # dashboard's lane and tier variables); lane-only metrics keep the lane.
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert set(variables) == {"lane", "tier"}
    for panel in panels():
        for target in panel["targets"]:
            expr = target["expr"]
            if "switchyard_workflow" in expr or re.search(r"switchyard_schedule_(fires|skips)",
                                                          expr):
                # A workflow's steps run in every lane: none is its own. A schedule's fire
                # and skip counts are by task, told apart before a lane matters.
                continue
            assert 'lane=~"$lane"' in expr, (panel["title"], expr)
            if 'tier=~"$tier"' in expr:
                assert re.search(r"by \(lane, tier\b", expr), (panel["title"], expr)
                assert "{{lane}} {{tier}}" in target["legendFormat"]
            else:
                assert re.search(r"by \(lane\b", expr), (panel["title"], expr)


def test_panels_use_the_provisioned_data_source():
    (datasource,) = DATASOURCES
    assert datasource["type"] == "prometheus"
    expected = {"type": "prometheus", "uid": datasource["uid"]}
    for panel in panels():
        assert panel["datasource"] == expected, panel["title"]
        assert all(t["datasource"] == expected for t in panel["targets"]), panel["title"]
    for variable in DASHBOARD["templating"]["list"]:
        assert variable["datasource"] == expected
    assert DASHBOARD["uid"] and len({p["id"] for p in DASHBOARD["panels"]}) == len(
        DASHBOARD["panels"])


def test_grafana_and_prometheus_are_wired_into_compose():
    # Grafana: pinned by tag, provisioning and dashboards mounted read-only where the
    # provider looks, its data source pointing at the compose Prometheus
    grafana = SERVICES["grafana"]
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", grafana["image"])
    mounts = {v.split(":")[1]: v for v in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == (
        "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro")
    (provider,) = PROVIDERS
    assert mounts[provider["options"]["path"]] == (
        f"./deploy/grafana/dashboards:{provider['options']['path']}:ro")
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"
    (datasource,) = DATASOURCES
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in SERVICES
    # Prometheus: its config and rules mounted read-only, the web scraped with the token's
    # compose secret, each role on the port its SWITCHYARD_METRICS_PORT names
    prometheus = SERVICES["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    jobs = {j["job_name"]: j for j in PROMETHEUS_CONFIG["scrape_configs"]}
    (secret,) = prometheus["secrets"]
    assert jobs["switchyard-web"]["authorization"]["credentials_file"] == f"/run/secrets/{secret}"
    assert jobs["switchyard-web"]["static_configs"][0]["targets"] == [
        SERVICES["web"]["environment"]["WEB_BIND"].replace("0.0.0.0", "web")]
    # (found by DNS, so each container of a scaled service is a target of its own)
    (discovery,) = jobs["switchyard-roles"]["dns_sd_configs"]
    with_port = {name for name, s in SERVICES.items()
                 if "SWITCHYARD_METRICS_PORT" in (s.get("environment") or {})}
    assert with_port == {"dispatcher", "beat", "worker-slow", "worker-quick"}
    assert discovery["type"] == "A" and set(discovery["names"]) == with_port
    assert {SERVICES[name]["environment"]["SWITCHYARD_METRICS_PORT"] for name in with_port} == {
        str(discovery["port"])}
    assert PROMETHEUS_CONFIG["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_promtool_accepts_the_prometheus_config(tmp_path: Path):
    # The config names files inside the container: point them at copies here.
    folder = tmp_path / "prometheus"
    shutil.copytree(REPO / "deploy" / "prometheus", folder)
    token = tmp_path / "token"
    token.write_text("a-token-of-at-least-twenty-four-characters\n")
    config = folder / "prometheus.yml"
    config.write_text(config.read_text().replace("/etc/prometheus", str(folder))
                      .replace("/run/secrets/switchyard-metrics-token", str(token)))
    done = run_promtool("check", "config", config)
    assert done.returncode == 0, done.stdout + done.stderr
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    count = sum(len(group["rules"]) for group in rules["groups"])
    assert f"SUCCESS: {count} rules found" in done.stdout

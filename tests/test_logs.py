"""Logs: one JSON object a line with ``SWITCHYARD_LOG_FORMAT=json``, each line about a job
carrying its id, tenant, lane, tier and task; readable text by default
(switchyard/logs.py, jobs/log_context.py).
"""
from __future__ import annotations

import io
import json
import logging

import pytest

from jobs.models import Job
from jobs.submission import job_submit
from switchyard import logs
from tenants.models import Tenant
from tests.processes import wait_until
from tests.test_lanes import start_lane


def _logger(log_format: str) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.formatter(log_format))
    handler.addFilter(logs.JobContextFilter())
    logger = logging.getLogger(f"tests.logs.{log_format}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, out


class _Job:
    id, tenant_name, lane, tier, task = "0f8e", "acme", "quick", "premium", "demo.quick_task"


def test_a_json_line_carries_the_job_given_by_the_call_or_by_the_running_delivery():
    logger, out = _logger("json")
    logger.warning("job %s accepted but not yet published", _Job.id, extra=logs.job_fields(_Job))
    token = logs.job_context.set({"job_id": "77", "tenant": "other", "lane": "slow",
                                  "tier": "standard", "task": "demo.slow_task"})
    try:
        try:
            raise RuntimeError("boom\nsecond line")
        except RuntimeError:
            logger.exception("the task raised")
    finally:
        logs.job_context.reset(token)
    logger.info("nothing about a job")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # a traceback stays on its record's one line
    first, second, third = map(json.loads, lines)
    assert {k: first[k] for k in logs.JOB_FIELDS} == {
        "job_id": "0f8e", "tenant": "acme", "lane": "quick", "tier": "premium",
        "task": "demo.quick_task"}
    assert first["level"] == "WARNING" and first["message"] == (
        "job 0f8e accepted but not yet published")
    assert first["time"].endswith("+00:00") and first["logger"] == "tests.logs.json"
    assert (second["job_id"], second["tenant"], second["lane"]) == ("77", "other", "slow")
    assert "RuntimeError: boom\nsecond line" in second["exception"]
    assert not set(logs.JOB_FIELDS) & set(third)


def test_celerys_own_task_lines_give_their_task_id_as_the_job():
    logger, out = _logger("json")
    context = {"id": "5c1d", "name": "demo.quick_task"}
    logger.info("Task %(name)s[%(id)s] received", context, extra={"data": context})
    line = json.loads(out.getvalue())
    assert (line["job_id"], line["task"]) == ("5c1d", "demo.quick_task")


def test_text_is_the_default_and_an_unknown_format_is_refused(settings):
    assert settings.SWITCHYARD_LOG_FORMAT == "text"
    assert settings.LOGGING["handlers"]["console"]["formatter"] == "plain"
    logger, out = _logger("text")
    logger.warning("job %s accepted", "0f8e", extra=logs.job_fields(_Job))
    assert out.getvalue().rstrip().endswith("WARNING tests.logs.text: job 0f8e accepted")
    with pytest.raises(ValueError, match="SWITCHYARD_LOG_FORMAT"):
        logs.logging_config(log_format="xml", level="INFO")


def _run_jobs(start_role, management, tmp_path, **env):
    """A quick worker logging at INFO; one job that succeeds and one that fails for good."""
    marker = tmp_path / "bug"
    marker.write_text("present")
    worker = start_lane(start_role, management, "quick", 1, SWITCHYARD_LOG_LEVEL="INFO", **env)
    tenant = Tenant.objects.create(name="acme", tier="premium")
    ok, _ = job_submit(tenant=tenant, task="demo.quick_task", params={"x": 1})
    bad, _ = job_submit(tenant=tenant, task="demo.failing", params={"marker": str(marker)})
    wait_until(lambda: Job.objects.filter(id__in=[ok.id, bad.id], status__in=[
        Job.Status.SUCCEEDED, Job.Status.FAILED]).count() == 2, 60, "both jobs to end",
        roles=[worker])
    worker.stop()
    return worker.log_path.read_text(), ok, bad


@pytest.mark.rabbitmq
@pytest.mark.workers
def test_a_json_worker_writes_only_json_lines_with_each_jobs_fields(start_role, management,
                                                                   tmp_path):
    text, ok, bad = _run_jobs(start_role, management, tmp_path, SWITCHYARD_LOG_FORMAT="json")
    # Every line is a JSON object but the one Celery prints (not logs) as it stops
    printed = {"worker: Warm shutdown (MainProcess)"}
    lines = [json.loads(line) for line in text.splitlines()
             if line.strip() and line not in printed]
    about = {str(job.id): [ln for ln in lines if ln.get("job_id") == str(job.id)]
             for job in (ok, bad)}
    for job in (ok, bad):
        expected = {"job_id": str(job.id), "tenant": "acme", "lane": "quick",
                    "tier": "premium", "task": job.task}
        ran = [ln for ln in about[str(job.id)] if ln["process_name"] != "MainProcess"]
        assert ran, (job.task, about[str(job.id)])
        for line in ran:  # every line of the run, Celery's own included
            assert {k: line.get(k) for k in logs.JOB_FIELDS} == expected, line
    assert any("succeeded" in ln["message"] for ln in about[str(ok.id)])
    (raised,) = [ln for ln in about[str(bad.id)] if ln["level"] == "ERROR"]
    assert "RuntimeError: bug not fixed yet" in raised["exception"]
    # Celery's "received" line, in the main process, names the job and its task
    received = [ln for ln in about[str(ok.id)] if "received" in ln["message"]]
    assert received and received[0]["task"] == "demo.quick_task"


@pytest.mark.rabbitmq
@pytest.mark.workers
def test_a_worker_logs_readable_text_by_default(start_role, management, tmp_path):
    text, ok, bad = _run_jobs(start_role, management, tmp_path)
    assert f"demo.quick_task[{ok.id}] succeeded" in text
    assert "Traceback (most recent call last)" in text
    assert not any(line.startswith("{") for line in text.splitlines())


@pytest.mark.rabbitmq
@pytest.mark.workers
def test_web_dispatcher_beat_and_flower_write_only_json_lines(start_role, settings):
    from tests.test_api_e2e import _http
    from tests.test_platform import free_port, http_status

    web_port, flower_port = free_port(), free_port()
    json_logs = {"SWITCHYARD_LOG_FORMAT": "json", "SWITCHYARD_LOG_LEVEL": "INFO"}
    roles = [
        start_role("web", WEB_BIND=f"127.0.0.1:{web_port}", WEB_WORKERS="1", **json_logs),
        start_role("dispatcher", **json_logs),
        start_role("beat", SWITCHYARD_VAR_DIR=str(settings.VAR_DIR), **json_logs),
        start_role("flower", FLOWER_PORT=str(flower_port),
                   FLOWER_BASIC_AUTH="ops:s3cret-for-this-test", **json_logs),
    ]
    wait_until(lambda: _http(f"http://127.0.0.1:{web_port}/healthz") == 200, 60, "web",
               roles=roles)
    wait_until(lambda: http_status(f"http://127.0.0.1:{flower_port}/") == 401, 60, "Flower",
               roles=roles)
    # A job due in a second: the dispatcher publishes it, and says so
    from jobs.options import SubmitOptions

    tenant = Tenant.objects.create(name="acme", tier="premium")
    job, _ = job_submit(tenant=tenant, task="demo.quick_task",
                        options=SubmitOptions(countdown=1))
    wait_until(lambda: "published 1 due job" in roles[1].log_path.read_text(), 30,
               "the dispatcher to publish the job", roles=roles)
    for role in roles:
        role.stop()
    for role in roles:
        lines = [line for line in role.log_path.read_text().splitlines() if line.strip()]
        assert lines, role.name
        for line in lines:
            record = json.loads(line)  # fails on any line that is not JSON
            assert {"time", "level", "logger", "message"} <= set(record), (role.name, line)
    web_lines = roles[0].log_path.read_text()
    assert '"logger": "gunicorn.access"' in web_lines and "/healthz" in web_lines

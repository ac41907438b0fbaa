"""Log records as one JSON object a line (``SWITCHYARD_LOG_FORMAT=json``), each line about
a job carrying its id, tenant, lane, tier and task where known; readable text otherwise.

Used by every role: Django's ``LOGGING`` (web, dispatcher, manage.py) names the formatter
and filter below, and ``switchyard.celery`` puts them on the handlers Celery installs in
workers and beat. Where the job comes from, in order:

* ``extra=job_fields(job)`` on the call (the web and the dispatcher, about one job);
* the job a worker's pool process is running (``job_context``, set by ``jobs.log_context``
  for the whole of a delivery, so a task's own lines and Celery's "succeeded" or
  "raised" carry it);
* the ``data`` Celery attaches to its own task lines ("received": id and task name).
"""
from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import logging.config
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

#: The job fields of a log line, in the order they are written.
JOB_FIELDS = ("job_id", "tenant", "lane", "tier", "task")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: The job this thread is working on: a mapping of JOB_FIELDS, empty when none
#: (read-only: a new mapping is set for each job).
job_context: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "switchyard_job", default=MappingProxyType({}))


def job_fields(job: Any) -> dict[str, str]:
    """``extra=`` for a log call about ``job`` (anything with a Job's attributes)."""
    return {"job_id": str(job.id), "tenant": getattr(job, "tenant_name", "") or "",
            "lane": job.lane, "tier": job.tier, "task": job.task}


class JobContextFilter(logging.Filter):
    """Puts the job fields on each record that does not carry them already."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in job_context.get().items():
            if not getattr(record, key, None) and value:
                setattr(record, key, value)
        data = getattr(record, "data", None)
        if isinstance(data, dict):  # Celery's own task lines
            if data.get("id") and not getattr(record, "job_id", None):
                record.job_id = str(data["id"])
            if data.get("name") and not getattr(record, "task", None):
                record.task = str(data["name"])
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time (UTC, ISO 8601), level, logger,
    message, process, the job fields present, and the exception's traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "process_name": record.processName,
        }
        for key in JOB_FIELDS:
            value = getattr(record, key, None)
            if value:
                line[key] = str(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    if log_format not in FORMATS:
        raise ValueError(f"SWITCHYARD_LOG_FORMAT={log_format!r}: one of {', '.join(FORMATS)}")
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def logging_config(*, log_format: str, level: str) -> dict:
    """Django's ``LOGGING`` for ``log_format`` ("text" or "json")."""
    formatter(log_format)  # refuses an unknown format at start
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": TEXT_FORMAT},
            "json": {"()": "switchyard.logs.JsonFormatter"},
        },
        "filters": {"job": {"()": "switchyard.logs.JobContextFilter"}},
        "handlers": {"console": {"class": "logging.StreamHandler",
                                 "formatter": "json" if log_format == "json" else "plain",
                                 "filters": ["job"]}},
        "root": {"handlers": ["console"], "level": level},
    }


def configure(config: dict) -> None:
    """Django's ``LOGGING_CONFIG``: apply ``config``; with JSON lines, Python's warnings
    become log records too, so no bare line ever breaks a JSON stream."""
    logging.config.dictConfig(config)
    if config["handlers"]["console"]["formatter"] == "json":
        logging.captureWarnings(True)


def adopt_handlers(logger: logging.Logger, log_format: str) -> None:
    """In JSON mode, make the handlers Celery set up on ``logger`` write JSON lines with
    the job fields; in text mode leave Celery's own readable format alone."""
    if log_format != "json":
        return
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())
        if not any(isinstance(f, JobContextFilter) for f in handler.filters):
            handler.addFilter(JobContextFilter())

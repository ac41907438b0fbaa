"""A Celery result backend that reads job outcomes from the platform's job API.

``AsyncResult(id).get(timeout=...)``, ``.status``, ``.ready()``, ``.successful()``
and ``.result`` ask ``GET /api/v1/jobs/{id}`` with the tenant's token: the
platform's workers record every outcome in the job table, so the client needs no
result store and no reply queue of its own. A job's status maps onto Celery's states:

=========================  ============  ==========================================
job status                 Celery state  ``result``
=========================  ============  ==========================================
queued, blocked, or 404    PENDING       ``None``
started                    STARTED       ``None``
retrying                   RETRY         ``JobRetrying`` with the last attempt's error
succeeded                  SUCCESS       the task's return value
failed / dead / expired    FAILURE       ``JobFailed`` / ``JobDead`` / ``JobExpired``
cancelled                  REVOKED       ``JobCancelled`` (a ``TaskRevokedError``)
=========================  ============  ==========================================

A 404 is PENDING as in Celery, where an id nobody knows is pending: a message
published a moment ago may not be recorded yet. ``get()`` polls with backoff
(from 50 ms up to ``interval``, 0.5 s by default) and never waits past ``timeout``.
Results are written by the platform only: ``store_result`` refuses.
"""
from __future__ import annotations

import time
from typing import Any

from celery import states
from celery.backends.base import BaseBackend
from celery.exceptions import TimeoutError

from .api import Api
from .errors import (
    ApiError,
    ConfigurationError,
    JobCancelled,
    JobDead,
    JobError,
    JobExpired,
    JobFailed,
    JobRetrying,
)

#: Job status (``GET /api/v1/jobs/{id}``) -> Celery state.
STATES = {
    "blocked": states.PENDING,  # a workflow step waiting for the steps before it
    "queued": states.PENDING,
    "started": states.STARTED,
    "retrying": states.RETRY,
    "succeeded": states.SUCCESS,
    "failed": states.FAILURE,
    "dead": states.FAILURE,
    "expired": states.FAILURE,
    "cancelled": states.REVOKED,
}
ERRORS: dict[str, type[JobError]] = {
    "retrying": JobRetrying,
    "failed": JobFailed,
    "dead": JobDead,
    "expired": JobExpired,
    "cancelled": JobCancelled,
}

#: First pause between two polls of ``get()``; each pause is 1.5 times the last, up
#: to ``interval``.
FIRST_POLL_INTERVAL = 0.05
BACKOFF = 1.5


def meta_from_job(task_id: str, job: dict[str, Any] | None) -> dict[str, Any]:
    """Celery's result meta for a job as the API shows it (``None``: not known)."""
    if job is None:
        return {"task_id": task_id, "status": states.PENDING, "result": None,
                "traceback": None, "children": [], "date_done": None}
    status = job.get("status")
    state = STATES.get(status, states.PENDING)
    if status in ERRORS:
        result: Any = ERRORS[status](str(job.get("id") or task_id), status, job.get("error"))
    elif state == states.SUCCESS:
        result = job.get("result")
    else:
        result = None
    return {
        "task_id": task_id,
        "status": state,
        "result": result,
        "traceback": None,
        "children": [],
        "date_done": job.get("finished_at") if state in states.READY_STATES else None,
        "name": job.get("task"),
        "args": [],
        "kwargs": job.get("params"),
        "retries": max(int(job.get("attempts") or 0) - 1, 0),
        "queue": job.get("lane"),
    }


class JobBackend(BaseBackend):
    """Reads outcomes through the API. ``connect()`` configures it; in an app of your
    own, ``result_backend = "switchyard+https://switchyard.internal"`` with the token in
    the ``switchyard_token`` setting."""

    supports_native_join = False
    persistent = True

    def __init__(self, app: Any, url: str | None = None, api: Api | None = None,
                 **kwargs: Any) -> None:
        super().__init__(app, url=url, **kwargs)
        if api is None and url is None:
            api = getattr(app, "switchyard_api", None)
        if api is None:
            api_url = url or app.conf.get("switchyard_api_url")
            token = app.conf.get("switchyard_token")
            if not api_url or not token:
                raise ConfigurationError(
                    "JobBackend needs the platform's URL and a tenant token: use "
                    "switchyard_client.connect(), or set result_backend to "
                    "'switchyard+https://HOST' and the switchyard_token setting")
            api = Api(api_url, token, timeout=app.conf.get("switchyard_api_timeout") or 10.0)
        self.api = api

    def as_uri(self, include_password: bool = False) -> str:
        return "switchyard+" + self.api.base_url  # the token is never part of it

    def _fetch(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        return meta_from_job(task_id, self.api.job(task_id, timeout=timeout))

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        return self._fetch(task_id)

    def wait_for(self, task_id: str, timeout: float | None = None, interval: float = 0.5,
                 no_ack: bool = True, on_interval: Any = None) -> dict[str, Any]:
        """Poll until the job is finished (SUCCESS, FAILURE or REVOKED) and return its
        meta; ``celery.exceptions.TimeoutError`` once ``timeout`` seconds have passed.

        Polls back off from 50 ms to ``interval``; a request never outlasts the
        deadline. An API that does not answer, or answers 429 or 5xx, is polled again
        until the deadline; any other error (a bad token: 401) is raised at once.
        """
        self._ensure_not_eager()
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = min(FIRST_POLL_INTERVAL, interval)
        last_error: ApiError | None = None
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            request_timeout = self.api.timeout if remaining is None else \
                max(min(self.api.timeout, remaining), 0.05)
            try:
                meta = self._fetch(task_id, timeout=request_timeout)
            except ApiError as exc:
                if not exc.transient:
                    raise
                last_error, meta = exc, None
            if meta is not None:
                if meta["status"] == states.SUCCESS:
                    self._cache[task_id] = meta
                if meta["status"] in states.READY_STATES:
                    return meta
            if on_interval:
                on_interval()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                message = f"job {task_id} did not finish within {timeout:g} s"
                if last_error is not None and meta is None:
                    message += f" (last poll: {last_error})"
                raise TimeoutError(message)
            time.sleep(pause if deadline is None else min(pause, deadline - now))
            pause = min(pause * BACKOFF, max(interval, FIRST_POLL_INTERVAL))

    def apply_chord(self, header_result_args, body, **kwargs) -> None:
        """Register a chord with the platform before its header is published (Celery calls
        this first): the platform records the callback as a workflow step that its last
        header releases, with the headers' results in order, in the transaction that
        records that header's outcome. No ``celery.chord_unlock`` task polls for it.

        ``ApiError`` if the platform refuses it (an unknown task, bad arguments): nothing
        has been published yet, so nothing of the chord runs."""
        group_id, results = header_result_args[0], header_result_args[1]
        body = dict(body)
        self.api.post("/workflows/chords", {
            "group": str(group_id),
            "headers": [str(result.id) for result in results],
            "body": {"task": body.get("task"), "args": list(body.get("args") or ()),
                     "kwargs": dict(body.get("kwargs") or {}),
                     "immutable": bool(body.get("immutable")),
                     "task_id": str((body.get("options") or {}).get("task_id") or ""),
                     "subtask_type": body.get("subtask_type")},
        })

    def _store_result(self, task_id, result, state, traceback=None, request=None, **kwargs):
        raise NotImplementedError("Switchyard's workers record results; a client only "
                                  "reads them (GET /api/v1/jobs/{id})")

    def _forget(self, task_id: str) -> None:
        """Nothing to forget here: the platform keeps its job records (retention)."""

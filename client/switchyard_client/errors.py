"""What the client raises. Every exception is a ``SwitchyardError``."""
from __future__ import annotations

from celery.exceptions import TaskRevokedError


class SwitchyardError(Exception):
    """Base class of every error the client raises."""


class ConfigurationError(SwitchyardError, ValueError):
    """``connect()`` was given something it cannot work with."""


class ApiError(SwitchyardError):
    """The platform's API could not be reached or answered with an error.

    ``status`` is the HTTP status (``None``: no answer at all); ``transient`` is true
    for what may pass by itself (no answer, 429, 5xx), so a caller waiting for a
    result keeps polling instead of failing.
    """

    def __init__(self, message: str, *, url: str, status: int | None = None,
                 detail: str = "") -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.detail = detail

    @property
    def transient(self) -> bool:
        return self.status is None or self.status == 429 or self.status >= 500


class CatalogueError(SwitchyardError):
    """The task catalogue (``GET /api/v1/tasks``) cannot route a task: it could not be
    fetched, or it lacks what the client needs (``routing_key``, ``priority_band``)."""


class UnknownTask(SwitchyardError, LookupError):
    """The task is not in the caller's catalogue: nothing was published."""

    def __init__(self, name: object, api_url: str, *, role: str = "") -> None:
        what = f"{role} task" if role else "task"
        super().__init__(
            f"unknown {what} {name!r}: Switchyard does not offer it to this tenant, so "
            f"nothing was sent; GET {api_url}/api/v1/tasks lists the tasks you can call")
        self.name = name


class JobError(SwitchyardError):
    """A job that ended without a result (or, for ``retrying``, its last attempt's error).

    ``status`` is the job's status in ``GET /api/v1/jobs/{id}``, ``error`` its error text.
    """

    def __init__(self, job_id: str, status: str, error: str | None) -> None:
        self.job_id = job_id
        self.status = status
        self.error = error or ""
        super().__init__(f"job {job_id} {status}" + (f": {self.error}" if self.error else ""))

    def __reduce__(self):
        return type(self), (self.job_id, self.status, self.error)


class JobFailed(JobError):
    """The task raised on its last allowed attempt (status ``failed``)."""


class JobDead(JobError):
    """The platform refused to run the message and dead-lettered it (status ``dead``):
    ``error`` says why (for example a parameter breaking the task's schema)."""


class JobExpired(JobError):
    """The job's ``expires`` passed before a worker started it (status ``expired``)."""


class JobRetrying(JobError):
    """The result of a job waiting for another attempt (Celery's ``RETRY`` state)."""


class JobCancelled(JobError, TaskRevokedError):
    """The job was cancelled before it started (status ``cancelled``; Celery's ``REVOKED``)."""

"""The exceptions of the job platform, in one place: what a submission is refused for,
and what a task raises for a failure no retry can fix.

Used by every process: the web and the platform's tools catch the refusals
(``jobs.api_support`` turns them into HTTP answers), the worker reads
``PermanentFailure``. Nothing here imports anything of the platform, so any
module may raise them.
"""
from __future__ import annotations


class UnknownTask(LookupError):
    """The task is not registered, or declares no lane."""


class InvalidSubmission(ValueError):
    """A submission the platform refuses; ``field`` names what was wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class QuotaExceeded(Exception):
    """The tenant is over one of its quotas; ``retry_after`` is in seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StorageQuotaExceeded(Exception):
    """The files a submission would add do not fit in the tenant's storage quota;
    waiting does not help (delete files, empty the trash, or ask for more)."""


class IdempotencyConflict(Exception):
    """An ``Idempotency-Key`` reused with a different request."""


class NotCancellable(Exception):
    """The job (or every chunk of the batch) already started or finished."""


class PermanentFailure(Exception):
    """Raise from a task for a failure no retry can fix (bad input, missing file):
    the job fails at once, whatever its retry policy."""

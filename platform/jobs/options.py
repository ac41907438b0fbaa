"""How a job is to run: its submit options (Celery's calling options, as Switchyard
takes them), checked against the platform's clock, and what they write on the record.

Used wherever work is submitted: the web (``jobs.submission``, ``jobs.bulk``,
``jobs.batches``), the worker when a job's ``link`` submits a follow-up
(``jobs.outcomes``) and the dispatcher's retries (``RetryPolicy.delay``).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from django.utils import timezone

from jobs.catalogue import task_lane
from jobs.errors import InvalidSubmission, UnknownTask
from jobs.models import Job
from routing import priorities

#: Longest countdown or eta accepted, and longest expiry.
MAX_DELAY = dt.timedelta(days=30)


@dataclass(frozen=True)
class RetryPolicy:
    """Runs again after a failure, up to ``max_retries`` times.

    Exponential (the default): the n-th retry waits ``backoff * 2**(n-1)``
    seconds, capped at ``backoff_max``. Linear, with Celery's ``retry_policy``
    names: ``interval_start + interval_step * (n-1)``, capped at
    ``interval_max``. With ``jitter`` the wait is drawn from its upper half, so
    jobs that failed together do not all come back in the same second. A
    waiting retry sits in the job table (status ``retrying``), not in a
    worker's memory, and the dispatcher publishes it when due.
    """

    max_retries: int
    backoff: float = 1.0
    backoff_max: float = 600.0
    jitter: bool = True
    interval_start: float | None = None
    interval_step: float | None = None
    interval_max: float | None = None

    @property
    def linear(self) -> bool:
        return any(v is not None for v in (self.interval_start, self.interval_step,
                                            self.interval_max))

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        if self.linear:
            wait = (self.interval_start or 0) + (self.interval_step or 0) * max(0, retry - 1)
            if self.interval_max is not None:
                wait = min(wait, self.interval_max)
        else:
            wait = min(self.backoff_max, self.backoff * 2 ** max(0, retry - 1))
        return random.uniform(wait / 2, wait) if self.jitter else wait


@dataclass(frozen=True)
class Link:
    """A task to submit for the same tenant when a job succeeds (``link``) or
    fails for good (``link_error``), with its own parameters."""

    task: str
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SubmitOptions:
    """How a job is to run. ``priority`` is relative (0..9) inside the tenant's band;
    ``countdown`` is seconds from now; ``eta`` and ``expires`` are absolute times
    (``expires`` may also be seconds from now). Times are read on the platform's
    clock at submission, never the caller's."""

    priority: int | None = None
    countdown: float | None = None
    eta: dt.datetime | None = None
    expires: dt.datetime | float | None = None
    retry_policy: RetryPolicy | None = None
    link: Link | None = None
    link_error: Link | None = None


def schedule_of(options: SubmitOptions, now: dt.datetime) -> tuple[dt.datetime | None,
                                                                   dt.datetime | None]:
    """``(run_at, expires_at)`` from the options, validated against ``now`` (the
    platform's clock, ``switchyard.clock.platform_now``)."""
    if options.priority is not None and not (
        priorities.RELATIVE_MIN <= options.priority <= priorities.RELATIVE_MAX
    ):
        raise InvalidSubmission("options.priority", f"must be between {priorities.RELATIVE_MIN} "
                                f"and {priorities.RELATIVE_MAX}, got {options.priority}")
    if options.countdown is not None and options.eta is not None:
        raise InvalidSubmission("options.eta", "give countdown or eta, not both")
    run_at = None
    if options.countdown is not None:
        if not 0 <= options.countdown <= MAX_DELAY.total_seconds():
            raise InvalidSubmission("options.countdown", "must be between 0 and "
                                    f"{int(MAX_DELAY.total_seconds())} seconds")
        run_at = now + dt.timedelta(seconds=options.countdown) if options.countdown else None
    elif options.eta is not None:
        eta = _aware(options.eta, "options.eta")
        if eta < now:
            raise InvalidSubmission("options.eta", f"{eta.isoformat()} is in the past")
        if eta - now > MAX_DELAY:
            raise InvalidSubmission("options.eta", f"more than {MAX_DELAY.days} days ahead")
        run_at = eta
    expires_at = None
    if options.expires is not None:
        if isinstance(options.expires, dt.datetime):
            expires_at = _aware(options.expires, "options.expires")
        else:
            if not 0 < options.expires <= MAX_DELAY.total_seconds():
                raise InvalidSubmission("options.expires", "seconds must be between 0 and "
                                        f"{int(MAX_DELAY.total_seconds())}")
            expires_at = now + dt.timedelta(seconds=options.expires)
        if expires_at <= (run_at or now):
            what = "eta/countdown" if run_at else "now"
            raise InvalidSubmission("options.expires", f"{expires_at.isoformat()} is not after "
                                    f"{what} ({(run_at or now).isoformat()})")
    return run_at, expires_at


def _aware(value: dt.datetime, field: str) -> dt.datetime:
    if timezone.is_naive(value):
        raise InvalidSubmission(field, "needs a time zone, e.g. 2026-01-01T12:00:00Z")
    return value


def check_links(options: SubmitOptions, prefix: str = "options") -> None:
    """``InvalidSubmission`` naming the field if a linked task is not routable."""
    for name in ("link", "link_error"):
        linked = getattr(options, name)
        if linked is not None:
            try:
                task_lane(linked.task)
            except UnknownTask as exc:
                raise InvalidSubmission(f"{prefix}.{name}.task", str(exc)) from None


def run_option_values(options: SubmitOptions) -> dict[str, Any]:
    """The job fields that say what happens after a run (retries, links)."""
    values: dict[str, Any] = {
        "link": asdict(options.link) if options.link else None,
        "link_error": asdict(options.link_error) if options.link_error else None,
    }
    if options.retry_policy is not None:
        values["retry_policy"] = asdict(options.retry_policy)
        values["max_attempts"] = 1 + options.retry_policy.max_retries
    return values


def apply_run_options(job: Job, options: SubmitOptions) -> None:
    """Copy what happens after a run (retries, links) from ``options`` onto ``job``."""
    for name, value in run_option_values(options).items():
        setattr(job, name, value)


def fingerprint(*parts: Any) -> str:
    """SHA-256 of ``parts`` as canonical JSON: tells a replayed request from a
    different one under the same ``Idempotency-Key``, and keys one media operation
    (a job and its item) so that its reruns share it. Stored: never change it."""
    raw = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()

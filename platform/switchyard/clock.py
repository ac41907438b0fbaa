"""The platform's clock: PostgreSQL's, not the clock of whichever host runs the code.

Every time Switchyard stores and later compares (a job's ``submitted_at``, its
``run_at`` from a countdown, its ``expires_at``, a retry's backoff) is read
here, so a web, dispatcher or worker host whose clock is off (a VM resumed
from a snapshot, NTP not yet synced, a container with a fake time) neither
delays a countdown nor expires a job early: they all read one clock, the
database server's. The offset between this process's clock and the
database's is measured at most every ``TTL`` seconds (one ``SELECT``) and
applied to the local clock in between, so a submission costs no extra round
trip. docs/architecture.md ("Clocks") states the guarantee.
"""
from __future__ import annotations

import datetime as dt
import threading
import time

from django.db import connection

#: Seconds between two measurements of the offset in one process.
TTL = 30.0

_lock = threading.Lock()
_offset: float | None = None  # database clock minus local clock, in seconds
_measured_at = 0.0  # time.monotonic() of the measurement


def offset() -> float:
    """Seconds to add to this process's clock to read the database's (cached ``TTL`` s)."""
    global _offset, _measured_at
    with _lock:
        if _offset is None or abs(time.monotonic() - _measured_at) > TTL:
            if connection.vendor != "postgresql":
                # SQLite (a single-host `make run`) has no server clock: the host's is it.
                _offset, _measured_at = 0.0, time.monotonic()
                return _offset
            with connection.cursor() as cursor:
                before = time.time()
                cursor.execute("SELECT extract(epoch FROM clock_timestamp())")
                database = float(cursor.fetchone()[0])
                after = time.time()
            _offset = database - (before + after) / 2
            _measured_at = time.monotonic()
        return _offset


def platform_now() -> dt.datetime:
    """Now on the platform's clock (aware, UTC)."""
    return dt.datetime.fromtimestamp(time.time() + offset(), tz=dt.UTC)


def forget() -> None:
    """Measure again at the next call (tests; after a known clock step)."""
    global _offset
    with _lock:
        _offset = None

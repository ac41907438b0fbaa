"""The two things the client copies from the platform's ``routing`` package.

Copied, never imported: the client installs without the platform. A test
(``tests/test_client_copies.py``) fails if a copy here drifts from ``routing/``.

* The exchange every task message is published to (``routing.topology.EXCHANGE_NAME``).
  The catalogue names it too (``exchange``); this copy is the fallback.
* The placement rule of ``routing.priorities.Tier.place``: a caller's *relative*
  priority (0 least urgent .. 9 most urgent, as the REST API takes it) becomes an
  absolute AMQP priority inside its tier's band ``[low, high]``. On RabbitMQ a
  HIGHER number is delivered first. The band itself is not copied: the catalogue
  gives each caller its own (``priority_band``), since a tier comes from the
  tenant's account, never from its request.
"""
from __future__ import annotations

#: The topic exchange of every task message.
EXCHANGE_NAME = "tasks"
EXCHANGE_TYPE = "topic"

#: ``x-max-priority`` of every lane queue: absolute priorities lie in ``0..MAX_PRIORITY``.
MAX_PRIORITY = 9
#: The scale callers speak in: 0 (least urgent) to 9 (most urgent).
RELATIVE_MIN = 0
RELATIVE_MAX = 9
#: Relative priority used when a caller gives none.
RELATIVE_DEFAULT = 5


def check_relative(priority: object) -> int | None:
    """``priority`` as an int if it is a relative priority (0..9) or ``None``; else
    ``ValueError``, as the REST API answers 400 for a priority outside 0-9."""
    if priority is None:
        return None
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValueError(f"priority must be an integer {RELATIVE_MIN}..{RELATIVE_MAX} "
                         f"(relative: it is placed in your tier's band), got {priority!r}")
    if not RELATIVE_MIN <= priority <= RELATIVE_MAX:
        raise ValueError(f"priority {priority} is outside {RELATIVE_MIN}..{RELATIVE_MAX}: "
                         "it is relative, 9 the most urgent of your own work, and is placed "
                         "in your tier's band")
    return priority


def place(band: tuple[int, int], relative: int | None) -> int:
    """Map a relative priority (0..9, ``None`` for the default) into ``band`` (inclusive
    absolute priorities, ``low <= high``): the same arithmetic as ``Tier.place``.

    Values outside 0..9 are clamped first, so the result always lies in the band.
    """
    low, high = band
    rel = RELATIVE_DEFAULT if relative is None else int(relative)
    rel = min(max(rel, RELATIVE_MIN), RELATIVE_MAX)
    span = high - low
    # Round to nearest so both ends of the caller's scale reach both ends of the band.
    return low + (rel * span + (RELATIVE_MAX - RELATIVE_MIN) // 2) // (
        RELATIVE_MAX - RELATIVE_MIN
    )

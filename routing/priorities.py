"""Tiers and their priority bands.

Direction: on RabbitMQ a HIGHER priority number is delivered first (0 is the
lowest; a message published without a priority counts as 0). On Redis it is
the reverse, which is one reason Switchyard is RabbitMQ-only.

Every lane queue is declared with ``x-max-priority = MAX_PRIORITY``. The range
``0..MAX_PRIORITY`` is cut into one band per tier; premium's band lies strictly
above standard's, so any premium message is served before any standard one in
the same lane. A caller's *relative* priority (0 to 9, the ``priority`` option
of ``apply_async``) only orders work *inside* its tier's band: it is placed in
the band and clamped there, so a standard tenant can never reach premium.
"""
from __future__ import annotations

from dataclasses import dataclass

#: ``x-max-priority`` of every lane queue. RabbitMQ advises at most 10 levels:
#: each level costs an internal sub-queue per priority queue.
MAX_PRIORITY = 9

#: The scale callers speak in: 0 (least urgent) to 9 (most urgent).
RELATIVE_MIN = 0
RELATIVE_MAX = 9
#: Relative priority used when a caller gives none.
RELATIVE_DEFAULT = 5


@dataclass(frozen=True)
class Tier:
    """A customer tier and its band of absolute RabbitMQ priorities (inclusive)."""

    name: str
    low: int
    high: int

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high <= MAX_PRIORITY:
            raise ValueError(
                f"tier {self.name!r}: band {self.low}..{self.high} must lie in 0..{MAX_PRIORITY}"
            )

    def place(self, relative: int | None) -> int:
        """Map a relative priority (0..9, None for the default) into this tier's band.

        Values outside 0..9 are clamped first, so the result always lies in
        ``low..high``: clamping is what keeps a tier inside its band.
        """
        rel = RELATIVE_DEFAULT if relative is None else int(relative)
        rel = min(max(rel, RELATIVE_MIN), RELATIVE_MAX)
        span = self.high - self.low
        # Round to nearest so both ends of the caller's scale reach both ends of the band.
        return self.low + (rel * span + (RELATIVE_MAX - RELATIVE_MIN) // 2) // (
            RELATIVE_MAX - RELATIVE_MIN
        )

    def clamp(self, absolute: int | None) -> int:
        """Force an absolute priority (as found on a message) into this tier's band.

        Used where a message is re-checked (a retry, a Celery-native publish): an
        absolute value already inside the band is kept as it is, so re-checking
        never drifts; a missing one gets the band's default.
        """
        if absolute is None:
            return self.place(None)
        return min(max(int(absolute), self.low), self.high)

    def __contains__(self, priority: int) -> bool:
        return self.low <= priority <= self.high


STANDARD = Tier("standard", low=0, high=4)
PREMIUM = Tier("premium", low=5, high=MAX_PRIORITY)

#: All tiers, lowest band first.
TIERS: tuple[Tier, ...] = (STANDARD, PREMIUM)
TIERS_BY_NAME: dict[str, Tier] = {t.name: t for t in TIERS}

#: The tier applied when a message names none or an unknown one. Being the
#: lowest band, guessing it can never give anyone more than they pay for.
DEFAULT_TIER = STANDARD


def tier(name: str) -> Tier:
    """Return the tier called ``name``; ``KeyError`` names the valid ones."""
    try:
        return TIERS_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown tier {name!r}; known tiers: {', '.join(TIERS_BY_NAME)}") from None


def _check_bands() -> None:
    ordered = sorted(TIERS, key=lambda t: t.low)
    for lower, upper in zip(ordered, ordered[1:], strict=False):
        if lower.high >= upper.low:
            raise ValueError(f"bands of {lower.name!r} and {upper.name!r} overlap")


_check_bands()

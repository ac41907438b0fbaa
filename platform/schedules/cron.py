"""Five-field cron expressions read as local wall-clock rules in an IANA time zone, and
the UTC instants they fire at (``jobs.schedules``).

Pure Python and ``zoneinfo``, no Django: used by the web (validating a schedule,
showing its next fire times) and the dispatcher (firing it). Written here rather
than taken from croniter because croniter's DST behaviour has open bugs (a fire
time skipped when the shift is not a whole hour, pallets-eco/croniter#258, and
older ones around both transitions) and its rules are not the ones stated below;
the matcher is small and its every DST rule is tested (tests/test_schedules.py).

Fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or jan-dec),
day of week (0-7, 0 and 7 are Sunday, or sun-sat). Each is ``*``, a number, a
range ``a-b``, a step ``*/n``, ``a-b/n`` or ``a/n``, or a comma list of those.
As in Vixie cron, when both day of month and day of week are restricted (neither
starts with ``*``) a day matching either fires; otherwise both must match.

Daylight saving time, as Vixie cron and cronie do:

* **Spring forward** (a wall-clock time that does not exist that day, e.g. 02:30 in
  Europe/Berlin on the last Sunday of March): it fires once, at the instant the gap
  ends (03:00 CEST = 01:00 UTC). Several times in one gap fire once there.
* **Fall back** (a wall-clock time that happens twice, e.g. 02:30 on the last Sunday
  of October): it fires once, at the first occurrence (02:30 CEST = 00:30 UTC) --
  unless the hour field is ``*``: an hourly or more frequent rule then fires in both
  occurrences, so ``*/15 * * * *`` keeps firing every 15 minutes of real time.
"""
from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass

#: How far ahead a rule is searched (a 29 February on a Monday recurs within 28 years).
HORIZON_DAYS = 366 * 29

_MONTHS = {name: i for i, name in enumerate(
    "jan feb mar apr may jun jul aug sep oct nov dec".split(), start=1)}
_DAYS = {name: i for i, name in enumerate("sun mon tue wed thu fri sat".split())}
_FIELDS = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
           ("month", 1, 12, _MONTHS), ("day of week", 0, 7, _DAYS))


class InvalidCron(ValueError):
    """An expression or a time zone that cannot be read; the message says which part."""


@dataclass(frozen=True)
class Cron:
    """A parsed expression: the values each field allows (day of week 0 = Sunday)."""

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    #: Both day fields restricted: a day matching either fires (Vixie cron).
    day_or: bool
    #: The hour field is ``*``: a repeated wall-clock hour fires twice.
    every_hour: bool

    def day_matches(self, day: dt.date) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays
        return (in_month or in_week) if self.day_or else (in_month and in_week)


def parse(expression: str) -> Cron:
    """``expression`` (five fields) as a ``Cron``; ``InvalidCron`` naming the bad field."""
    if not isinstance(expression, str):
        raise InvalidCron("must be a string of five fields")
    parts = expression.split()
    if len(parts) != 5:
        raise InvalidCron(f"five fields (minute hour day-of-month month day-of-week), "
                          f"got {len(parts)}")
    values = [_field(text, *spec) for text, spec in zip(parts, _FIELDS, strict=True)]
    weekdays = frozenset(0 if d == 7 else d for d in values[4])
    return Cron(expression=" ".join(parts), minutes=tuple(sorted(values[0])),
                hours=tuple(sorted(values[1])), days=frozenset(values[2]),
                months=frozenset(values[3]), weekdays=weekdays,
                day_or=not parts[2].startswith("*") and not parts[4].startswith("*"),
                every_hour=parts[1] == "*")


def _field(text: str, name: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    allowed: set[int] = set()
    for item in text.split(","):
        match = re.fullmatch(r"(\*|\w+(?:-\w+)?)(?:/(\d+))?", item.lower())
        if not match:
            raise InvalidCron(f"{name}: cannot read {item!r}")
        span, step = match.group(1), int(match.group(2) or 1)
        if step < 1:
            raise InvalidCron(f"{name}: a step must be at least 1")
        if span == "*":
            start, end = low, high
        elif "-" in span:
            start, end = (_value(v, name, low, high, names) for v in span.split("-"))
            if start > end:
                raise InvalidCron(f"{name}: range {span} runs backwards")
        else:
            start = _value(span, name, low, high, names)
            end = high if match.group(2) else start
        allowed.update(range(start, end + 1, step))
    return allowed


def _value(text: str, name: str, low: int, high: int, names: dict[str, int]) -> int:
    if text in names:
        return names[text]
    if not text.isdigit():
        raise InvalidCron(f"{name}: {text!r} is not a number")
    value = int(text)
    if not low <= value <= high:
        raise InvalidCron(f"{name}: {value} is outside {low}-{high}")
    return value


def zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA time zone ``name``; ``InvalidCron`` if there is none of that name."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidCron(f"unknown time zone {name!r}; an IANA name such as "
                          "Europe/Berlin or UTC") from None


def _gap_end(naive: dt.datetime, tz: zoneinfo.ZoneInfo) -> dt.datetime:
    """The UTC instant a spring-forward gap containing ``naive`` ends: the transition."""
    # fold=0 reads the wall time with the offset before the gap, fold=1 with the one
    # after: the transition lies between the two instants. Found to the second.
    late = naive.replace(tzinfo=tz, fold=0).astimezone(dt.UTC)
    early = naive.replace(tzinfo=tz, fold=1).astimezone(dt.UTC)
    early, late = min(early, late), max(early, late)
    after = late.astimezone(tz).utcoffset()
    while late - early > dt.timedelta(seconds=1):
        middle = early + (late - early) / 2
        if middle.astimezone(tz).utcoffset() == after:
            late = middle
        else:
            early = middle
    return late.replace(microsecond=0)


def _instants(naive: dt.datetime, tz: zoneinfo.ZoneInfo, both_folds: bool) -> list[dt.datetime]:
    """The UTC instants the wall-clock time ``naive`` fires at in ``tz`` (see the module)."""
    first = naive.replace(tzinfo=tz, fold=0)
    second = naive.replace(tzinfo=tz, fold=1)
    if first.utcoffset() == second.utcoffset():
        return [first.astimezone(dt.UTC)]
    if first.astimezone(dt.UTC).astimezone(tz).replace(tzinfo=None) != naive:
        return [_gap_end(naive, tz)]  # does not exist: the end of the gap
    # Happens twice: fold=0 is the first occurrence.
    instants = [first.astimezone(dt.UTC)]
    if both_folds:
        instants.append(second.astimezone(dt.UTC))
    return instants


def _day_instants(cron: Cron, day: dt.date, tz: zoneinfo.ZoneInfo) -> list[dt.datetime]:
    found = {instant for hour in cron.hours for minute in cron.minutes
             for instant in _instants(dt.datetime.combine(day, dt.time(hour, minute)), tz,
                                      cron.every_hour)}
    return sorted(found)


def next_after(cron: Cron, tz: zoneinfo.ZoneInfo, after: dt.datetime) -> dt.datetime | None:
    """The first UTC instant strictly after ``after`` (aware) at which ``cron`` fires
    in ``tz``; None if it never fires within ``HORIZON_DAYS`` (e.g. ``0 0 31 2 *``)."""
    # A local day's instants can start before its UTC date (east of UTC) or spill into
    # the next one: start a day early and keep going until one is after ``after``.
    day = after.astimezone(tz).date() - dt.timedelta(days=1)
    for _ in range(HORIZON_DAYS):
        if cron.day_matches(day):
            for instant in _day_instants(cron, day, tz):
                if instant > after:
                    return instant
        day += dt.timedelta(days=1)
    return None


def last_at_or_before(cron: Cron, tz: zoneinfo.ZoneInfo,
                      instant: dt.datetime) -> dt.datetime | None:
    """The last UTC instant at or before ``instant`` at which ``cron`` fires in ``tz``;
    None if there is none within ``HORIZON_DAYS`` back."""
    day = instant.astimezone(tz).date() + dt.timedelta(days=1)
    for _ in range(HORIZON_DAYS):
        if cron.day_matches(day):
            for candidate in reversed(_day_instants(cron, day, tz)):
                if candidate <= instant:
                    return candidate
        day -= dt.timedelta(days=1)
    return None

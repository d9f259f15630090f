"""The date policy: which instant a local date and time means, yearly anniversaries, and the injectable clock.

Policy (documented in docs/flows.md, proved by property tests):
- A customer's dates are read in the customer's time zone when known, else the shop's, else DEFAULT_TIMEZONE.
- A 29 February anniversary falls on 28 February in years without a 29 February.
- A local wall time that does not exist (the spring-forward gap) moves forward by the gap; a wall time
  that happens twice (the autumn fold) means its first occurrence. So each local day has exactly one
  instant for a given time of day: daylight saving neither skips nor doubles a send.
- A duration of whole days (`14d`, `2w`, also `48h`) counts calendar days in the local zone, keeping the
  wall time across a DST change; any other duration (`30m`, `36h`) is elapsed time.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from encore_retention.core.settings import get_settings

_frozen: datetime | None = None


def now() -> datetime:
    """The current time, aware UTC; tests move it with `set_now`/`frozen_time`."""
    return _frozen if _frozen is not None else datetime.now(UTC)


def set_now(value: datetime | None) -> None:
    """Freeze "now" at an aware datetime (None goes back to the real clock)."""
    global _frozen
    if value is not None and value.tzinfo is None:
        raise ValueError("set_now needs an aware datetime")
    _frozen = value.astimezone(UTC) if value is not None else None


@contextmanager
def frozen_time(value: datetime) -> Iterator[None]:
    """Freeze "now" for the duration of a block."""
    previous = _frozen
    set_now(value)
    try:
        yield
    finally:
        set_now(previous)


def zone(name: str | None, fallback: str | None = None) -> tzinfo:
    """The time zone named `name`, else `fallback`, else DEFAULT_TIMEZONE; unknown names fall through."""

    return _zone(name, fallback, get_settings().DEFAULT_TIMEZONE)


@lru_cache(maxsize=512)
def _zone(name: str | None, fallback: str | None, default: str) -> tzinfo:
    for candidate in (name, fallback, default):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return UTC


def local_instant(day: date, at: time, tz: tzinfo) -> datetime:
    """The UTC instant of wall time `at` on local `day` (gap: moved forward; fold: the first occurrence)."""
    # fold=0 reads a skipped wall time with the offset before the gap (so it lands after it, moved forward
    # by the gap) and a repeated wall time as its first occurrence.
    naive = datetime.combine(day, at.replace(tzinfo=None))
    return naive.replace(tzinfo=tz, fold=0).astimezone(UTC)


def anniversary(original: date, year: int) -> date:
    """The date `original` recurs on in `year` (29 February -> 28 February in common years)."""
    if original.month == 2 and original.day == 29 and not calendar.isleap(year):
        return date(year, 2, 28)
    return original.replace(year=year)


def month_days_on(day: date) -> list[tuple[int, int]]:
    """The (month, day) pairs whose anniversary falls on `day` (28 Feb of a common year also takes 29 Feb)."""
    pairs = [(day.month, day.day)]
    if day.month == 2 and day.day == 28 and not calendar.isleap(day.year):
        pairs.append((2, 29))
    return pairs


def add_duration(start: datetime, delta: timedelta, tz: tzinfo) -> datetime:
    """`start` plus `delta`: whole days keep the local wall time; any other duration is elapsed time."""
    if delta and not delta % timedelta(days=1):
        local = start.astimezone(tz)
        return local_instant(local.date() + timedelta(days=delta.days), local.time(), tz)
    return (start + delta).astimezone(UTC)


def next_local_time(after: datetime, at: time, tz: tzinfo) -> datetime:
    """The first instant at or after `after` whose local wall time is `at`."""
    local_day = after.astimezone(tz).date()
    for offset in range(0, 3):
        candidate = local_instant(local_day + timedelta(days=offset), at, tz)
        if candidate >= after:
            return candidate
    raise AssertionError("unreachable")  # pragma: no cover


def in_window(moment: datetime, start: time, end: time, tz: tzinfo) -> bool:
    """Whether local `moment` lies in the daily window [start, end) (which may wrap past midnight)."""
    wall = moment.astimezone(tz).time().replace(tzinfo=None)
    if start <= end:
        return start <= wall < end
    return wall >= start or wall < end

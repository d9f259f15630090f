"""The date policy, with property tests: leap days, daylight saving, local times, durations, the sweep's days."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from encore_retention.flows import dates
from encore_retention.flows.schema import DateTrigger

ZONES = [
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "Australia/Lord_Howe",
    "America/Sao_Paulo",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "Europe/London",
    "America/St_Johns",
]
zones = st.sampled_from(ZONES).map(ZoneInfo)
days = st.dates(min_value=date(1990, 1, 1), max_value=date(2060, 12, 31))
times = st.times().map(lambda t: t.replace(second=0, microsecond=0))


@given(year=st.integers(1901, 2099))
def test_29_february_is_celebrated_on_28_february_in_common_years(year: int) -> None:
    expected = date(year, 2, 29) if calendar.isleap(year) else date(year, 2, 28)
    assert dates.anniversary(date(1996, 2, 29), year) == expected


@given(original=days, year=st.integers(1901, 2099))
def test_other_anniversaries_keep_their_month_and_day(original: date, year: int) -> None:
    if (original.month, original.day) == (2, 29):
        return
    assert dates.anniversary(original, year) == original.replace(year=year)


@given(day=days)
def test_the_sweep_finds_each_birthday_on_exactly_one_day_a_year(day: date) -> None:
    # Whatever the year, every (month, day) pair is looked up on exactly one date of that year.
    year = day.year
    seen: dict[tuple[int, int], int] = {}
    current = date(year, 1, 1)
    while current.year == year:
        for pair in dates.month_days_on(current):
            seen[pair] = seen.get(pair, 0) + 1
        current += timedelta(days=1)
    assert len(seen) == 366 and set(seen.values()) == {1}


@given(day=days, at=times, tz=zones)
def test_a_local_time_is_one_instant_on_that_local_day(day: date, at: time, tz: ZoneInfo) -> None:
    instant = dates.local_instant(day, at, tz)
    local = instant.astimezone(tz)
    assert local.date() == day
    # Either the wall time itself, or (in a spring-forward gap) a little later, never earlier.
    assert local.replace(tzinfo=None) >= datetime.combine(day, at) - timedelta(seconds=0)
    assert local.replace(tzinfo=None) - datetime.combine(day, at) <= timedelta(hours=1)


@given(day=days, at=times, tz=zones)
def test_daylight_saving_neither_skips_nor_doubles_a_daily_send(day: date, at: time, tz: ZoneInfo) -> None:
    # Consecutive days give strictly increasing instants, 22 to 26 hours apart: one send per local day.
    first = dates.local_instant(day, at, tz)
    second = dates.local_instant(day + timedelta(days=1), at, tz)
    assert timedelta(hours=22) <= second - first <= timedelta(hours=26)


@given(
    start=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2050, 1, 1), timezones=st.just(UTC)),
    count=st.integers(1, 60),
    tz=zones,
)
def test_day_durations_keep_the_local_wall_time(start: datetime, count: int, tz: ZoneInfo) -> None:
    moved = dates.add_duration(start, timedelta(days=count), tz)
    before, after = start.astimezone(tz), moved.astimezone(tz)
    assert after.date() == before.date() + timedelta(days=count)
    if dates.local_instant(after.date(), before.time(), tz).astimezone(tz).time() == before.time():
        assert after.time() == before.time()


@given(
    start=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2050, 1, 1), timezones=st.just(UTC)),
    hours=st.integers(1, 100).filter(lambda h: h % 24),
    tz=zones,
)
def test_hour_durations_are_elapsed_time(start: datetime, hours: int, tz: ZoneInfo) -> None:
    assert dates.add_duration(start, timedelta(hours=hours), tz) - start == timedelta(hours=hours)


@given(
    after=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2050, 1, 1), timezones=st.just(UTC)),
    at=times,
    tz=zones,
)
def test_next_local_time_is_the_first_one_not_before(after: datetime, at: time, tz: ZoneInfo) -> None:
    found = dates.next_local_time(after, at, tz)
    assert found >= after
    assert found - after < timedelta(hours=26)


def test_spring_forward_gap_moves_the_send_later_on_the_same_day() -> None:
    new_york = ZoneInfo("America/New_York")
    instant = dates.local_instant(date(2026, 3, 8), time(2, 30), new_york)  # 02:30 does not exist that day
    assert instant.astimezone(new_york).replace(tzinfo=None) == datetime(2026, 3, 8, 3, 30)


def test_autumn_fold_sends_once_at_the_first_occurrence() -> None:
    new_york = ZoneInfo("America/New_York")
    instant = dates.local_instant(date(2026, 11, 1), time(1, 30), new_york)  # 01:30 happens twice
    assert instant == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # EDT, the first one


def test_birthday_trigger_due_day_and_leap_birthdays() -> None:
    trigger = DateTrigger(date="customer.birthday", offset="-14d", at="09:00")
    from encore_retention.flows.triggers import due_day

    assert due_day(trigger, date(1996, 2, 29), 2027) == date(2027, 2, 14)
    assert due_day(trigger, date(1996, 2, 29), 2028) == date(2028, 2, 15)
    assert due_day(trigger, date(1990, 1, 5), 2027) == date(2026, 12, 22)

"""Pure date arithmetic for the card-center rules (ARCHITECTURE.md §6).

Nothing here reads a clock: every function takes ``now`` (an aware datetime) or a date. Campus time
is China Standard Time (UTC+8, no daylight saving), so a fixed offset is exact.
"""

from __future__ import annotations

import calendar
from collections.abc import Collection
from datetime import UTC, date, datetime, time, timedelta, timezone

CAMPUS_TZ = timezone(timedelta(hours=8), "CST")

#: REP-1: a replacement is possible 48 hours after the loss report.
REPLACEMENT_WAIT = timedelta(hours=48)
#: EXC-3: a faulty card's balance is frozen for 48 hours before the exchange completes.
FAULTY_FREEZE = timedelta(hours=48)
#: TERM-3: a temp card not extended within 3 months of expiry is terminated automatically.
AUTO_TERMINATION_MONTHS = 3
#: REP-4 / EXC-5: a smart card is handed over after two working days.
SMART_CARD_WORKING_DAYS = 2


def require_aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        msg = "onecard needs timezone-aware datetimes"
        raise ValueError(msg)
    return now


def local(now: datetime) -> datetime:
    """``now`` in campus time, for display and for date rules."""
    return require_aware(now).astimezone(CAMPUS_TZ)


def fmt_local(moment: datetime) -> str:
    """``2026-11-28 10:05`` in campus time — how operators read times."""
    return local(moment).strftime("%Y-%m-%d %H:%M")


def end_of_validity(last_valid_day: date) -> datetime:
    """A card valid *through* ``last_valid_day`` stops at the next campus midnight (TERM-2)."""
    return datetime.combine(last_valid_day + timedelta(days=1), time(0), CAMPUS_TZ).astimezone(UTC)


def add_months(moment: datetime, months: int) -> datetime:
    """Calendar months, clamping the day (31 Jan + 1 month = 28/29 Feb)."""
    month_index = moment.month - 1 + months
    year = moment.year + month_index // 12
    month = month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def add_working_days(start: date, days: int, holidays: Collection[date] = ()) -> date:
    """The date ``days`` working days after ``start`` (Mon-Fri, minus ``holidays``)."""
    current = start
    left = days
    while left > 0:
        current += timedelta(days=1)
        if current.weekday() < 5 and current not in holidays:
            left -= 1
    return current

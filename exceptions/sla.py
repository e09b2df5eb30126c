"""SLA clocks: due times in wall-clock or business hours, and time left.

A lane with ``business_hours`` set counts only the opening hours of working
days that are not holidays, in the business time zone from settings. Other
lanes count every hour.
"""

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

DAY_NAMES = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

# A calendar with no working day would never reach a due time. Ten years of
# days is far beyond any SLA, so the walk stops there with an error.
MAX_DAYS = 3660


@dataclass(frozen=True)
class BusinessCalendar:
    zone: ZoneInfo
    opens: time
    closes: time
    weekdays: frozenset[int]  # 0 is Monday, as in date.weekday()
    holidays: frozenset[date]

    def is_working_day(self, day: date) -> bool:
        return day.weekday() in self.weekdays and day not in self.holidays

    def opening_hours(self, day: date) -> tuple[datetime, datetime]:
        return (
            datetime.combine(day, self.opens, tzinfo=self.zone),
            datetime.combine(day, self.closes, tzinfo=self.zone),
        )


def parse_hours(text: str) -> tuple[time, time]:
    try:
        opens, closes = (time.fromisoformat(part.strip()) for part in text.split("-"))
    except ValueError:
        raise ImproperlyConfigured(
            f"MESHLINE_BUSINESS_HOURS={text!r} is invalid: use HH:MM-HH:MM, "
            "for example 09:00-17:00."
        ) from None
    if opens >= closes:
        raise ImproperlyConfigured(
            f"MESHLINE_BUSINESS_HOURS={text!r} closes before it opens."
        )
    return opens, closes


def parse_days(names) -> frozenset[int]:
    days = set()
    for name in names:
        key = name.strip().lower()[:3]
        if key not in DAY_NAMES:
            raise ImproperlyConfigured(
                f"MESHLINE_BUSINESS_DAYS contains {name!r}, which is not a day: "
                "use mon, tue, wed, thu, fri, sat or sun."
            )
        days.add(DAY_NAMES.index(key))
    if not days:
        raise ImproperlyConfigured("MESHLINE_BUSINESS_DAYS names no working day.")
    return frozenset(days)


def parse_holidays(values) -> frozenset[date]:
    holidays = set()
    for value in values:
        try:
            holidays.add(date.fromisoformat(value.strip()))
        except ValueError:
            raise ImproperlyConfigured(
                f"MESHLINE_HOLIDAYS contains {value!r}, which is not a YYYY-MM-DD date."
            ) from None
    return frozenset(holidays)


def calendar_from_settings() -> BusinessCalendar:
    """Build the business calendar; raise ImproperlyConfigured on a bad setting."""
    name = settings.MESHLINE_BUSINESS_TIME_ZONE
    try:
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ImproperlyConfigured(
            f"MESHLINE_BUSINESS_TIME_ZONE={name!r} is not an IANA time zone such as "
            "Europe/Berlin."
        ) from None
    opens, closes = parse_hours(settings.MESHLINE_BUSINESS_HOURS)
    return BusinessCalendar(
        zone=zone,
        opens=opens,
        closes=closes,
        weekdays=parse_days(settings.MESHLINE_BUSINESS_DAYS),
        holidays=parse_holidays(settings.MESHLINE_HOLIDAYS),
    )


def add_business_hours(start: datetime, hours, calendar: BusinessCalendar) -> datetime:
    """Return the UTC time at which ``hours`` business hours after ``start`` end."""
    remaining = timedelta(hours=float(hours))
    cursor = start.astimezone(calendar.zone)
    day = cursor.date()
    for _ in range(MAX_DAYS):
        if calendar.is_working_day(day):
            opens, closes = calendar.opening_hours(day)
            begin = max(cursor, opens)
            if begin < closes:
                available = closes - begin
                if remaining <= available:
                    return (begin + remaining).astimezone(UTC)
                remaining -= available
        day += timedelta(days=1)
        cursor = datetime.combine(day, time.min, tzinfo=calendar.zone)
    raise ImproperlyConfigured(
        f"No {hours} business hours fit in {MAX_DAYS} days after {start.isoformat()}: "
        "check MESHLINE_BUSINESS_DAYS and MESHLINE_HOLIDAYS."
    )


def due_at(
    opened_at: datetime, hours, *, business_hours: bool, calendar=None
) -> datetime:
    """Return the due time of a case opened at ``opened_at`` with ``hours`` of SLA."""
    if not business_hours:
        return opened_at + timedelta(hours=float(hours))
    return add_business_hours(opened_at, hours, calendar or calendar_from_settings())


def format_time_left(due: datetime, now: datetime) -> str:
    """Describe the time until ``due`` in words, such as "3 h 20 min left"."""
    seconds = int((due - now).total_seconds())
    text = format_duration(abs(seconds))
    return f"{text} left" if seconds >= 0 else f"overdue by {text}"


def format_duration(seconds: int) -> str:
    minutes = seconds // 60
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min"

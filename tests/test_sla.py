"""SLA clocks in business hours, with time zone, weekends and holidays."""

from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured

from exceptions import sla


@pytest.fixture
def berlin(settings):
    settings.MESHLINE_BUSINESS_TIME_ZONE = "Europe/Berlin"
    settings.MESHLINE_BUSINESS_HOURS = "09:00-17:00"
    settings.MESHLINE_BUSINESS_DAYS = ["mon", "tue", "wed", "thu", "fri"]
    settings.MESHLINE_HOLIDAYS = ["2026-12-25"]
    return sla.calendar_from_settings()


def test_sla_clock_across_weekend(berlin):
    # Friday 4 December 2026, 15:00 in Berlin (UTC+1): 2 h left on Friday,
    # then the weekend is skipped and 2 more hours run on Monday from 09:00.
    opened = datetime(2026, 12, 4, 14, 0, tzinfo=UTC)
    due = sla.add_business_hours(opened, 4, berlin)
    assert due == datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


def test_sla_clock_skips_holiday(berlin):
    # Thursday 24 December 16:00 Berlin: 1 h that day, Friday is a holiday,
    # the weekend follows, so the clock resumes on Monday 28 December.
    opened = datetime(2026, 12, 24, 15, 0, tzinfo=UTC)
    due = sla.add_business_hours(opened, 3, berlin)
    assert due == datetime(2026, 12, 28, 10, 0, tzinfo=UTC)


def test_sla_clock_before_opening(berlin):
    opened = datetime(2026, 12, 8, 5, 0, tzinfo=UTC)  # Tuesday 06:00 Berlin
    assert sla.add_business_hours(opened, 1, berlin) == datetime(
        2026, 12, 8, 9, 0, tzinfo=UTC
    )


def test_sla_clock_full_days(berlin):
    opened = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)  # Monday 09:00 Berlin
    due = sla.add_business_hours(opened, 16, berlin)
    assert due == datetime(2026, 12, 8, 16, 0, tzinfo=UTC)  # Tuesday 17:00 Berlin


def test_sla_clock_across_dst_change(settings):
    settings.MESHLINE_BUSINESS_TIME_ZONE = "Europe/Berlin"
    settings.MESHLINE_HOLIDAYS = []
    calendar = sla.calendar_from_settings()
    # Friday 27 March 2026 16:00 CET; clocks go forward on Sunday 29 March.
    opened = datetime(2026, 3, 27, 15, 0, tzinfo=UTC)
    due = sla.add_business_hours(opened, 2, calendar)
    # Monday 30 March 10:00 CEST is 08:00 UTC.
    assert due == datetime(2026, 3, 30, 8, 0, tzinfo=UTC)


def test_wall_clock_sla_ignores_calendar(berlin):
    opened = datetime(2026, 12, 4, 14, 0, tzinfo=UTC)
    due = sla.due_at(opened, 4, business_hours=False, calendar=berlin)
    assert due == opened + timedelta(hours=4)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MESHLINE_BUSINESS_HOURS", "17:00-09:00", "closes before it opens"),
        ("MESHLINE_BUSINESS_HOURS", "nine to five", "use HH:MM-HH:MM"),
        ("MESHLINE_BUSINESS_DAYS", ["mon", "funday"], "'funday', which is not a day"),
        ("MESHLINE_HOLIDAYS", ["25/12/2026"], "not a YYYY-MM-DD date"),
        ("MESHLINE_BUSINESS_TIME_ZONE", "Mars/Olympus", "not an IANA time zone"),
    ],
)
def test_bad_calendar_setting_rejected(settings, name, value, message):
    setattr(settings, name, value)
    with pytest.raises(ImproperlyConfigured) as error:
        sla.calendar_from_settings()
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (3 * 3600 + 20 * 60, "3 h 20 min left"),
        (59, "0 min left"),
        (2 * 86400 + 3600, "2 d 1 h left"),
        (-(90 * 60), "overdue by 1 h 30 min"),
    ],
)
def test_time_left_wording(seconds, text):
    now = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    assert sla.format_time_left(now + timedelta(seconds=seconds), now) == text

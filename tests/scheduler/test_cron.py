from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from taskmill.cron import ScheduleError, cron_times, interval_times, validate_cron, zone


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


DAY = (utc(2026, 6, 10), utc(2026, 6, 11))


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("* * * * *", 1440),
        ("*/15 * * * *", 96),
        ("0 * * * *", 24),
        ("30 9 * * *", 1),
        ("0 9-17 * * 1-5", 9),  # 2026-06-10 is a Wednesday
        ("0 0 * * 0", 0),  # Sundays only
        ("*/10 * * * * *", 8640),  # six fields: seconds first
    ],
)
def test_a_utc_day_has_the_expected_number_of_runs(expr: str, expected: int) -> None:
    assert len(cron_times(expr, zone("UTC"), *DAY)) == expected


def test_cron_is_read_in_the_tasks_timezone() -> None:
    (run,) = cron_times("30 9 * * *", zone("Asia/Kolkata"), *DAY)
    assert run == utc(2026, 6, 10, 4, 0)  # 09:30 IST is 04:00 UTC


def test_runs_fall_inside_the_half_open_window() -> None:
    runs = cron_times("0 * * * *", zone("UTC"), utc(2026, 6, 10, 3), utc(2026, 6, 10, 5))
    assert runs == [utc(2026, 6, 10, 3), utc(2026, 6, 10, 4)]


def test_a_daily_run_inside_the_spring_forward_gap_runs_once_after_the_gap() -> None:
    # New York jumps from 02:00 EST to 03:00 EDT on 2026-03-08: 02:30 does not exist that day.
    ny = zone("America/New_York")
    runs = cron_times("30 2 * * *", ny, utc(2026, 3, 7, 5), utc(2026, 3, 10, 4))
    assert runs == [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 30), utc(2026, 3, 9, 6, 30)]
    assert runs[1].astimezone(ny).strftime("%H:%M %Z") == "03:30 EDT"


def test_a_daily_run_inside_the_fall_back_overlap_runs_once() -> None:
    # New York repeats 01:00-02:00 on 2026-11-01.
    ny = zone("America/New_York")
    runs = cron_times("30 1 * * *", ny, utc(2026, 10, 31, 4), utc(2026, 11, 3, 5))
    assert runs == [utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]


def test_an_every_15_minutes_schedule_follows_real_time_across_dst_changes() -> None:
    ny = zone("America/New_York")
    # The local day of 2026-11-01 lasts 25 hours, that of 2026-03-08 lasts 23.
    fall = cron_times("*/15 * * * *", ny, utc(2026, 11, 1, 4), utc(2026, 11, 2, 5))
    spring = cron_times("*/15 * * * *", ny, utc(2026, 3, 8, 5), utc(2026, 3, 9, 4))
    assert len(fall) == 100
    assert len(spring) == 92
    for runs in (fall, spring):
        assert len(set(runs)) == len(runs)
        assert all(b - a == timedelta(minutes=15) for a, b in pairwise(runs))


def test_hourly_runs_on_a_fixed_hour_list_do_not_double_in_the_overlap() -> None:
    runs = cron_times(
        "0 0-3 * * *", zone("Europe/London"), utc(2026, 10, 25, 0) - timedelta(hours=1), utc(2026, 10, 25, 5)
    )
    # London falls back at 02:00 BST -> 01:00 GMT: 01:00 happens twice but runs once.
    local = [r.astimezone(zone("Europe/London")).strftime("%H:%M") for r in runs]
    assert local == ["00:00", "01:00", "02:00", "03:00"]


def test_an_interval_first_fires_one_interval_after_its_anchor() -> None:
    anchor = utc(2026, 6, 10, 0, 0, 0)
    assert interval_times(60, anchor, anchor, anchor + timedelta(minutes=3)) == [
        anchor + timedelta(minutes=m) for m in (1, 2)
    ]


def test_interval_runs_are_anchored() -> None:
    anchor = utc(2026, 6, 10, 0, 0, 7)
    runs = interval_times(3600, anchor, utc(2026, 6, 10, 1), utc(2026, 6, 10, 4))
    assert runs == [utc(2026, 6, 10, h, 0, 7) for h in (1, 2, 3)]


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("", "5 fields"),
        ("* * * *", "5 fields"),
        ("* * * * * * *", "5 fields"),
        ("61 * * * *", "invalid"),
        ("*/0 * * * *", "invalid"),
        ("0 0 30 2 *", "never fires"),
        ("* * * * \x00", "ASCII"),
        ("\u0661 * * * *", "ASCII"),
        ("* " * 5000, "256 characters"),
    ],
)
def test_bad_cron_expressions_are_refused_with_a_reason(expr: str, reason: str) -> None:
    with pytest.raises(ScheduleError, match=reason):
        validate_cron(expr)


def test_an_unknown_timezone_is_refused() -> None:
    with pytest.raises(ScheduleError, match="unknown timezone"):
        zone("Mars/Olympus_Mons")


# Windows on both sides of DST changes in zones with 1 h, 30 min and southern-hemisphere shifts, starting on whole
# seconds and in between; the margin-free scan (constant offset) must agree with the scan that pads every window.
ZONES = ["Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Pacific/Auckland", "UTC", "Asia/Kolkata"]
EXPRS = ["*/20 * * * * *", "*/7 * * * *", "30 2 * * *", "0 * * * *", "15 1-3 * * 0", "59 23 31 12 *"]


@pytest.mark.parametrize("tz_name", ZONES)
def test_the_margin_free_scan_agrees_with_the_padded_one(tz_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    import taskmill.cron

    tz = zone(tz_name)
    rng = random.Random(tz_name)
    changes = [datetime(2026, 3, 8, tzinfo=UTC), datetime(2026, 3, 29, tzinfo=UTC), datetime(2026, 4, 5, tzinfo=UTC),
               datetime(2026, 9, 27, tzinfo=UTC), datetime(2026, 10, 4, tzinfo=UTC), datetime(2026, 10, 25, tzinfo=UTC),
               datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 31, 12, tzinfo=UTC)]  # fmt: skip
    windows = []
    for day in changes:
        windows.append((day, day + timedelta(hours=1)))  # starting exactly on a firing of several
        for _ in range(4):
            start = day + timedelta(seconds=rng.randrange(-86400, 86400), microseconds=rng.choice([0, 500_000]))
            windows.append((start, start + timedelta(seconds=rng.choice([1, 59, 600, 3600, 7200]))))
    for expr in EXPRS:
        for start, end in windows:
            fast = cron_times(expr, tz, start, end)
            with monkeypatch.context() as m:
                m.setattr(taskmill.cron, "_fixed_offset", lambda *_: False)
                padded = cron_times(expr, tz, start, end)
            assert fast == padded, (expr, start, end)


def _local(expr: str, tz_name: str, start: datetime, days: float) -> list[str]:
    tz = zone(tz_name)
    return [
        t.astimezone(tz).strftime("%a %m-%d %H:%M") for t in cron_times(expr, tz, start, start + timedelta(days=days))
    ]


def test_a_moved_occurrence_never_leaves_the_hours_its_expression_names() -> None:
    """Pacific/Chatham jumps from 02:45 to 03:45 on 2026-09-27: the quarters of 02:45 to 03:30 do not exist. They
    used to run at 04:00-04:30 (the same offset past the gap), outside hours 2-3; the end of the gap is in them."""
    got = _local("*/15 2-3 * * *", "Pacific/Chatham", datetime(2026, 9, 26, 10, tzinfo=UTC), 1)
    assert got == ["Sun 09-27 02:00", "Sun 09-27 02:15", "Sun 09-27 02:30", "Sun 09-27 03:45"]
    # A daily run whose whole hour is missing still runs once, past the gap (the documented policy).
    assert _local("30 2 * * *", "Europe/Paris", datetime(2026, 3, 28, 12, tzinfo=UTC), 1) == ["Sun 03-29 03:30"]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("0 9 * * 5L", ["Fri 01-30 09:00", "Fri 02-27 09:00", "Fri 03-27 09:00", "Fri 04-24 09:00"]),
        ("0 9 LW * *", ["Fri 01-30 09:00", "Fri 02-27 09:00", "Tue 03-31 09:00", "Thu 04-30 09:00"]),
        ("0 9 L * *", ["Sat 01-31 09:00", "Sat 02-28 09:00", "Tue 03-31 09:00", "Thu 04-30 09:00"]),
        ("0 9 1W * *", ["Thu 01-01 09:00", "Mon 02-02 09:00", "Mon 03-02 09:00", "Wed 04-01 09:00"]),
        ("@monthly", ["Thu 01-01 00:00", "Sun 02-01 00:00", "Sun 03-01 00:00", "Wed 04-01 00:00"]),
    ],
)
def test_last_and_weekday_forms_and_aliases_fire_in_their_usual_meanings(expr: str, expected: list[str]) -> None:
    validate_cron(expr)
    assert _local(expr, "UTC", datetime(2026, 1, 1, tzinfo=UTC), 120) == expected


@pytest.mark.parametrize(("expr", "times"), [("@hourly", 24), ("@daily", 1), ("@midnight", 1), ("@yearly", 0)])
def test_aliases_fire_as_their_expressions(expr: str, times: int) -> None:
    assert (
        len(cron_times(expr, zone("UTC"), datetime(2026, 6, 10, tzinfo=UTC), datetime(2026, 6, 11, tzinfo=UTC)))
        == times
    )


def test_lw_with_a_day_of_week_is_refused() -> None:
    with pytest.raises(ScheduleError, match="LW cannot go with a day of week"):
        validate_cron("0 9 LW * 1")

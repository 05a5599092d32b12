"""POST /schedule-preview: a schedule in words and its next runs, computed by the scheduler's own cron code."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from api.routes.preview import describe_cron
from taskmill.cron import cron_times, next_times, zone
from tests.api.conftest import bearer

READ = bearer("tasks:read")


async def preview(client: httpx.AsyncClient, schedule: dict[str, Any], **query: Any) -> httpx.Response:
    return await client.post("/schedule-preview", json=schedule, params=query, headers=READ)


def instants(body: dict[str, Any]) -> list[datetime]:
    return [datetime.fromisoformat(t) for t in body["next_runs"]]


def gaps(runs: list[datetime]) -> list[timedelta]:
    return [b - a for a, b in itertools.pairwise(runs)]


async def test_a_five_field_cron_is_described_and_its_next_five_runs_are_listed_in_utc(
    client: httpx.AsyncClient,
) -> None:
    before = datetime.now(UTC)
    response = await preview(client, {"kind": "cron", "cron": "0 2 * * *"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["description"] == "At 02:00 AM"
    assert all(t.endswith("Z") for t in body["next_runs"])
    runs = instants(body)
    assert len(runs) == 5
    assert before < runs[0] <= before + timedelta(days=1)
    assert all((t.hour, t.minute, t.second) == (2, 0, 0) for t in runs)
    assert gaps(runs) == [timedelta(days=1)] * 4


async def test_a_six_field_cron_reads_seconds_first(client: httpx.AsyncClient) -> None:
    daily = (await preview(client, {"kind": "cron", "cron": "30 0 2 * * *"})).json()
    assert daily["description"] == "At 02:00:30 AM"
    assert all((t.hour, t.minute, t.second) == (2, 0, 30) for t in instants(daily))

    often = (await preview(client, {"kind": "cron", "cron": "*/10 * * * * *"}, count=12)).json()
    assert often["description"] == "Every 10 seconds"
    runs = instants(often)
    assert len(runs) == 12 and {t.second % 10 for t in runs} == {0}
    assert gaps(runs) == [timedelta(seconds=10)] * 11


def test_a_six_field_cron_with_a_question_mark_is_not_mistaken_for_one_with_a_year() -> None:
    # cron-descriptor alone would read "0 0 9 ? * MON" as minute 0, hour 0, ... year MON.
    assert describe_cron("0 0 9 ? * MON") == "At 09:00 AM, only on Monday"
    assert describe_cron("0 9 ? * MON") == "At 09:00 AM, only on Monday"


async def test_a_cron_in_a_timezone_follows_its_dst_change_without_skipping_or_doubling(
    client: httpx.AsyncClient,
) -> None:
    # Paris springs forward on 2027-03-28 at 02:00: 02:30 does not exist that day and runs at 03:30 CEST, once.
    spring = {"kind": "cron", "cron": "30 2 * * *", "timezone": "Europe/Paris"}
    response = await preview(client, spring, count=4, start="2027-03-26T12:00:00Z")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["description"] == "At 02:30 AM (Europe/Paris time)"
    assert body["next_runs"] == [
        "2027-03-27T01:30:00Z",  # 02:30 CET
        "2027-03-28T01:30:00Z",  # the gap: 03:30 CEST
        "2027-03-29T00:30:00Z",  # 02:30 CEST
        "2027-03-30T00:30:00Z",
    ]
    # It falls back on 2027-10-31 at 03:00: 02:30 happens twice and runs at the first, once.
    response = await preview(client, spring, count=3, start="2027-10-30T12:00:00Z")
    assert response.json()["next_runs"] == ["2027-10-31T00:30:00Z", "2027-11-01T01:30:00Z", "2027-11-02T01:30:00Z"]


async def test_a_timezone_without_dst_shifts_every_run_by_its_offset(client: httpx.AsyncClient) -> None:
    body = (await preview(client, {"kind": "cron", "cron": "0 9 * * *", "timezone": "Asia/Kolkata"})).json()
    assert {(t.hour, t.minute) for t in instants(body)} == {(3, 30)}


async def test_an_interval_runs_every_n_seconds_from_when_it_is_saved(client: httpx.AsyncClient) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    response = await preview(client, {"kind": "interval", "every_seconds": 900}, count=3)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["description"] == "Every 15 minutes, from when it is saved"
    runs = instants(body)
    assert before + timedelta(seconds=900) <= runs[0] <= before + timedelta(seconds=960)
    assert gaps(runs) == [timedelta(minutes=15)] * 2


async def test_a_one_off_runs_once_at_its_time_and_an_immediate_one_now(client: httpx.AsyncClient) -> None:
    at = (datetime.now(UTC) + timedelta(hours=5)).replace(microsecond=0)
    once = (await preview(client, {"kind": "once", "at": at.isoformat()})).json()
    assert instants(once) == [at]
    assert once["description"] == f"Once, at {at:%Y-%m-%d %H:%M:%S} UTC"

    before = datetime.now(UTC) - timedelta(seconds=1)
    now = (await preview(client, {"kind": "immediate"})).json()
    assert now["description"] == "Once, as soon as it is saved"
    assert len(now["next_runs"]) == 1 and before <= instants(now)[0] <= datetime.now(UTC)


@pytest.mark.parametrize(
    ("schedule", "query", "field", "reason"),
    [
        ({"kind": "cron", "cron": "61 * * * *"}, {}, "cron", "61 is out of range"),
        ({"kind": "cron", "cron": "* * * *"}, {}, "cron", "5 fields"),
        ({"kind": "cron", "cron": "0 0 30 2 *"}, {}, "cron", "never fires"),
        ({"kind": "cron", "cron": "* * * * *", "timezone": "Mars/Base"}, {}, "timezone", "unknown timezone"),
        ({"kind": "cron"}, {}, "(body)", "a cron schedule needs `cron`"),
        ({"kind": "interval", "every_seconds": 0}, {}, "every_seconds", "greater than or equal to 1"),
        ({"kind": "once", "at": "2020-01-01T00:00:00Z"}, {}, "at", "in the past"),
        ({"kind": "once", "at": "2030-01-01T00:00:00"}, {}, "at", "timezone offset"),
        ({"kind": "weekly"}, {}, "kind", "Input should be"),
        ({"kind": "cron", "cron": "* * * * *", "every": 5}, {}, "every", "Extra inputs"),
        ({"kind": "cron", "cron": "* * * * *"}, {"count": 0}, "count", "greater than or equal to 1"),
        ({"kind": "cron", "cron": "* * * * *"}, {"count": 51}, "count", "less than or equal to 50"),
        ({"kind": "cron", "cron": "* * * * *"}, {"start": "2026-01-01T00:00:00"}, "start", "timezone offset"),
        ({"kind": "cron", "cron": "* * * * *"}, {"start": "9999-12-31T23:00:00-05:00"}, "start", "days from now"),
    ],
)
async def test_a_bad_schedule_is_a_422_naming_the_field(
    client: httpx.AsyncClient, schedule: dict[str, Any], query: dict[str, Any], field: str, reason: str
) -> None:
    response = await preview(client, schedule, **query)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    errors = response.json()["errors"]
    assert [e["field"] for e in errors] == [field]
    assert reason in errors[0]["reason"]


async def test_the_preview_needs_a_token_with_read_scope(client: httpx.AsyncClient) -> None:
    schedule = {"kind": "cron", "cron": "* * * * *"}
    assert (await client.post("/schedule-preview", json=schedule)).status_code == 401
    other = bearer("admin:nothing")
    assert (await client.post("/schedule-preview", json=schedule, headers=other)).status_code == 403


@pytest.mark.parametrize(
    ("expr", "timezone", "now", "span"),
    [
        ("30 2 * * *", "Europe/Paris", "2027-03-27T12:00:00+00:00", timedelta(days=4)),  # spring forward
        ("30 2 * * *", "Europe/Paris", "2027-10-30T12:00:00+00:00", timedelta(days=4)),  # fall back
        ("*/20 * * * *", "America/New_York", "2027-11-07T04:00:00+00:00", timedelta(hours=4)),  # hourly, repeated hour
        ("* * * 1 1 *", "Europe/Paris", "2026-12-31T22:58:00+00:00", timedelta(minutes=5)),  # every second of a day
        ("0 0 29 2 *", "UTC", "2027-01-01T00:00:00+00:00", timedelta(days=366 * 9)),  # leap days only
    ],
)
def test_the_next_runs_are_the_schedulers_own_from_any_start(
    expr: str, timezone: str, now: str, span: timedelta
) -> None:
    start = datetime.fromisoformat(now)
    expected = cron_times(expr, zone(timezone), start, start + span)
    assert expected, "the span holds runs"
    assert next_times(expr, zone(timezone), start, len(expected)) == expected

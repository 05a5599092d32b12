"""Bad input on every endpoint that takes a task (POST /tasks, PUT /tasks/{id}, POST /tasks/bulk) and on the query
parameters: each malformed schedule, unknown timezone or unstorable value is a 422 problem naming the field and a
reason a person understands, and nothing is stored. One API and database serve the whole module (the cases only
read, or are refused), so several hundred cases take a few seconds."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio

from api import cursors
from tests.api.conftest import Api, bearer, module_api

pytestmark = pytest.mark.asyncio(loop_scope="module")

WRITE = bearer()
GOOD = {"name": "fine", "type": "noop", "active": False}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api(template_db: str) -> AsyncIterator[Api]:
    async with module_api(template_db) as made:
        yield made


ENDPOINTS = ["POST /tasks", "PUT /tasks/{id}", "POST /tasks/bulk"]


async def send(api: Api, endpoint: str, body: bytes) -> httpx.Response:
    """`body` is one task as JSON; the bulk call sends it as item 1, after a good one."""
    headers = {**WRITE, "content-type": "application/json"}
    if endpoint == "POST /tasks":
        return await api.client.post("/tasks", content=body, headers=headers)
    if endpoint == "PUT /tasks/{id}":
        return await api.client.put(f"/tasks/{api.existing}", content=body, headers=headers)
    return await api.client.post(
        "/tasks/bulk", content=b"[" + json.dumps(GOOD).encode() + b"," + body + b"]", headers=headers
    )


async def tasks_table(db: asyncpg.Connection) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await db.fetch("SELECT * FROM tasks ORDER BY id")]


def assert_problem(response: httpx.Response, field: str, reason: str) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    errors = response.json()["errors"]
    assert any(e["field"] == field and reason in e["reason"] for e in errors), errors


async def assert_refused(api: Api, endpoint: str, body: bytes, field: str, reason: str) -> None:
    before = await tasks_table(api.db)
    response = await send(api, endpoint, body)
    assert_problem(response, f"1.{field}" if endpoint == "POST /tasks/bulk" else field, reason)
    assert await tasks_table(api.db) == before


def cron_task(cron: str, timezone: str = "UTC") -> bytes:
    return json.dumps(
        {"name": "c", "type": "noop", "schedule": {"kind": "cron", "cron": cron, "timezone": timezone}}
    ).encode()


BAD_CRONS = [
    ("", "5 fields (6 with seconds first), not 0"),
    ("   ", "5 fields (6 with seconds first), not 0"),
    ("* * * *", "not 4"),
    ("* * * * * * *", "not 7"),
    ("@fortnightly", "not 1"),  # not an alias cron knows (@hourly and its kin are)
    ("61 * * * *", "minute: 61 is out of range 0-59"),
    ("0 24 * * *", "hour: 24 is out of range 0-23"),
    ("0 0 0 * *", "day of month: 0 is out of range 1-31"),
    ("0 0 1 13 *", "month: 13 is out of range 1-12"),
    ("0 0 * * 8", "day of week: 8 is out of range 0-7"),
    ("60 * * * * *", "second: 60 is out of range 0-59"),
    ("0-100 * * * *", "minute: 100 is out of range"),
    ("99999999999999999999 * * * *", "minute: 99999999999999999999 is out of range"),
    ("*/0 * * * *", "minute: the step '0' is not a whole number of at least 1"),
    ("0-59/0 * * * *", "the step '0'"),
    ("*/x * * * *", "the step 'x'"),
    ("-1 * * * *", "negative numbers"),
    ("1,,2 * * * *", "invalid cron expression"),
    ("% * * * *", "invalid cron expression"),
    ("0 0 30 2 *", "never fires"),
    ("0 0 31 4 *", "never fires"),
    ("* " * 5120, "at most 256 characters"),  # 10 KB
    ("* * * * *\x00", "'\\x00' at position 9 is not allowed"),
    ("\x00", "'\\x00' at position 0"),
    ("\u0661 * * * *", "digits are 0-9"),  # ARABIC-INDIC DIGIT ONE, which int() reads as 1
    ("\uff15 * * * *", "digits are 0-9"),  # FULLWIDTH DIGIT FIVE
    ("\u0966 0 * * *", "digits are 0-9"),  # DEVANAGARI DIGIT ZERO
    ("*\t* * * *", "'\\t' at position 1 is not allowed: a cron expression is printable ASCII, fields are separated"),
    ("* * * * *\n", "'\\n' at position 9"),
    ("* * * * *\r\n* * * * *", "'\\r'"),
    ("\x0b* * * * *", "'\\x0b'"),
    ("*\u00a0* * * *", "'\\xa0'"),  # NO-BREAK SPACE
    ("* *\u2003* * *", "'\\u2003'"),  # EM SPACE
    ("*\u200b * * * *", "'\\u200b'"),  # ZERO WIDTH SPACE
    (" * * * * *", "cannot start or end with spaces"),
    ("* * * * * ", "cannot start or end with spaces"),
    ("R * * * *", "minute: hashed (H) and random (R) values are not supported"),  # differs between processes
    ("0 H * * *", "hour: hashed (H)"),
    ("0 0 * * 5#6", "invalid cron expression"),
]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(("cron", "reason"), BAD_CRONS, ids=[repr(c[:24]) for c, _ in BAD_CRONS])
async def test_a_malformed_cron_is_422_naming_schedule_cron(api: Api, endpoint: str, cron: str, reason: str) -> None:
    await assert_refused(api, endpoint, cron_task(cron), "schedule.cron", reason)


BAD_ZONES = [
    "",
    "\x00",
    "UTC\x00",
    "Mars/Olympus_Mons",
    "../../etc/passwd",
    "/etc/localtime",
    "/usr/share/zoneinfo/UTC",
    "Europe/../Europe/Paris",
    "Europe//Paris",
    "Europe",
    "europe/paris",
    " UTC",
    "UTC ",
    "Europe/Paris\n",
    "+05:00",
    "GMT+5",
    "zone.tab",
    "tzdata.zi",
    "\u0395\u03c5\u03c1\u03ce\u03c0\u03b7/\u0391\u03b8\u03ae\u03bd\u03b1",
    # Opened by ZoneInfo (TZif files under the zone path), but not names of the time zone database.
    "localtime",
    "posixrules",
    "right/UTC",
    "posix/Europe/Paris",
]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("timezone", BAD_ZONES)
async def test_an_unknown_or_unsafe_timezone_is_422_naming_schedule_timezone(
    api: Api, endpoint: str, timezone: str
) -> None:
    await assert_refused(api, endpoint, cron_task("* * * * *", timezone), "schedule.timezone", "unknown timezone")


async def test_an_overlong_timezone_is_422_naming_schedule_timezone(api: Api) -> None:
    await assert_refused(
        api, "POST /tasks", cron_task("* * * * *", "A/" + "b" * 200), "schedule.timezone", "at most 64"
    )


GOOD_SCHEDULES = [
    ("*/15 * * * *", "UTC"),
    ("0 9 * * mon-fri", "Europe/Paris"),
    ("0  9 * * 1", "America/Argentina/Buenos_Aires"),  # two spaces between fields, as crontabs align them
    ("0 0 L * *", "Asia/Kolkata"),
    ("0 0 * * 5#3", "Etc/GMT+5"),
    ("0 0 29 2 *", "US/Pacific"),  # fires in leap years only, still within five years
    ("*/10 * * * * *", "Factory"),  # six fields, seconds first
]


@pytest.mark.parametrize(("cron", "timezone"), GOOD_SCHEDULES)
async def test_valid_cron_and_timezones_are_accepted_and_stored_as_given(api: Api, cron: str, timezone: str) -> None:
    body = {
        "name": f"ok {cron} {timezone}",
        "type": "noop",
        "active": False,
        "schedule": {"kind": "cron", "cron": cron, "timezone": timezone},
    }
    response = await api.client.post("/tasks", json=body, headers=WRITE)
    assert response.status_code == 201, response.text
    row = await api.db.fetchrow("SELECT cron, timezone FROM tasks WHERE id = $1", response.json()["id"])
    assert row is not None and (row["cron"], row["timezone"]) == (cron, timezone)


UNSTORABLE_PAYLOADS = [
    (b'{"x": "a\\u0000b"}', "x: a string cannot contain NUL"),
    (b'{"a\\u0000": 1}', "(key): a string cannot contain NUL"),
    (b'{"argv": ["ok", {"deep": ["\\u0000"]}]}', "argv[1].deep[0]: a string cannot contain NUL"),
    (b'{"x": "\\ud800"}', "x: a string cannot contain an unpaired surrogate"),
    (b'{"x": "\\udc00 tail"}', "unpaired surrogate"),
    (b'{"x": 1e999}', "x: NaN and Infinity are not JSON numbers"),
    (b'{"x": [-1e999]}', "x[0]: NaN and Infinity"),
    (b'{"x": NaN}', "NaN and Infinity"),
    (b'{"x": Infinity}', "NaN and Infinity"),
]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(("payload", "reason"), UNSTORABLE_PAYLOADS)
async def test_a_payload_postgresql_cannot_hold_is_422_naming_payload(
    api: Api, endpoint: str, payload: bytes, reason: str
) -> None:
    body = b'{"name": "p", "type": "noop", "payload": ' + payload + b"}"
    await assert_refused(api, endpoint, body, "payload", reason)


SMUGGLING_PAYLOADS = [
    ("command", {"argv": ["env"], "env": {"A=B": "x"}}, "payload", "env: Value error, environment variable name 'A=B'"),
    ("command", {"argv": ["env"], "env": {"": "x"}}, "payload", "must be non-empty, without '=' or NUL"),
    (
        "http",
        {"url": "http://h/", "headers": {"X-A": "1\r\nX-Injected: 1"}},
        "payload",
        "headers: Value error, header 'X-A' cannot contain CR, LF or NUL",
    ),
    ("http", {"url": "http://h/", "headers": {"X A": "1"}}, "payload", "'X A' is not an HTTP token"),
    ("http", {"url": "http://h/", "headers": {"X-A:": "1"}}, "payload", "is not an HTTP token"),
]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(("kind", "payload", "field", "reason"), SMUGGLING_PAYLOADS)
async def test_env_names_and_headers_that_would_smuggle_are_422_at_creation(
    api: Api, endpoint: str, kind: str, payload: dict[str, object], field: str, reason: str
) -> None:
    body = json.dumps({"name": "s", "type": kind, "payload": payload}).encode()
    await assert_refused(api, endpoint, body, field, reason)


async def test_an_escaped_backslash_u0000_is_text_and_is_stored_byte_exact(api: Api) -> None:
    body = b'{"name": "backslash", "type": "noop", "active": false, "payload": {"x": "\\\\u0000"}}'
    response = await api.client.post("/tasks", content=body, headers={**WRITE, "content-type": "application/json"})
    assert response.status_code == 201, response.text
    assert response.json()["payload"] == {"x": "\\u0000"}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("at", ["9999-12-31T23:59:59-12:00", "9999-12-31T23:30:00-01:00"])
async def test_a_one_off_time_past_the_calendar_in_utc_is_422_naming_schedule_at(
    api: Api, endpoint: str, at: str
) -> None:
    body = json.dumps({"name": "o", "type": "noop", "schedule": {"kind": "once", "at": at}}).encode()
    await assert_refused(api, endpoint, body, "schedule.at", "out of range")


@pytest.mark.parametrize("name", ["since", "until", "before"])
@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"])
async def test_a_run_filter_time_past_the_calendar_is_422_naming_it(api: Api, name: str, value: str) -> None:
    response = await api.client.get(f"/tasks/{api.existing}/runs", params={name: value}, headers=WRITE)
    assert_problem(response, name, "out of range")


@pytest.mark.parametrize(
    "value",
    [["\x00", 1], ["a\x00b", 2]],
)
@pytest.mark.parametrize("sort", ["name", "type", "created_at"])
async def test_a_forged_cursor_holding_nul_is_422_naming_cursor(api: Api, value: list[Any], sort: str) -> None:
    response = await api.client.get("/tasks", params={"cursor": cursors.encode(*value), "sort": sort}, headers=WRITE)
    assert_problem(response, "cursor", "is not a cursor this API returned")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            b'{"name": "deep", "type": "noop", "payload": {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
            "nested too deeply",
        ),
        (b'{"name": "long", "type": "noop", "payload": {"n": ' + b"9" * 5000 + b"}}", "more than 4300 digits"),
    ],
    ids=["nested", "long-number"],
)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_json_the_parser_gives_up_on_is_400_saying_why(api: Api, endpoint: str, body: bytes, reason: str) -> None:
    before = await tasks_table(api.db)
    response = await send(api, endpoint, body)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert reason in response.json()["detail"]
    assert await tasks_table(api.db) == before

"""Processors dedicated to types (`--types`) coming and going under a running stack (issue 22 item 6): a run never
waits on a queue no live processor consumes. When the routing changes, what waits is taken within seconds by the
processors its type goes to now: after the general processors left and a dedicated one came, after the last
dedicated processor of a type stopped or was killed (its row then looks live for 30 s more), and for a retry that
falls due after its dedicated processors left.

The rescuer's queued lease is five minutes here, as by default (the harness's is 3 s): it must not be what brings
a run out. Command tasks, so that each start is counted (tests/faults/target.py): every run ran exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from datetime import datetime, timedelta

import asyncpg
import pytest

from taskmill.models import Task
from tests.faults.harness import RoleProcess, Stack
from tests.helpers import new_task, wait_until
from tests.transports import BOTH

LONG_LEASE = "300"
# How old the publishers' view of the dedicated processors may be (taskmill/transport/routes.py), and so, over
# PostgreSQL, the general processors' (processor/pg_intake.py): a run made sooner may go to a general processor.
ROUTES_S = 2.5
# From a change of the routing (a processor ready, or gone) to the start of what waited for it.
WITHIN_S = 5.0


async def _now(db: asyncpg.Connection) -> datetime:
    now: datetime = await db.fetchval("SELECT clock_timestamp()")
    return now


async def _starts(db: asyncpg.Connection, tasks: Collection[Task]) -> dict[int, list[tuple[datetime, str]]]:
    """(when, worker) of each start of each task's run, by task id, the first first."""
    rows = await db.fetch(
        "SELECT a.task_id, a.at, a.worker FROM run_audit a WHERE a.task_id = ANY($1::bigint[]) "
        "AND a.to_status = 'running' ORDER BY a.at",
        [t.id for t in tasks],
    )
    found: dict[int, list[tuple[datetime, str]]] = {t.id: [] for t in tasks}
    for r in rows:
        found[r["task_id"]].append((r["at"], r["worker"]))
    return found


async def _wait_started(stack: Stack, db: asyncpg.Connection, tasks: Collection[Task], timeout: float = 30) -> None:
    async def started() -> bool:
        return all((await _starts(db, tasks)).values())

    try:
        await wait_until(started, timeout, 0.1, f"{len(tasks)} runs to start")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {await _starts(db, tasks)}\n{stack.logs()}") from None


async def _assert_started_soon(
    stack: Stack, db: asyncpg.Connection, tasks: Collection[Task], since: datetime, on: RoleProcess
) -> None:
    """Each task's run started on `on` within WITHIN_S of `since`, once."""
    await _wait_started(stack, db, tasks, timeout=WITHIN_S + 25)
    waits = []
    for task_id, starts in (await _starts(db, tasks)).items():
        assert len(starts) == 1, f"task {task_id} started {len(starts)} times: {starts}\n{stack.logs()}"
        [(at, worker)] = starts
        assert worker == on.worker, f"task {task_id} started on {worker}, not on {on.name}\n{stack.logs()}"
        waits.append(waited := (at - since).total_seconds())
        assert waited <= WITHIN_S, f"task {task_id} started {waited:.1f} s after the change\n{stack.logs()}"
    print(f"started {min(waits):.2f}-{max(waits):.2f} s after the change")


async def _queued(db: asyncpg.Connection, tasks: Collection[Task]) -> bool:
    statuses = await db.fetch(
        "SELECT status::text FROM task_schedule WHERE task_id = ANY($1::bigint[])", [t.id for t in tasks]
    )
    return len(statuses) == len(tasks) and all(r[0] == "queued" for r in statuses)


async def _nothing_left(stack: Stack) -> None:
    """No message waits in any queue of the stack (over RabbitMQ: not in the queue of a gone dedicated processor
    either): nothing was stranded, and what was moved was acked where it was. (The dead letters are `check`'s.)"""
    left = {}
    for queue, (ready, _) in (await stack.broker.unsettled()).items():
        if queue == stack.broker.names.dead_queue:
            continue
        # rabbitmqctl counts a quorum queue's messages on a tick of its own: a passive declare says it as it is.
        depth = await stack.broker.depth(queue)
        if n := (depth[0] if depth is not None else ready):
            left[queue] = n
    assert not left, f"messages left: {left}"


async def _commands(stack: Stack, db: asyncpg.Connection, name: str, n: int, priority: int = 0) -> list[Task]:
    return [await new_task(db, f"{name}-{i}", "command", stack.commands.payload(), priority=priority) for i in range(n)]


@BOTH
@pytest.mark.parametrize("stop", ["terminate", "kill"])
async def test_a_run_made_once_a_dedicated_processor_is_ready_starts_within_seconds_when_no_general_one_is_left(
    stack: Stack, db: asyncpg.Connection, stop: str
) -> None:
    # The distributor reads the routes for its pressure gauges every half second: its view, when the dedicated
    # processor comes, is then as old as a view may be, as it is in 40 % of the cases by the default 5 s.
    await stack.start(distributor=1, TASKMILL_QUEUED_LEASE_S=LONG_LEASE, TASKMILL_PRESSURE_INTERVAL_S="0.5")
    await stack.start(processor=1, TASKMILL_QUEUED_LEASE_S=LONG_LEASE)
    [general] = stack.live("processor")
    await (general.terminate() if stop == "terminate" else general.kill())
    dedicated = await stack.add("processor", "--types", "command", TASKMILL_QUEUED_LEASE_S=LONG_LEASE)
    since = await _now(db)
    made = [*await _commands(stack, db, "normal", 2), *await _commands(stack, db, "urgent", 1, priority=5)]

    await _assert_started_soon(stack, db, made, since, on=dedicated)
    await stack.quiesce()
    await _nothing_left(stack)
    await stack.check({t.id: 1 for t in made})


@BOTH
async def test_runs_waiting_in_the_general_queue_go_to_a_dedicated_processor_that_comes_when_no_general_one_is_left(
    stack: Stack, db: asyncpg.Connection
) -> None:
    await stack.start(distributor=1, processor=1, TASKMILL_QUEUED_LEASE_S=LONG_LEASE)
    [general] = stack.live("processor")
    await general.terminate()
    # Published while nothing consumes the general queue: twelve at once travel two to a message (coalesced).
    made = [*await _commands(stack, db, "normal", 12), *await _commands(stack, db, "urgent", 2, priority=7)]
    others = [await new_task(db, f"sleep-{i}", "sleep", {"ms": 1}) for i in range(3)]
    await wait_until(lambda: _queued(db, [*made, *others]), 15, 0.1, "every run to be published")

    dedicated = await stack.add("processor", "--types", "command", TASKMILL_QUEUED_LEASE_S=LONG_LEASE)
    since = await _now(db)
    await _assert_started_soon(stack, db, made, since, on=dedicated)
    assert await _queued(db, others), "a run of a type no live processor serves started"

    await stack.add(
        "processor", TASKMILL_QUEUED_LEASE_S=LONG_LEASE
    )  # the sleep runs waited for a processor that serves every type
    await stack.quiesce()
    await _nothing_left(stack)
    await stack.check({t.id: 1 for t in [*made, *others]})


@BOTH
async def test_runs_of_a_dedicated_type_left_in_the_general_queue_go_to_its_processor_when_the_last_general_one_stops(
    stack: Stack, db: asyncpg.Connection
) -> None:
    await stack.start(distributor=1, processor=1, TASKMILL_CONCURRENCY="1", TASKMILL_QUEUED_LEASE_S=LONG_LEASE)
    [general] = stack.live("processor")
    # The general processor busy with a long run; commands published meanwhile wait in the general queue.
    busy = await new_task(db, "busy", "sleep", {"ms": 8000}, timeout_seconds=12)
    await _wait_started(stack, db, [busy])
    made = [*await _commands(stack, db, "normal", 4), *await _commands(stack, db, "urgent", 2, priority=6)]
    await wait_until(lambda: _queued(db, made), 15, 0.1, "the commands to be published")
    await stack.add("processor", "--types", "command", TASKMILL_QUEUED_LEASE_S=LONG_LEASE)
    await asyncio.sleep(ROUTES_S)
    if stack.settings.transport_name == "amqp":  # over PostgreSQL the dedicated processor claims them at once
        assert not any((await _starts(db, made)).values()), "a command left the general queue while it was consumed"

    # It stops: it hands back at once the command it held for its slot, and finishes its long run meanwhile.
    since = await _now(db)
    await general.terminate()
    [dedicated] = [p for p in stack.live("processor") if p.types]
    await _assert_started_soon(stack, db, made, since, on=dedicated)
    await stack.quiesce()
    await _nothing_left(stack)
    await stack.check({t.id: 1 for t in [busy, *made]})


@BOTH
@pytest.mark.parametrize("stop", ["terminate", "kill"])
async def test_runs_waiting_for_the_last_dedicated_processor_of_their_type_go_to_the_general_ones_when_it_goes(
    stack: Stack, db: asyncpg.Connection, stop: str
) -> None:
    await stack.start(distributor=1, processor=1, TASKMILL_QUEUED_LEASE_S=LONG_LEASE)
    [general] = stack.live("processor")
    dedicated = await stack.add(
        "processor", "--types", "command", TASKMILL_CONCURRENCY="1", TASKMILL_QUEUED_LEASE_S=LONG_LEASE
    )
    await asyncio.sleep(ROUTES_S)
    # The first run holds the dedicated processor's one slot, and the next ones wait in its queue (its urgent lane
    # for the urgent ones). It runs longer than WITHIN_S: the processor stopping finishes it, and the others must
    # not wait for that.
    first = await new_task(db, "first", "command", stack.commands.payload(sleep_s=8), timeout_seconds=12)
    await _wait_started(stack, db, [first])
    assert (await _starts(db, [first]))[first.id][0][1] == dedicated.worker
    waiting = [*await _commands(stack, db, "normal", 4), *await _commands(stack, db, "urgent", 2, priority=3)]
    await wait_until(lambda: _queued(db, waiting), 15, 0.1, "the waiting runs to be published")
    assert not any((await _starts(db, waiting)).values()), "a run did not wait for the busy dedicated processor"

    # Killed, it leaves its row looking live for 30 s. Stopped, it stops consuming and leaves the processors table
    # at once, hands back what waited for its slot, and finishes its run (its consumer stays on the queue until
    # then: it holds the run's delivery).
    since = await _now(db)
    await (dedicated.terminate() if stop == "terminate" else dedicated.kill())
    await _assert_started_soon(stack, db, waiting, since, on=general)
    await stack.quiesce()
    await _nothing_left(stack)
    # Killed mid-run, the first run is rescued after its lease and starts its command again: at least once.
    killed = {(await stack.run_of(first.id))["id"]} if stop == "kill" else set()
    await stack.check({t.id: 1 for t in [first, *waiting]}, repeats_allowed=killed)


@BOTH
async def test_a_retry_that_falls_due_after_its_dedicated_processors_left_runs_on_a_general_one(
    stack: Stack, db: asyncpg.Connection
) -> None:
    await stack.start(distributor=1, processor=1, TASKMILL_QUEUED_LEASE_S=LONG_LEASE)
    [general] = stack.live("processor")
    dedicated = await stack.add("processor", "--types", "command", TASKMILL_QUEUED_LEASE_S=LONG_LEASE)
    await asyncio.sleep(ROUTES_S)
    warm = await new_task(db, "warm", "command", stack.commands.payload())
    await _wait_started(stack, db, [warm])
    assert (await _starts(db, [warm]))[warm.id][0][1] == dedicated.worker

    # The retry waits out its delay (over RabbitMQ in a delay queue, keyed for the dedicated processors' queue).
    failing = await new_task(
        db, "failing", "command", {"argv": ["false"]}, max_retries=1, retry_delay_seconds=4, backoff=1
    )

    async def retrying() -> bool:
        status: str = await db.fetchval("SELECT status::text FROM task_schedule WHERE task_id = $1", failing.id)
        return status == "retrying"

    await wait_until(retrying, 20, 0.1, "the first attempt to fail")
    await dedicated.terminate()
    failed_at: datetime = await db.fetchval(
        "SELECT at FROM run_audit WHERE task_id = $1 AND to_status = 'retrying'", failing.id
    )
    due = failed_at + timedelta(seconds=4)

    async def finished() -> bool:
        status: str = await db.fetchval("SELECT status::text FROM task_schedule WHERE task_id = $1", failing.id)
        return status == "dead"  # its retries exhausted

    try:
        await wait_until(finished, 30, 0.1, "the retry to run")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {await _starts(db, [failing])}\n{stack.logs()}") from None
    starts = (await _starts(db, [failing]))[failing.id]
    assert [w for _, w in starts] == [dedicated.worker, general.worker]
    waited = (starts[1][0] - due).total_seconds()
    print(f"the retry started {waited:.2f} s after it fell due")
    assert waited <= WITHIN_S, f"the retry started {waited:.1f} s after it fell due\n{stack.logs()}"
    await stack.quiesce()
    await _nothing_left(stack)
    await stack.check({t.id: 1 for t in (warm, failing)})

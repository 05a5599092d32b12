"""A processor that dies or is told to stop: its runs are finished, handed on, and leave no process behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from distributor.service import run as distributor_run
from processor.service import run as processor_run
from taskmill.settings import Settings
from tests.faults import procs
from tests.faults.harness import RoleProcess, Stack
from tests.faults.servers import RabbitNode
from tests.faults.target import CommandLog
from tests.helpers import new_task, running, wait_for_statuses, wait_until
from tests.transports import BOTH


async def _wait_running(db: asyncpg.Connection, processor: RoleProcess, count: int) -> None:
    async def check() -> bool:
        if processor.exited:
            raise AssertionError(f"processor exited with {processor.proc.returncode}:\n{processor.output()}")
        n: int = await db.fetchval(
            "SELECT count(*) FROM task_schedule WHERE status = 'running' AND worker = $1", processor.worker
        )
        return n == count

    await wait_until(check, timeout=15, what=f"{count} runs running on {processor.worker}")


async def _pids_in(commands: CommandLog, count: int) -> list[int]:
    async def check() -> bool:
        return len(commands.entries()) >= count

    await wait_until(check, timeout=5, what=f"{count} command starts in {commands.path}")
    return [pid for _, pid in commands.entries()]


@pytest.mark.slow
@BOTH
async def test_a_run_on_a_killed_processor_is_rescued_and_succeeds_on_its_second_attempt(
    settings: Settings, db: asyncpg.Connection, stack: Stack
) -> None:
    # The task's default of no retries: losing its processor is not the task failing, so the rescuer still hands
    # the run to another processor.
    task = await new_task(db, "crash", "command", stack.commands.payload(sleep_s=3), timeout_seconds=5)
    assert task.max_retries == 0
    await distributor_run(settings, until_idle=True)  # publishes the run, nothing more
    first = await stack.add("processor", "--concurrency", "4")
    await _wait_running(db, first, 1)
    [command_pid] = await _pids_in(stack.commands, 1)
    assert procs.alive(command_pid)
    await first.kill()
    assert first.proc.returncode == -signal.SIGKILL

    async def command_gone() -> bool:
        return not procs.alive(command_pid)

    await wait_until(command_gone, timeout=2, what=f"the first attempt's command (pid {command_pid}) to die")
    run = await db.fetchrow("SELECT id, status::text, attempt, worker FROM task_schedule WHERE task_id = $1", task.id)
    assert run is not None
    assert (run["status"], run["attempt"], run["worker"]) == ("running", 1, first.worker)

    async with running(processor_run, settings), running(distributor_run, settings):
        # The lease runs out timeout + grace = 6 s after the start; the second attempt is quick.
        await wait_for_statuses(db, {"succeeded": 1}, timeout=20)

    row = await db.fetchrow("SELECT status::text, attempt, worker, error FROM task_schedule WHERE id = $1", run["id"])
    assert row is not None
    assert (row["status"], row["attempt"], row["error"]) == ("succeeded", 2, None)
    assert row["worker"] not in (None, first.worker)
    results = await db.fetch(
        "SELECT attempt, status::text, worker, error FROM task_results WHERE run_id = $1 ORDER BY attempt", run["id"]
    )
    assert [tuple(r) for r in results] == [
        (1, "failed", first.worker, "processor lost during attempt 1"),
        (2, "succeeded", row["worker"], None),
    ]
    pids = await _pids_in(stack.commands, 2)
    assert len(pids) == 2 and pids[1] != command_pid  # the second attempt ran the command afresh
    assert not procs.alive(command_pid)


@pytest.mark.slow
@BOTH
async def test_a_run_that_kills_every_processor_it_touches_is_dead_past_the_lost_limit(
    settings: Settings, db: asyncpg.Connection, stack: Stack
) -> None:
    # Every processor here SIGKILLs itself once the task has run (as one that a run drives out of memory would);
    # with a limit of 1 the run may lose one processor and be run again once, and the second loss makes it dead.
    limit = settings.model_copy(update={"lost_limit": 1})
    await new_task(db, "killer", "noop", timeout_seconds=1, max_retries=5)
    await distributor_run(limit, until_idle=True)
    lost = []
    for attempt in (1, 2):
        processor = await stack.add("processor", crash="after_side_effect")
        await asyncio.wait_for(processor.proc.wait(), 15)
        assert processor.proc.returncode == -signal.SIGKILL
        lost.append(processor.worker)
        # The lease ends timeout + grace = 2 s after the start; the rescuer then hands the run on, or gives up.
        async with running(distributor_run, limit):
            expected = {"queued": 1} if attempt == 1 else {"dead": 1}
            await wait_for_statuses(db, expected, timeout=15)
    row = await db.fetchrow("SELECT attempt, lost, error FROM task_schedule")
    assert row is not None
    assert (row["attempt"], row["lost"]) == (2, 2)
    assert row["error"] == (
        "processor lost during attempt 2: it has lost 2 processors, more than TASKMILL_LOST_LIMIT (1) allows; "
        "the run may be what kills them"
    )
    results = await db.fetch("SELECT attempt, worker FROM task_results ORDER BY attempt")
    assert [(r["attempt"], r["worker"]) for r in results] == [(1, lost[0]), (2, lost[1])]
    # Its last message went to the dead-letter queue, as every dead run's does.
    assert await stack.broker.ready(stack.broker.names.dead_queue) == 1


async def test_a_killed_processor_takes_its_commands_whole_process_group_with_it(
    settings: Settings, db: asyncpg.Connection, stack: Stack
) -> None:
    # The guard shell is the processor's child; the command's shell and its `sleep` are in the guard's group.
    await new_task(db, "orphan", "command", stack.commands.payload(sleep_s=20), timeout_seconds=25)
    await distributor_run(settings, until_idle=True)
    pgid: int | None = None
    try:
        proc = await stack.add("processor")
        await _wait_running(db, proc, 1)
        [shell] = await _pids_in(stack.commands, 1)
        pgid = os.getpgid(shell)
        assert pgid != os.getpgid(proc.pid)  # the command runs in a process group of its own
        assert len(procs.group_members(pgid)) >= 2, "expected the shell and its sleep"
        await proc.kill()

        deadline = time.monotonic() + 2
        while (left := procs.group_members(pgid)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        described = [procs.describe(pid) for pid in left]
        assert not left, f"command processes outlived the killed processor by 2 s: {described}"
        assert stack.orphans() == []
    finally:
        if pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)


@BOTH
async def test_sigterm_lets_a_processor_finish_its_runs_in_flight_and_exit_cleanly(
    settings: Settings, db: asyncpg.Connection, stack: Stack
) -> None:
    in_flight = 4
    for i in range(in_flight):
        await new_task(db, f"sleepy-{i}", "sleep", {"ms": 1500})
    await distributor_run(settings, until_idle=True)
    proc = await stack.add("processor", "--concurrency", str(in_flight))
    await _wait_running(db, proc, in_flight)

    sent = time.monotonic()
    proc.expect_exit = True
    proc.proc.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.wait_for(proc.proc.wait(), 5)
    except TimeoutError:
        raise AssertionError("the processor was still running 5 s after SIGTERM") from None
    took = time.monotonic() - sent
    assert code == 0, f"exit code {code}:\n{proc.output()}"
    assert "Traceback" not in proc.output(), proc.output()

    rows = await db.fetch("SELECT status::text, attempt, worker FROM task_schedule ORDER BY id")
    assert [tuple(r) for r in rows] == [("succeeded", 1, proc.worker)] * in_flight, f"after {took:.2f} s"
    results = await db.fetch("SELECT attempt, status::text, worker FROM task_results ORDER BY run_id")
    assert [tuple(r) for r in results] == [(1, "succeeded", proc.worker)] * in_flight


@pytest.mark.slow
@BOTH
async def test_processors_killed_mid_http_call_and_mid_command_leave_both_runs_to_another_processor(
    db: asyncpg.Connection, stack: Stack
) -> None:
    """The whole stack, tasks created through the API; SIGKILL whichever processors hold the two runs."""
    await stack.start(scheduler=2, distributor=2, processor=2, api=True)
    options = {"max_retries": 1, "timeout_seconds": 3}  # a lost attempt's lease ends 3 + 1 s after its start
    async with stack.api() as api:
        created = [
            await api.post(
                "/tasks",
                json={"name": "held-call", "type": "http", **options}
                | {"payload": stack.target.payload("held-call", hang=1)},
            ),
            await api.post(
                "/tasks",
                json={"name": "long-command", "type": "command", **options}
                | {"payload": stack.commands.payload(sleep_s=30)},
            ),
        ]
    assert [r.status_code for r in created] == [201, 201], [r.text for r in created]
    http_task, command_task = (r.json()["id"] for r in created)

    holders = {await stack.running_on(http_task), await stack.running_on(command_task)}
    [(command_run, command_pid)] = [(run, pid) for run, pid in await _entries(stack.commands, 1)]
    await wait_until(_called(stack, "held-call"), timeout=5, what="the held call to reach the target")
    group = procs.group_members(os.getpgid(command_pid))
    for holder in holders:
        await holder.kill()
    stack.target.release()  # from now on the target answers: the second attempt's call goes through

    async def group_gone() -> bool:
        return not any(procs.alive(pid) for pid in group)

    await wait_until(group_gone, timeout=3, what=f"the killed command's process group {group} to die")
    for _ in holders:
        await stack.add("processor")  # as an orchestrator would: two replicas again
    await stack.quiesce()
    # The command started twice (the first attempt died mid-run): a repeat, allowed after a crash, and reported.
    # The held call was never answered: one completed side effect per run on the target.
    report = await stack.check({http_task: 1, command_task: 1}, repeats_allowed={command_run})
    assert report.repeats == {command_run: 2}
    killed = {p.worker for p in holders}
    for task_id in (http_task, command_task):
        run = await stack.run_of(task_id)
        assert (run["status"], run["attempt"]) == ("succeeded", 2), dict(run)
        assert run["worker"] not in killed
    calls = stack.target.calls_to("held-call")
    assert [c.status for c in calls] == [None, 200]  # the first never answered, the second under the same key
    assert len({c.key for c in calls}) == 1


async def _entries(commands: CommandLog, count: int) -> list[tuple[int, int]]:
    await _pids_in(commands, count)
    return commands.entries()


def _called(stack: Stack, name: str) -> Callable[[], Awaitable[bool]]:
    async def called() -> bool:
        return bool(stack.target.calls_to(name))

    return called


@pytest.mark.slow
async def test_a_run_in_flight_when_the_broker_connection_drops_finishes_and_is_recorded_once(
    settings: Settings, db: asyncpg.Connection, rabbit: RabbitNode
) -> None:
    # The private node: dropping every connection of the shared broker would hit whatever else runs on it.
    settings = settings.model_copy(update={"amqp_url": rabbit.url})
    await new_task(db, "through-the-drop", "sleep", {"ms": 1500})
    await distributor_run(settings, until_idle=True)
    async with running(processor_run, settings):

        async def started() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM task_schedule WHERE status = 'running'"))

        await wait_until(started, 10, what="the run to start")
        await rabbit.close_all_connections()

        async def finished() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM task_schedule WHERE status = 'succeeded'"))

        await wait_until(finished, 15, what="the run to finish")
        # The redelivery after the reconnect finds the run finished: it is dropped, not run again.
        await asyncio.sleep(6)
    row = await db.fetchrow("SELECT status::text, attempt FROM task_schedule")
    assert row is not None and tuple(row) == ("succeeded", 1)
    assert await db.fetchval("SELECT count(*) FROM task_results") == 1

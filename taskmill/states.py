"""Run states. The PostgreSQL enum `run_status` holds the same values (a test keeps them equal)."""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRYING = "retrying"
    DEAD = "dead"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    BLOCKED = "blocked"  # waits for the runs it depends on (a workflow step, a reduce)
    WAITING = "waiting"  # its own work done, waits for the children it spawned


class ScheduleKind(StrEnum):
    IMMEDIATE = "immediate"
    ONCE = "once"
    CRON = "cron"
    INTERVAL = "interval"

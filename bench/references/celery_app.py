"""The Celery app of the reference: one no-op task that writes its ledger row. `celery -A bench.references.celery_app
worker|beat` builds it from the environment (`Config.env`); the bench builds the same app with `make_app` to send.

Every setting is Celery's default but these, each for a reason:
- `broker_url`: the bench's RabbitMQ, through py-amqp (`pyamqp://`, Celery's default transport for `amqp://`).
- the names: the task queue, its exchange and routing key (`task_default_queue`, `_exchange`, `_routing_key`), the
  remote control exchange (`control_exchange`, giving `<ns>.pidbox` and `reply.<ns>.pidbox`) and the event exchange
  (`event_exchange`, which gossip uses) are all the run's namespace, so that it shares no queue or exchange with
  anything else on the vhost (tests, another bench) and removes exactly what it made.
- `task_acks_late`: Celery's default (False: acked when received, before it runs) unless `--celery-acks-late`.
- `broker_connection_retry_on_startup`: True, what the unset default does (retry as `broker_connection_retry`),
  said explicitly because Celery warns when it is unset.
- `beat_schedule`: the `celery-cron` entries, when `TASKMILL_BENCH_CELERY_CRON` asks for them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import psycopg
from celery import Celery
from celery.schedules import crontab

TASK = "taskmill_bench.noop"
INSERT = "INSERT INTO ledger (job_id, executed_at) VALUES (%s, clock_timestamp())"


@dataclass(frozen=True)
class Config:
    broker_url: str
    namespace: str
    ledger_dsn: str
    acks_late: bool = False
    cron_entries: int = 0

    def env(self) -> dict[str, str]:
        return {
            "TASKMILL_BENCH_CELERY_BROKER": self.broker_url,
            "TASKMILL_BENCH_CELERY_NS": self.namespace,
            "TASKMILL_BENCH_CELERY_LEDGER": self.ledger_dsn,
            "TASKMILL_BENCH_CELERY_ACKS_LATE": "1" if self.acks_late else "0",
            "TASKMILL_BENCH_CELERY_CRON": str(self.cron_entries),
        }

    @classmethod
    def from_env(cls) -> Config:
        """What the bench handed its workers; the defaults only let the module be imported anywhere."""
        env = os.environ
        return cls(
            broker_url=env.get("TASKMILL_BENCH_CELERY_BROKER", "pyamqp://guest:guest@127.0.0.1:5672//"),
            namespace=env.get("TASKMILL_BENCH_CELERY_NS", "taskmill-bench-celery"),
            ledger_dsn=env.get(
                "TASKMILL_BENCH_CELERY_LEDGER", "postgresql://postgres@127.0.0.1:5432/taskmill_bench_celery"
            ),
            acks_late=env.get("TASKMILL_BENCH_CELERY_ACKS_LATE") == "1",
            cron_entries=int(env.get("TASKMILL_BENCH_CELERY_CRON", "0")),
        )


class Ledger:
    """One connection per process that runs tasks (each prefork child opens its own, after the fork), autocommit:
    every row is committed, durably (synchronous_commit on), before the task returns."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: psycopg.Connection[Any] | None = None
        self.pid = 0

    def record(self, job_id: int) -> None:
        if self.conn is None or self.conn.closed or self.pid != os.getpid():
            self.conn = psycopg.connect(self.dsn, autocommit=True)
            self.pid = os.getpid()
        self.conn.execute(INSERT, (job_id,))


def make_app(config: Config) -> Any:
    app = Celery("taskmill_bench", broker=config.broker_url, set_as_current=False)
    ns = config.namespace
    app.conf.update(
        task_default_queue=ns,
        task_default_exchange=ns,
        task_default_routing_key=ns,
        control_exchange=ns,
        event_exchange=f"{ns}.ev",
        task_acks_late=config.acks_late,
        broker_connection_retry_on_startup=True,
    )
    if config.cron_entries:
        app.conf.beat_schedule = {
            f"cron-{i}": {"task": TASK, "schedule": crontab(), "args": (i,)} for i in range(config.cron_entries)
        }
    ledger = Ledger(config.ledger_dsn)

    def noop(job_id: int) -> None:
        ledger.record(job_id)

    # shared=False: the task belongs to this app alone (the bench process holds two apps: the module's and its own).
    app.task(name=TASK, shared=False)(noop)
    return app


def broker_names(namespace: str) -> tuple[list[str], list[str]]:
    """The queues and exchanges a run leaves on the broker (the workers' own queues go with them)."""
    return [namespace], [namespace, f"{namespace}.pidbox", f"reply.{namespace}.pidbox", f"{namespace}.ev"]


app = make_app(Config.from_env())

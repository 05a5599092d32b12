"""GET /pressure: the queue pressure the dashboard's panel shows. Runs due and not yet handed out and how long the
oldest has waited, each queue's depth, and the processors at work beside those the forecast needs now."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import aiormq
from aio_pika.abc import AbstractRobustConnection
from fastapi import APIRouter, Request
from pydantic import BaseModel

from api.deps import AppSettings, Pool, Reader, TypeHistory
from taskmill.broker import queue_depths
from taskmill.logs import described
from taskmill.planning.plan import Options, make_plan
from taskmill.store import queue
from taskmill.store.pressure import due_backlog
from taskmill.store.processors import LIVE_WITHIN_S, dedicated, live_count
from taskmill.topology import Names

log = logging.getLogger(__name__)

router = APIRouter()

# A broker that does not answer within this leaves the depths unknown: the panel is polled, never held up.
PROBE_TIMEOUT_S = 2.0


class QueueDepth(BaseModel):
    # Named as the metric `taskmill_queue_depth` labels it: the queue without the broker prefix (work, work.urgent,
    # dead, and only.<hash> with its urgent lane for processors dedicated to some types). Over PostgreSQL the same
    # names stand for the rows of run_queue: ready messages of priority 0, of priority 1-9, and the dead letters.
    queue: str
    ready: int


class Pressure(BaseModel):
    transport: str
    due_backlog_runs: int  # due and not yet handed to the transport
    oldest_due_s: float  # how long the oldest of them has waited (0: none)
    queues: list[QueueDepth]  # those that exist; empty when unknown
    queues_unknown: str | None  # why the depths are not known (the broker cannot be reached); None when they are
    processors_live: int  # seen within 30 s
    processors_required: int  # the forecast's for the bucket under way
    required_ms: float  # the compute the forecast puts in the bucket under way
    bucket_seconds: int


@router.get("/pressure", response_model=Pressure)
async def pressure(request: Request, db: Pool, settings: AppSettings, history: TypeHistory, _: Reader) -> Pressure:
    """The due backlog and its oldest run, the depth of each queue (over RabbitMQ: the work queue, its urgent lane,
    the dead letters and the queues of live dedicated processors; over PostgreSQL: run_queue's ready messages and
    dead letters), the live processors and the processors the forecast needs for the bucket under way. A broker that
    cannot be reached leaves the depths unknown (`queues_unknown` says why); it is never an error."""
    backlog = await due_backlog(db)
    unknown = None
    if settings.transport_name == "postgres":
        depths = await queue.depths(db)
    else:
        depths, unknown = await _broker_depths(request.app.state.broker, settings.broker_prefix, db)
    # The bucket under way only: the forecast reads no further than the next bucket.
    plan = await make_plan(db, history, replace(Options.of(settings), horizon_s=float(settings.capacity_bucket_s)))
    return Pressure(
        transport=settings.transport_name,
        due_backlog_runs=backlog.runs,
        oldest_due_s=backlog.oldest_s,
        queues=[QueueDepth(queue=name, ready=n) for name, n in depths.items()],
        queues_unknown=unknown,
        processors_live=await live_count(db, LIVE_WITHIN_S),
        processors_required=plan.now,
        required_ms=float(plan.forecast.required_ms[0]) if len(plan.forecast.required_ms) else 0.0,
        bucket_seconds=settings.capacity_bucket_s,
    )


async def _broker_depths(broker: AbstractRobustConnection, prefix: str, db: Pool) -> tuple[dict[str, int], str | None]:
    """The depths the broker reports, or none and why not. A queue not declared yet (no distributor has run, a
    dedicated processor's queue before its first run) holds nothing and is left out."""
    if broker.is_closed or not broker.connected.is_set():
        return {}, "the broker cannot be reached"
    type_sets = sorted({tuple(types) for types in (await dedicated(db, LIVE_WITHIN_S)).values()})
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            depths = await queue_depths(broker, Names(prefix), type_sets)
    except (TimeoutError, ConnectionError, aiormq.exceptions.AMQPError) as exc:
        log.info("cannot read the queue depths: %s", described(exc), extra={"action": "pressure"})
        return {}, f"the broker did not answer: {type(exc).__name__}: {exc}" if str(
            exc
        ) else "the broker did not answer in time"
    return depths, None

"""The capacity role: every interval, forecasts the next hours, exports the processors they need, and asks the
provisioning hook (when one is set) for that many."""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
from prometheus_client import Gauge

from capacity.provision import Hook, HookFailed, Scaler, hook_from
from taskmill import pressure
from taskmill.db import is_transient, role_pool
from taskmill.logs import described
from taskmill.loops import run_loops, wait_or_stop
from taskmill.planning.plan import History, Options, Plan, make_plan
from taskmill.settings import Settings
from taskmill.store import forecasts
from taskmill.transport import Link

log = logging.getLogger(__name__)

REQUIRED = Gauge(
    "taskmill_required_instances",
    "Processors the forecast needs: in the current bucket (now) and the most of any bucket ahead (peak)",
    ["window"],
)
DESIRED = Gauge("taskmill_desired_instances", "Processors asked of the provisioning hook, within min and max")
HOOK_FAILURES = Gauge("taskmill_provisioning_hook_failing", "1 while the last call of the provisioning hook failed")


async def provision(plan: Plan, scaler: Scaler, hook: Hook | None, scale_ahead_s: float, now: float) -> None:
    """Asks the hook for the peak of the next `scale_ahead_s`, if the scaler says it is time to change."""
    wanted = plan.peak(scale_ahead_s)
    DESIRED.set(scaler.clamp(wanted))
    count = scaler.decide(wanted, now)
    if hook is None or count is None:
        return
    details = {"now": plan.now, "peak": plan.peak(), "wanted": wanted, "generated_at": plan.generated_at.isoformat()}
    try:
        await hook(count, details)
    except HookFailed as exc:
        HOOK_FAILURES.set(1)
        log.warning("provisioning hook failed, will retry: %s", described(exc), extra={"action": "provision"})
        return
    HOOK_FAILURES.set(0)
    scaler.applied(count, now)
    log.info("asked for %d processors (forecast peak %d)", count, wanted, extra={"action": "provision"})


async def run(settings: Settings, *, stop: asyncio.Event | None = None, until_idle: bool = False) -> None:
    stop = stop or asyncio.Event()
    hook = hook_from(settings)
    scaler = Scaler(settings.capacity_min_instances, settings.capacity_max_instances, settings.capacity_cooldown_s)
    options = Options.of(settings)
    history = History(settings.capacity_history_ttl_s)
    pool = await role_pool(settings.database_url, max_size=2)
    log.info("capacity ready", extra={"action": "ready"})
    link: Link | None = None
    try:
        if until_idle:
            await _forecast_loop(pool, settings, history, options, scaler, hook, stop, until_idle)
        else:
            link = await pressure.open_for_depths(settings, "taskmill-capacity", pool)
            depths = link.publisher if link is not None else None
            await run_loops(
                stop,
                forecast=_forecast_loop(pool, settings, history, options, scaler, hook, stop, until_idle),
                pressure=pressure.keep_current(pool, depths, settings.pressure_interval_s, stop),
            )
    finally:
        if link is not None:
            await link.close()
        await pool.close()


async def _forecast_loop(
    pool: asyncpg.Pool,
    settings: Settings,
    history: History,
    options: Options,
    scaler: Scaler,
    hook: Hook | None,
    stop: asyncio.Event,
    until_idle: bool,
) -> None:
    while True:
        try:
            plan = await make_plan(pool, history, options)
            await forecasts.record(pool, plan)  # set beside what its buckets use, once over (the summary's `past`)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("forecast failed, will retry: %s", described(exc), extra={"action": "forecast"})
        else:
            REQUIRED.labels("now").set(plan.now)
            REQUIRED.labels("peak").set(plan.peak())
            log.info("required instances: now %d, peak %d", plan.now, plan.peak(), extra={"action": "forecast"})
            await provision(plan, scaler, hook, settings.capacity_scale_ahead_s, time.monotonic())
        if until_idle or await wait_or_stop(stop, settings.capacity_interval_s):
            return

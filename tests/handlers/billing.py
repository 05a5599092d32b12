"""Python handlers a real processor process imports in the tests (`--import tests.handlers.billing`)."""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel, Field

from taskmill import Context, handler
from taskmill.handlers import AnyPayload


class Invoice(BaseModel):
    customer_id: int = Field(ge=1)
    fail: bool = False  # raise after writing: the write must be rolled back


@handler("billing.send_invoice", payload=Invoice, timeout_seconds=20)
async def send_invoice(ctx: Context, payload: Invoice) -> dict[str, object]:
    """Records that the customer's invoice went out."""
    ctx.log.info("sending the invoice of customer %d (attempt %d)", payload.customer_id, ctx.attempt)
    await ctx.conn.execute(
        "INSERT INTO invoices_sent (customer_id, run_id) VALUES ($1, $2)", payload.customer_id, ctx.run_id
    )
    if payload.fail:
        raise RuntimeError(f"the mail server refused customer {payload.customer_id}")
    return {"sent": True, "customer_id": payload.customer_id, "scheduled": ctx.scheduled_time.isoformat()}


class Nap(BaseModel):
    ms: int = Field(ge=0, le=5000)


@handler("billing.blocking_nap", payload=Nap)
def blocking_nap(ctx: Context, payload: Nap) -> dict[str, object]:
    """A plain function: it runs in a worker process, so its blocking sleep holds no other run back."""
    time.sleep(payload.ms / 1000)
    ctx.log.info("slept %d ms", payload.ms)
    return {"slept_ms": payload.ms}


@handler("billing.slow_write")
async def slow_write(ctx: Context, payload: AnyPayload) -> None:
    """Writes, then takes longer than its run may: the write goes with the timeout."""
    await ctx.conn.execute("INSERT INTO invoices_sent (customer_id, run_id) VALUES (0, $1)", ctx.run_id)
    await asyncio.sleep(float(payload.model_dump().get("seconds", 30)))

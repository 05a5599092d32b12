"""A module of Python handlers, runnable as it is:

    taskmill dev --import examples.billing

then create a task of the type `billing.send_invoice` (dashboard, API or `defer` below). The handler writes to a
table of its own in its own transaction: the row is there when it succeeds, and gone when it raises.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from taskmill import Context, handler


class Invoice(BaseModel):
    customer_id: int = Field(ge=1, description="whom to send the invoice to")
    amount_cents: int = Field(ge=0, default=0)


@handler("billing.send_invoice", payload=Invoice, timeout_seconds=20)
async def send_invoice(ctx: Context, payload: Invoice) -> dict[str, object]:
    """Sends a customer's invoice, once: a retry finds it sent."""
    await ctx.conn.execute(
        """CREATE TABLE IF NOT EXISTS invoices_sent (
               customer_id int NOT NULL, amount_cents int NOT NULL, run_id bigint NOT NULL PRIMARY KEY)"""
    )
    ctx.log.info("invoice of %d cents to customer %d", payload.amount_cents, payload.customer_id)
    inserted = await ctx.conn.fetchval(
        "INSERT INTO invoices_sent VALUES ($1, $2, $3) ON CONFLICT (run_id) DO NOTHING RETURNING run_id",
        payload.customer_id,
        payload.amount_cents,
        ctx.run_id,
    )
    return {"sent": inserted is not None, "attempt": ctx.attempt}


class Report(BaseModel):
    month: str = Field(pattern=r"^\d{4}-\d{2}$")


@handler("billing.monthly_report", payload=Report)
def monthly_report(ctx: Context, payload: Report) -> dict[str, object]:
    """A plain function runs in a worker process: blocking code (a CSV export, a PDF) holds no other run back, and
    past its timeout it is killed, not left running beside its retry."""
    ctx.log.info("report for %s", payload.month)
    return {"month": payload.month, "rows": 0}

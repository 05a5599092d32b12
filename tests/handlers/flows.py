"""Python handlers for the workflow and subtask tests (`--import tests.handlers.flows`)."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field

from taskmill import Context, handler


class Step(BaseModel):
    ms: int = Field(0, ge=0, le=60_000)
    fail: bool = False
    record: bool = False  # write a row to steps_done, in the handler's transaction


@handler("flows.step", payload=Step, timeout_seconds=60)
async def step(ctx: Context, payload: Step) -> dict[str, object]:
    """Sleeps, optionally records its run in steps_done (in its own transaction), optionally fails."""
    if payload.record:
        await ctx.conn.execute("INSERT INTO steps_done (run_id) VALUES ($1)", ctx.run_id)
    await asyncio.sleep(payload.ms / 1000)
    if payload.fail:
        raise RuntimeError(f"step {ctx.run_id} was told to fail")
    return {"run_id": ctx.run_id}


class Tree(BaseModel):
    depth: int = Field(ge=0, le=10)
    fanout: int = Field(ge=1, le=100)
    fail_leaf: bool = False
    leaf_ms: int = Field(0, ge=0, le=60_000)  # how long each leaf runs


@handler("flows.tree", payload=Tree)
async def tree(ctx: Context, payload: Tree) -> dict[str, object]:
    """Spawns `fanout` children one level less deep and waits for them; the leaves are depth 0."""
    if payload.depth > 0:
        for _ in range(payload.fanout):
            child = payload.model_copy(update={"depth": payload.depth - 1}).model_dump()
            await ctx.spawn("flows.tree", child)
        ctx.wait_for_children()
    elif payload.fail_leaf:
        raise ValueError("a leaf failed")
    else:
        await asyncio.sleep(payload.leaf_ms / 1000)
    return {"depth": payload.depth}


class Square(BaseModel):
    x: int


@handler("flows.square", payload=Square)
async def square(ctx: Context, payload: Square) -> int:
    return payload.x * payload.x


@handler("flows.sum")
async def total(ctx: Context, payload: BaseModel) -> dict[str, object]:
    """The reduce: reads the results of the runs it depends on."""
    found = await ctx.inputs()
    return {"sum": sum(i.value for i in found), "inputs": len(found), "statuses": sorted({i.status for i in found})}


class Map(BaseModel):
    n: int = Field(ge=1, le=10_000)


@handler("flows.map", payload=Map)
async def map_reduce(ctx: Context, payload: Map) -> dict[str, object]:
    """Spawns n squares and a sum that depends on all of them, and waits."""
    squares = await ctx.spawn_many([{"type": "flows.square", "payload": {"x": x}} for x in range(payload.n)])
    reduce = await ctx.spawn("flows.sum", {}, key="sum", depends_on=squares)
    ctx.wait_for_children()
    return {"reduce": reduce.run_id}

"""A backlog already handed to the transport, with no processor alive: the forecast counts it in the bucket under
way, so GET /pressure, the capacity role's gauge and its provisioning hook all ask for the processors it needs
(autoscaling from zero starts), and agree."""

from __future__ import annotations

import asyncpg
import httpx
from prometheus_client import REGISTRY

import distributor.service
from capacity.service import run as capacity_run
from taskmill.settings import Settings
from tests.api.conftest import api_settings, bearer, client  # noqa: F401 (fixtures)
from tests.capacity.test_provision import Webhook, webhook  # noqa: F401 (a fixture)
from tests.transports import BOTH


@BOTH
async def test_a_backlog_in_the_transport_asks_for_processors_everywhere_alike(
    api_settings: Settings,  # noqa: F811
    client: httpx.AsyncClient,  # noqa: F811
    db: asyncpg.Connection,
    webhook: Webhook,  # noqa: F811
) -> None:
    tasks = [{"name": f"nap-{i}", "type": "sleep", "payload": {"ms": 2000}, "estimated_ms": 2000} for i in range(300)]
    made = await client.post("/tasks/bulk", json=tasks, headers=bearer())
    assert made.status_code == 201, made.text
    await distributor.service.run(api_settings, until_idle=True)  # no processor: the runs wait in the transport
    assert await db.fetchval("SELECT count(*) FROM task_schedule WHERE status = 'queued'") == 300

    pressure = (await client.get("/pressure", headers=bearer("tasks:read"))).json()
    assert pressure["due_backlog_runs"] == 0 and pressure["processors_live"] == 0
    # 300 runs of 2,000 ms in the bucket under way, over 9,000 usable ms a processor.
    assert (pressure["required_ms"], pressure["processors_required"]) == (600_000.0, 67)

    role = api_settings.model_copy(update={"capacity_hook_url": webhook.url, "capacity_min_instances": 0})
    await capacity_run(role, until_idle=True)
    assert REGISTRY.get_sample_value("taskmill_required_instances", {"window": "now"}) == 67
    assert [b["instances"] for b in webhook.bodies] == [67]

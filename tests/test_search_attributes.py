"""A Temporal database created without our search attribute gets it at start-up (an older
var/temporal.db, or a cluster nobody prepared), instead of every job failing to start."""

from __future__ import annotations

import pytest
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError

from orchestration.search_attributes import ensure_search_attributes
from proxy.jobs.store import TENANT
from switchyard.processes import free_port, spawn, tool, wait_port


async def test_missing_search_attribute_is_registered(tmp_path):
    port = free_port()
    server = spawn("temporal-bare", [tool("temporal"), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
                                     "--port", str(port), "--http-port", str(free_port()),
                                     "--metrics-port", str(free_port())], tmp_path)
    try:
        wait_port(server, port, 30)
        client = await Client.connect(f"127.0.0.1:{port}")
        tagged = TypedSearchAttributes([SearchAttributePair(TENANT, "demo")])
        with pytest.raises(RPCError, match="SwitchyardTenant"):
            await client.start_workflow("Probe", id="p1", task_queue="none", search_attributes=tagged)
        await ensure_search_attributes(client, "default")
        await ensure_search_attributes(client, "default")  # idempotent
        handle = await client.start_workflow("Probe", id="p2", task_queue="none", search_attributes=tagged)
        assert (await handle.describe()).typed_search_attributes.get(TENANT) == "demo"
    finally:
        server.stop()

"""Registers the custom search attributes jobs are tagged with, idempotently.

A dev server started with `--search-attribute` registers them only when it creates its database;
an older `var/temporal.db` (or a fresh cluster) needs them added through the operator API.
"""

from __future__ import annotations

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client

SEARCH_ATTRIBUTES = {name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
                     for name in ("SwitchyardTenant", "SwitchyardEndpoint", "SwitchyardModel")}


async def ensure_search_attributes(client: Client, namespace: str) -> None:
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace))
    missing = {k: v for k, v in SEARCH_ATTRIBUTES.items() if k not in existing.custom_attributes}
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing))

"""The Temporal client, for the proxy and the workers alike."""

from __future__ import annotations

from temporalio.client import Client

from orchestration.converter import data_converter
from orchestration.telemetry import temporal_interceptors


async def connect_temporal(address: str, namespace: str) -> Client:
    # With tracing on, the client's interceptor also applies to the workers built on this client.
    return await Client.connect(address, namespace=namespace, data_converter=data_converter,
                                interceptors=temporal_interceptors())

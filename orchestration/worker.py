"""Worker entry point: one Temporal worker per task queue this process serves."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta

import nats
from temporalio.client import Client
from temporalio.worker import Worker

from adapters.registry import build_adapter
from orchestration.activities import InferenceActivities
from orchestration.cancels import CANCEL_SUBJECT_PREFIX, CancelRegistry
from orchestration.objectstore import object_store_from_env, sweep_forever
from orchestration.converter import data_converter
from orchestration.telemetry import WorkerMetricsInterceptor, start_metrics_server, temporal_interceptors
from orchestration.streams import ensure_secrets_bucket, ensure_settle_stream, ensure_stream
from orchestration.delivery import WebhookActivities
from orchestration.workflows import InferenceWorkflow, WebhookWorkflow
from schemas.catalog import Catalog


@dataclass(frozen=True)
class WorkerConfig:
    temporal_address: str
    namespace: str
    nats_url: str
    queues: tuple[str, ...]
    coalesce_s: float = 0.005
    cpu_queue: str = "cpu"  # webhooks and other CPU stages; "" to serve none
    webhook_allow: tuple = ()
    webhook_base_delay_s: float = 5.0
    metrics_port: int = 0  # SWITCHYARD_METRICS_PORT: Prometheus /metrics; 0 serves none
    metrics_host: str = "127.0.0.1"


async def connect_temporal(address: str, namespace: str) -> Client:
    # With tracing on, the client's interceptor also applies to the workers built on this client.
    return await Client.connect(address, namespace=namespace, data_converter=data_converter,
                                interceptors=temporal_interceptors())


async def run_worker(config: WorkerConfig, catalog: Catalog, stop: asyncio.Event) -> None:
    queues = config.queues or tuple(catalog.task_queues())
    models = [m for m in catalog.models if m.task_queue in queues]
    if not models:
        raise SystemExit(f"no catalog model uses any of the queues {', '.join(queues)}")
    if config.metrics_port:
        start_metrics_server(config.metrics_port, config.metrics_host)
    client = await connect_temporal(config.temporal_address, config.namespace)
    nc = await nats.connect(config.nats_url, name="switchyard-worker", max_reconnect_attempts=-1)
    js = nc.jetstream(publish_async_max_pending=16384)
    await ensure_stream(js)
    await ensure_settle_stream(js)
    secrets = await ensure_secrets_bucket(js)
    adapters = {m.id: build_adapter(m.engine) for m in models if m.engine is not None}
    cancels = CancelRegistry()
    await nc.subscribe(f"{CANCEL_SUBJECT_PREFIX}.*", cb=cancels.on_message)
    objects = object_store_from_env()
    activities = InferenceActivities(js, adapters, cancels, coalesce_s=config.coalesce_s, objects=objects)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(objects.aclose)
        sweeper = asyncio.ensure_future(sweep_forever(objects))
        stack.callback(sweeper.cancel)
        for queue in queues:
            slots = sum(m.max_concurrency for m in models if m.task_queue == queue) or 1
            worker = Worker(
                client,
                task_queue=queue,
                workflows=[InferenceWorkflow],
                activities=[activities.inference, activities.publish_terminal, activities.publish_settlement],
                max_concurrent_activities=slots,  # backpressure by pull: never more than the engine's slots
                graceful_shutdown_timeout=timedelta(seconds=5),
                interceptors=[WorkerMetricsInterceptor()],
            )
            await stack.enter_async_context(worker)
        if config.cpu_queue:
            hooks = WebhookActivities(secrets, config.webhook_allow, config.webhook_base_delay_s)
            stack.push_async_callback(hooks.aclose)
            await stack.enter_async_context(Worker(
                client, task_queue=config.cpu_queue, workflows=[WebhookWorkflow],
                activities=[hooks.deliver_webhook], max_concurrent_activities=64,
                graceful_shutdown_timeout=timedelta(seconds=5)))
        await stop.wait()
    for adapter in adapters.values():
        await adapter.aclose()
    await nc.drain()

"""Worker entry point: one Temporal worker per task queue this process serves."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta

import nats
from temporalio.worker import FixedSizeSlotSupplier, Worker, WorkerTuner

from adapters.registry import build_adapter
from orchestration.activities import InferenceActivities
from orchestration.client import connect_temporal
from orchestration.cancels import CANCEL_SUBJECT_PREFIX, CancelRegistry
from orchestration.natsconfig import JobsRetention, NatsAuth
from orchestration.objectstore import object_store_from_env, sweep_forever
from orchestration.telemetry import WorkerMetricsInterceptor, start_metrics_server
from orchestration.streams import ensure_secrets_bucket, ensure_settle_stream, ensure_stream
from orchestration.delivery import WebhookActivities
from orchestration.tenant_events import TenantEvents, WebhookEndpoints
from orchestration.dispatch import DirectRuns
from orchestration.slots import EngineSlots
from orchestration.offers import WITHDRAW_SUBJECT_PREFIX, dispatch_group, dispatch_subject
from orchestration.workflows import InferenceWorkflow, WebhookWorkflow
from orchestration.fine_tuning_activities import open_fine_tuning
from orchestration.fine_tuning_workflow import FineTuningWorkflow
from orchestration.batch_workflow import BatchWorkflow
from orchestration.deployers import LocalProcessDeployer, deployers
from orchestration.model_registry import CatalogSnapshot, CatalogView, ModelRegistry
from orchestration.rollout_activities import RolloutActivities
from orchestration.rollout_workflow import RolloutWorkflow
from orchestration.version_stats import OutcomeRecorder, ensure_stats_stream
from adapters.base import InferenceAdapter
from schemas.catalog import Catalog


@dataclass(frozen=True)
class WorkerConfig:
    temporal_address: str
    namespace: str
    nats_servers: tuple[str, ...]  # SWITCHYARD_NATS_URL, comma-separated: any node of the cluster
    queues: tuple[str, ...]
    coalesce_s: float = 0.005
    cpu_queue: str = "cpu"  # webhooks and other CPU stages; "" to serve none
    train_queue: str = "train"  # SWITCHYARD_TRAIN_QUEUE: fine-tuning's trainer and candidate engines; "" for none
    webhook_allow: tuple = ()
    webhook_base_delay_s: float = 5.0
    metrics_port: int = 0  # SWITCHYARD_METRICS_PORT: Prometheus /metrics; 0 serves none
    metrics_host: str = "127.0.0.1"
    nats_replicas: int = 1  # SWITCHYARD_NATS_REPLICAS: copies of every stream and KV bucket
    nats_auth: NatsAuth = NatsAuth()  # SWITCHYARD_NATS_USER/_PASSWORD/_CREDS/_CA
    jobs_retention: JobsRetention = JobsRetention()  # SWITCHYARD_JOBS_MAX_AGE_S/_MAX_BYTES


async def run_worker(config: WorkerConfig, catalog: Catalog, stop: asyncio.Event) -> None:
    if config.metrics_port:
        start_metrics_server(config.metrics_port, config.metrics_host)
    client = await connect_temporal(config.temporal_address, config.namespace)
    nc = await nats.connect(servers=list(config.nats_servers), name="switchyard-worker",
                            max_reconnect_attempts=-1, **await asyncio.to_thread(config.nats_auth.connect_options))
    js = nc.jetstream(publish_async_max_pending=16384)
    retention = config.jobs_retention
    await ensure_stream(js, replicas=config.nats_replicas, max_age_s=retention.max_age_s,
                        max_bytes=retention.max_bytes)
    await ensure_settle_stream(js, replicas=config.nats_replicas)
    secrets = await ensure_secrets_bucket(js, replicas=config.nats_replicas)
    await ensure_stats_stream(js, replicas=config.nats_replicas)
    view = await CatalogView.open(js, catalog, replicas=config.nats_replicas)
    queues = config.queues or tuple(view.task_queues())
    models = [m for m in view.models if m.task_queue in queues]
    if not models:
        raise SystemExit(f"no catalog model uses any of the queues {', '.join(queues)}")
    adapters = {m.id: build_adapter(m.engine) for m in models if m.engine is not None}
    view.on_change(lambda snapshot: sync_adapters(adapters, snapshot, queues))
    cancels = CancelRegistry()
    await nc.subscribe(f"{CANCEL_SUBJECT_PREFIX}.*", cb=cancels.on_message)
    objects = object_store_from_env()
    activities = InferenceActivities(js, adapters, cancels, coalesce_s=config.coalesce_s, objects=objects,
                                     events_max_age_s=retention.max_age_s, outcomes=OutcomeRecorder(nc))
    loop = asyncio.get_running_loop()
    slots = {q: EngineSlots(sum(m.max_concurrency for m in models if m.task_queue == q) or 1, loop)
             for q in queues}
    direct = DirectRuns(activities, slots)
    offers = [await nc.subscribe(dispatch_subject(q), queue=dispatch_group(q), cb=direct.on_offer)
              for q in queues]
    await nc.subscribe(f"{WITHDRAW_SUBJECT_PREFIX}.*", cb=direct.on_withdraw)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(objects.aclose)
        sweeper = asyncio.ensure_future(sweep_forever(objects))
        stack.callback(sweeper.cancel)
        workers: list[Worker] = []
        for queue in queues:
            # Backpressure by pull: never more than the engines' slots, dispatched runs included. One
            # poller, as each holds a slot while it polls.
            tuner = WorkerTuner.create_composite(
                workflow_supplier=FixedSizeSlotSupplier(100), activity_supplier=slots[queue],
                local_activity_supplier=FixedSizeSlotSupplier(100), nexus_supplier=FixedSizeSlotSupplier(1))
            worker = Worker(
                client,
                task_queue=queue,
                workflows=[InferenceWorkflow],
                activities=[activities.inference, activities.publish_terminal, activities.publish_settlement],
                tuner=tuner, max_concurrent_activity_task_polls=1,
                graceful_shutdown_timeout=timedelta(seconds=5),
                interceptors=[WorkerMetricsInterceptor()],
            )
            workers.append(await stack.enter_async_context(worker))
            workers.append(await stack.enter_async_context(Worker(
                client, task_queue=direct.adoption_queue(queue), activities=[direct.adopt],
                max_concurrent_activities=1000,  # adopting holds no engine slot: the run has it
                graceful_shutdown_timeout=timedelta(seconds=5))))
        if config.cpu_queue:
            hooks = WebhookActivities(secrets, config.webhook_allow, config.webhook_base_delay_s)
            stack.push_async_callback(hooks.aclose)
            tenant_events = TenantEvents(await WebhookEndpoints.open(js, replicas=config.nats_replicas), client,
                                         secrets, config.cpu_queue)
            local = LocalProcessDeployer()
            stack.push_async_callback(local.aclose)
            registry = await ModelRegistry.open(js, catalog, replicas=config.nats_replicas)
            rollouts = RolloutActivities(js, registry, deployers(local))
            fine_tuning = await open_fine_tuning(js, objects, view.get, config.nats_replicas)
            # Job workflows run here, apart from the engines' queues: a job whose model has no
            # worker still runs its workflow, which ends it (no_capacity, settlement, webhook).
            workers.append(await stack.enter_async_context(Worker(
                client, task_queue=config.cpu_queue, workflows=[WebhookWorkflow, InferenceWorkflow, RolloutWorkflow,
                                                            BatchWorkflow, FineTuningWorkflow],
                activities=[hooks.deliver_webhook, activities.publish_terminal, activities.publish_settlement,
                            tenant_events.notify_tenant,
                            rollouts.read_alias, rollouts.describe, rollouts.deploy, rollouts.undeploy,
                            rollouts.flip, rollouts.score, rollouts.monitor, *fine_tuning.cpu_activities()],
                max_concurrent_activities=64, graceful_shutdown_timeout=timedelta(seconds=5),
                interceptors=[WorkerMetricsInterceptor()])))
        if config.train_queue:
            trainer = await open_fine_tuning(js, objects, view.get, config.nats_replicas)
            workers.append(await stack.enter_async_context(Worker(
                client, task_queue=config.train_queue, activities=trainer.train_activities(),
                max_concurrent_activities=4, graceful_shutdown_timeout=timedelta(seconds=5))))

        async def shutdown_workers() -> None:
            # All at once (each has its own 5 s grace), not one after another as the stack's exits
            # would: their exits below then only collect the finished run tasks.
            await asyncio.gather(*(w.shutdown() for w in workers))

        stack.push_async_callback(shutdown_workers)  # the stack's first exit: after the block below
        await stop.wait()
        for sub in offers:  # no new runs; those not adopted yet are taken over elsewhere
            await sub.unsubscribe()
        direct.stop_all()
    await view.close()
    for adapter in adapters.values():
        await adapter.aclose()
    await nc.drain()


def _close_later(adapter: InferenceAdapter) -> None:
    asyncio.ensure_future(adapter.aclose())


def sync_adapters(adapters: dict[str, InferenceAdapter], snapshot: CatalogSnapshot, queues: tuple[str, ...]) -> None:
    """Adapters for the catalog's models on this worker's queues: new ones built at once; one whose
    model went is closed only after a job's longest run (600 s) could have finished on it (drained).
    An entry never changes under its id (the registry refuses that), so none is rebuilt."""
    wanted = {m.id: m for m in snapshot.models if m.task_queue in queues and m.engine is not None}
    loop = asyncio.get_running_loop()
    for model_id in [m for m in adapters if m not in wanted]:
        old = adapters.pop(model_id)
        loop.call_later(600.0, _close_later, old)
    for model_id, entry in wanted.items():
        if model_id not in adapters and entry.engine is not None:
            adapters[model_id] = build_adapter(entry.engine)

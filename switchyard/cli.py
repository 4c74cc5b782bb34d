"""`switchyard`: one entry point, a subcommand per process and per operator task."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from orchestration.catalog import CatalogError, load_catalog


def _run_async(main) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main)


async def _until_signal(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


def cmd_proxy(args: argparse.Namespace) -> int:
    import uvicorn

    from proxy.http.app import create_app
    from proxy.http.protocol import EnvelopeHttpToolsProtocol
    from proxy.config import ProxySettings
    from proxy.http.logs import configure_logging

    from orchestration.telemetry import setup_tracing

    try:
        settings = ProxySettings.from_env()
    except ValueError as exc:  # e.g. a refused SWITCHYARD_API_KEYS entry (its text is never shown)
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return 2
    from orchestration.codec import require_keys

    require_keys()  # SWITCHYARD_PAYLOAD_KEYS
    configure_logging(settings.log_level)
    setup_tracing("switchyard-proxy")  # OTEL_* variables
    load_catalog(settings.catalog_path)  # fail fast with the field named
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, loop="uvloop",
                http=EnvelopeHttpToolsProtocol, log_level="warning", access_log=False, timeout_keep_alive=30,
                timeout_graceful_shutdown=10)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from orchestration.natsconfig import auth_from_env, replicas_from_env, retention_from_env, servers_from_env
    from orchestration.webhooks import parse_allow_list
    from orchestration.worker import WorkerConfig, run_worker
    from proxy.http.logs import configure_logging

    from orchestration.telemetry import setup_tracing

    configure_logging(os.environ.get("SWITCHYARD_LOG_LEVEL", "INFO"))
    setup_tracing("switchyard-worker")  # OTEL_* variables
    from orchestration.codec import require_keys

    require_keys()  # SWITCHYARD_PAYLOAD_KEYS
    catalog = load_catalog(os.environ.get("SWITCHYARD_CATALOG", "model_catalog.yaml"))
    queues = tuple(q for q in (args.queues or os.environ.get("SWITCHYARD_QUEUES", "")).split(",") if q)
    config = WorkerConfig(
        temporal_address=os.environ.get("SWITCHYARD_TEMPORAL_ADDRESS", "127.0.0.1:7233"),
        namespace=os.environ.get("SWITCHYARD_TEMPORAL_NAMESPACE", "default"),
        nats_servers=servers_from_env(os.environ),
        nats_replicas=replicas_from_env(os.environ),
        nats_auth=auth_from_env(os.environ),
        jobs_retention=retention_from_env(os.environ),
        queues=queues,
        coalesce_s=float(os.environ.get("SWITCHYARD_COALESCE_MS", "5")) / 1000,
        cpu_queue=os.environ.get("SWITCHYARD_CPU_QUEUE", "cpu"),
        train_queue=os.environ.get("SWITCHYARD_TRAIN_QUEUE", "train"),
        webhook_allow=parse_allow_list(os.environ.get("SWITCHYARD_WEBHOOK_ALLOW", "")),
        webhook_base_delay_s=float(os.environ.get("SWITCHYARD_WEBHOOK_BASE_DELAY_S", "5")),
        metrics_port=int(os.environ.get("SWITCHYARD_METRICS_PORT", "0") or 0),
        metrics_host=os.environ.get("SWITCHYARD_METRICS_HOST", "127.0.0.1"),
    )

    async def main() -> None:
        stop = asyncio.Event()
        await _until_signal(stop)
        await run_worker(config, catalog, stop)

    _run_async(main())
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from switchyard.stack import run_stack

    return run_stack(workers=args.workers, triton=not args.no_triton)


def cmd_catalog(args: argparse.Namespace) -> int:
    try:
        catalog = load_catalog(args.path)
    except CatalogError as exc:
        print(f"invalid catalog: {exc}", file=sys.stderr)
        return 2
    if args.action in ("check", "validate"):
        print(f"{args.path}: ok, {len(catalog.models)} model(s)")
    else:
        for m in catalog.models:
            if m.engine is None:
                print(f"{m.id}\tpipeline\t{m.task_queue}\t{' -> '.join(s.model for s in m.pipeline)}")
            else:
                print(f"{m.id}\t{m.engine.kind}\t{m.task_queue}\t{m.engine.url}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from gatekeeping.keystore import new_key

    print(new_key())
    return 0


def cmd_payload_key(args: argparse.Namespace) -> int:
    from orchestration.codec import new_key_entry

    print(new_key_entry(args.id))
    return 0


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchyard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("proxy", help="run the HTTP proxy (settings from SWITCHYARD_* env)").set_defaults(fn=cmd_proxy)
    w = sub.add_parser("worker", help="run a Temporal worker for the catalog's task queues")
    w.add_argument("--queues", help="comma-separated task queues (default: all in the catalog)")
    w.set_defaults(fn=cmd_worker)
    up = sub.add_parser("up", help="start the whole embedded stack in the foreground, supervised")
    up.add_argument("--workers", type=_positive, default=os.environ.get("SWITCHYARD_WORKERS", "2"),
                    help="worker processes (default: $SWITCHYARD_WORKERS or 2)")
    up.add_argument("--no-triton", action="store_true", help="do not start Triton even if installed")
    up.set_defaults(fn=cmd_up)
    c = sub.add_parser("catalog", help="check or list the model catalog")
    c.add_argument("action", choices=["check", "validate", "list"],
                   help="check (alias: validate): validate FILE, naming the bad line and field; list: its models")
    c.add_argument("path", nargs="?", default=os.environ.get("SWITCHYARD_CATALOG", "model_catalog.yaml"))
    c.set_defaults(fn=cmd_catalog)
    pk = sub.add_parser("payload-key", help="print a new SWITCHYARD_PAYLOAD_KEYS entry (KEY_ID:BASE64_KEY)")
    pk.add_argument("--id", help="the key id (default: k and today's date)")
    pk.set_defaults(fn=cmd_payload_key)
    from switchyard.admin_cli import register as register_admin

    register_admin(sub, cmd_keys)  # tenants, keys (generate/create/list/revoke), usage
    from switchyard.jobs_cli import register as register_jobs

    register_jobs(sub)
    from switchyard.webhooks_cli import register as register_webhooks

    register_webhooks(sub)
    from switchyard.models_cli import register as register_models

    register_models(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())

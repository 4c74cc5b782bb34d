"""`switchyard up`: Temporal, NATS, the engines, workers and the proxy, supervised, on this machine."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from functools import partial
from pathlib import Path

from switchyard.processes import (
    ROOT,
    free_port,
    spawn_embedding_engine,
    spawn_engine,
    spawn_nats,
    spawn_temporal,
    spawn_triton,
    start_python,
    triton_installed,
    wait_engine,
    wait_http,
    wait_port,
    wait_triton,
)
from switchyard.supervisor import Supervisor


def _port(env: str, saved: dict, key: str) -> int:
    if os.environ.get(env):
        return int(os.environ[env])
    return saved.get(key) or free_port()


def run_stack(workers: int = 2, triton: bool = True, grace: float = 2.0) -> int:
    """Starts the stack and keeps it running (a crashed process is restarted) until SIGINT or
    SIGTERM; then stops every process at once, SIGKILL for those still running after `grace`."""
    var = Path(os.environ.get("SWITCHYARD_VAR", ROOT / "var"))
    run_dir, log_dir = var / "run", var / "log"
    for pidfile in run_dir.glob("*.pid") if run_dir.exists() else []:
        try:
            os.kill(int(pidfile.read_text()), 0)
            print(f"{pidfile.stem} is already running (pid file {pidfile}); stop it first", file=sys.stderr)
            return 1
        except (ProcessLookupError, ValueError):
            pidfile.unlink()
    ports_file = var / "ports.json"
    saved = json.loads(ports_file.read_text()) if ports_file.exists() else {}
    ports = {
        "temporal": _port("SWITCHYARD_TEMPORAL_PORT", saved, "temporal"),
        "temporal_ui": _port("SWITCHYARD_TEMPORAL_UI_PORT", saved, "temporal_ui"),
        "nats": _port("SWITCHYARD_NATS_PORT", saved, "nats"),
        "engine": _port("SWITCHYARD_ENGINE_PORT", saved, "engine"),
        "embed": _port("SWITCHYARD_EMBED_ENGINE_PORT", saved, "embed"),
        "triton": _port("SWITCHYARD_TRITON_PORT", saved, "triton"),
        "proxy": int(os.environ.get("SWITCHYARD_PORT", "8000")),
    }
    var.mkdir(parents=True, exist_ok=True)
    ports_file.write_text(json.dumps(ports))
    key = os.environ.get("SWITCHYARD_DEMO_KEY") or _demo_key(var)
    env = {
        "SWITCHYARD_TEMPORAL_ADDRESS": f"127.0.0.1:{ports['temporal']}",
        "SWITCHYARD_NATS_URL": f"nats://127.0.0.1:{ports['nats']}",
        "SWITCHYARD_ENGINE_URL": f"http://127.0.0.1:{ports['engine']}/v1",
        "SWITCHYARD_EMBED_ENGINE_URL": f"http://127.0.0.1:{ports['embed']}/v1",
        "SWITCHYARD_TRITON_URL": f"http://127.0.0.1:{ports['triton']}",
        "SWITCHYARD_OBJECT_DIR": os.environ.get("SWITCHYARD_OBJECT_DIR", str(var / "objects")),
        # Engines the worker deploys (hot swaps, fine-tuned models): their logs and pid files, which
        # `make stop` reads too.
        "SWITCHYARD_DEPLOY_LOG_DIR": os.environ.get("SWITCHYARD_DEPLOY_LOG_DIR", str(var / "run" / "deploys")),
        "SWITCHYARD_PORT": str(ports["proxy"]),
        "SWITCHYARD_DEMO_KEY": key,
        "SWITCHYARD_PAYLOAD_KEYS": os.environ.get("SWITCHYARD_PAYLOAD_KEYS") or _payload_keys(var),
    }
    os.environ.update(env)
    sup = Supervisor()

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where a shell's `&` left it ignored
    try:
        t0 = time.monotonic()
        with_triton = triton and triton_installed()
        if with_triton:  # it loads its models while the rest starts
            triton_proc = sup.add("triton", partial(spawn_triton, ports["triton"], log_dir, run_dir))
        temporal = sup.add("temporal", partial(spawn_temporal, ports["temporal"], var / "temporal.db",
                                               log_dir, run_dir, ports["temporal_ui"]))
        nats = sup.add("nats", partial(spawn_nats, ports["nats"], var / "js", log_dir, run_dir))
        engine = sup.add("engine", partial(spawn_engine, ports["engine"], log_dir, run_dir))
        embed = sup.add("embed-engine", partial(spawn_embedding_engine, ports["embed"], log_dir, run_dir))
        wait_port(temporal, ports["temporal"], 30)
        wait_port(nats, ports["nats"], 15)
        wait_engine(engine, ports["engine"])
        wait_engine(embed, ports["embed"])
        if with_triton:
            wait_triton(triton_proc)
        else:
            print("(no Triton: the audio models and all-minilm-l6-v2 are not served; "
                  + ("--no-triton)" if triton else "`make install` builds .cache/pytriton)"), file=sys.stderr)
        for i in range(1, workers + 1):
            name = f"worker-{i}"
            sup.add(name, partial(start_python, name, ["worker"], log_dir, run_dir, _worker_env(env, i)))
        proxy = sup.add("proxy", partial(start_python, "proxy", ["proxy"], log_dir, run_dir, env))
        wait_http(proxy, f"http://127.0.0.1:{ports['proxy']}/healthz", 60)
        wait_http(temporal, f"http://127.0.0.1:{ports['temporal_ui']}/", 30)
        print(banner(ports, key, workers, log_dir, time.monotonic() - t0), flush=True)
        sup.run()
        return 0  # not reached: run() returns only by an exception
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        print(f"start failed: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the stop short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        t_stop = time.monotonic()
        killed = sup.stop(grace)
        print(f"stopped {len(sup.services)} processes in {time.monotonic() - t_stop:.1f}s"
              + (f" (SIGKILL after {grace:g}s: {', '.join(killed)})" if killed else ""), flush=True)


def banner(ports: dict[str, int], key: str, workers: int, log_dir: Path, took_s: float) -> str:
    base = f"http://127.0.0.1:{ports['proxy']}"
    return (f"\nSwitchyard is up in {took_s:.1f}s\n"
            f"  base URL    : {base}/v1\n"
            f"  API key     : {key}\n"
            f"  chat page   : {base}/chat  (paste the API key)\n"
            f"  Temporal UI : http://127.0.0.1:{ports['temporal_ui']}/namespaces/default/workflows\n"
            f"  workers     : {workers} (a crashed process is restarted)\n"
            f"  logs        : {log_dir}/\n"
            f"Try: curl -N {base}/v1/chat/completions "
            f"-H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
            "-d '{\"model\":\"smollm2-135m-instruct\",\"stream\":true,"
            "\"messages\":[{\"role\":\"user\",\"content\":\"Hello!\"}]}'\n"
            f"     curl {base}/v1/audio/speech -H 'Authorization: Bearer {key}' "
            "-H 'Content-Type: application/json' -d '{\"model\":\"hibari-tts\",\"voice\":\"alloy\","
            "\"input\":\"Hello from Switchyard.\",\"response_format\":\"wav\"}' -o hello.wav\n"
            f"     switchyard jobs list    # then: switchyard jobs tail <id>\n"
            "Ctrl-C stops everything.")


def _worker_env(env: dict[str, str], i: int) -> dict[str, str]:
    """Worker i's environment: with SWITCHYARD_METRICS_PORT set, worker i serves /metrics on that
    port + i - 1."""
    port = int(os.environ.get("SWITCHYARD_METRICS_PORT", "0") or 0)
    return {**env, "SWITCHYARD_METRICS_PORT": str(port + i - 1)} if port else env


def _demo_key(var: Path) -> str:
    from gatekeeping.keystore import new_key

    path = var / "demo_key"
    if path.exists():
        return path.read_text().strip()
    key = new_key()
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def _payload_keys(var: Path) -> str:
    """The stack's Temporal payload key, kept next to its database (a new one per start could not
    decode the histories already there)."""
    from orchestration.codec import new_key_entry

    path = var / "payload_keys"
    if path.exists():
        return path.read_text().strip()
    entry = new_key_entry()
    path.touch(0o600)
    path.write_text(entry + "\n")
    return entry


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt

"""`switchyard up`: Temporal, NATS, the default engine, a worker and the proxy, on this machine."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from switchyard.processes import (
    ROOT,
    Managed,
    free_port,
    start_embedding_engine,
    start_engine,
    start_nats,
    start_python,
    spawn_triton,
    start_temporal,
    triton_installed,
    wait_http,
    wait_triton,
)


def _port(env: str, saved: dict, key: str) -> int:
    if os.environ.get(env):
        return int(os.environ[env])
    return saved.get(key) or free_port()


def run_stack() -> int:
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
        "SWITCHYARD_PORT": str(ports["proxy"]),
        "SWITCHYARD_DEMO_KEY": key,
    }
    os.environ.update(env)
    started: list[Managed] = []
    stopping = False

    def stop_all(*_: object) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        for m in reversed(started):
            m.stop()

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where a shell's `&` left it ignored
    try:
        t0 = time.monotonic()
        triton = spawn_triton(ports["triton"], log_dir, run_dir) if triton_installed() else None
        if triton is not None:  # it loads its models while the rest starts
            started.append(triton)
        started.append(start_temporal(ports["temporal"], var / "temporal.db", log_dir, run_dir))
        started.append(start_nats(ports["nats"], var / "js", log_dir, run_dir))
        started.append(start_engine(ports["engine"], log_dir, run_dir))
        started.append(start_embedding_engine(ports["embed"], log_dir, run_dir))
        if triton is not None:
            wait_triton(triton)
        else:
            print("(no .cache/pytriton: the audio models and all-minilm-l6-v2 are not served; "
                  "`make install` builds it)", file=sys.stderr)
        started.append(start_python("worker", ["worker"], log_dir, run_dir, env))
        proxy = start_python("proxy", ["proxy"], log_dir, run_dir, env)
        started.append(proxy)
        wait_http(proxy, f"http://127.0.0.1:{ports['proxy']}/healthz", 60)
        print(f"\nSwitchyard is up in {time.monotonic() - t0:.1f}s\n"
              f"  base URL : http://127.0.0.1:{ports['proxy']}/v1\n"
              f"  API key  : {key}\n"
              f"  logs     : {log_dir}/\n"
              f"Try: curl -N http://127.0.0.1:{ports['proxy']}/v1/chat/completions "
              f"-H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
              "-d '{\"model\":\"smollm2-135m-instruct\",\"stream\":true,"
              "\"messages\":[{\"role\":\"user\",\"content\":\"Hello!\"}]}'\n"
              f"     curl http://127.0.0.1:{ports['proxy']}/v1/audio/speech -H 'Authorization: Bearer {key}' "
              "-H 'Content-Type: application/json' -d '{\"model\":\"hibari-tts\",\"voice\":\"alloy\","
              "\"input\":\"Hello from Switchyard.\",\"response_format\":\"wav\"}' -o hello.wav\n"
              "Ctrl-C stops everything.", flush=True)
        while all(m.alive() for m in started):
            time.sleep(0.5)
        dead = [m.name for m in started if not m.alive()]
        print(f"stopping: {', '.join(dead)} exited; see {log_dir}/", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        print(f"start failed: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_all()


def _demo_key(var: Path) -> str:
    from switchyard.cli import new_key

    path = var / "demo_key"
    if path.exists():
        return path.read_text().strip()
    key = new_key()
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt

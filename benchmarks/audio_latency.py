"""Latency the proxy adds to the Triton-served models: speech, transcription, embeddings, chat.

Starts a private `switchyard up` (Temporal, NATS, llama-servers, the Triton deployment, a worker, the
proxy) with its state in a temp dir, then sends the same requests to Triton directly and through the
proxy, interleaved, one at a time. Writes benchmarks/results/audio_latency.json and prints a table.

    .venv/bin/python benchmarks/audio_latency.py [--n 15]

speech: time to the first audio byte and to the last (wav, two sentences); transcription: a 2.7 s
wav, whole request; embeddings: one sentence, whole request; chat (SmolLM2 on Triton's
generate_stream): time to the first text, 16 tokens, greedy.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "audio_latency.json"
TEXT = "The quick brown fox jumps over the lazy dog. It was not amused."


def start_stack(var: Path) -> tuple[subprocess.Popen, str, str, str]:
    port = str(_free_port())
    env = {**os.environ, "SWITCHYARD_VAR": str(var), "SWITCHYARD_PORT": port}
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "switchyard"), "up"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    assert proc.stdout is not None
    for line in proc.stdout:
        if "Switchyard is up" in line:
            break
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("the stack did not start: " + line)
    ports = json.loads((var / "ports.json").read_text())
    key = (var / "demo_key").read_text().strip()
    return proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ports['triton']}", key


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed_stream(client: httpx.Client, url: str, **kw) -> tuple[float, float, bytes]:
    t0 = time.perf_counter()
    first, body = None, []
    with client.stream("POST", url, **kw) as r:
        r.raise_for_status()
        for chunk in r.iter_bytes():
            if first is None and chunk:
                first = time.perf_counter() - t0
            body.append(chunk)
    return first or 0.0, time.perf_counter() - t0, b"".join(body)


def direct_speech(client: httpx.Client, triton: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    first = None
    with client.stream("POST", f"{triton}/v2/models/tts/generate_stream",
                       json={"text_input": TEXT, "parameters": {"voice": "heart", "response_format": "wav"}}) as r:
        for line in r.iter_lines():
            if line.startswith("data:") and first is None and json.loads(line[5:]).get("audio"):
                first = time.perf_counter() - t0
    return first or 0.0, time.perf_counter() - t0


def direct_transcription(client: httpx.Client, triton: str, audio: bytes) -> float:
    element = struct.pack("<I", len(audio)) + audio
    header = json.dumps({"inputs": [{"name": "audio", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": len(element)}}],
                         "outputs": [{"name": "transcript", "parameters": {"binary_data": False}}],
                         "parameters": {"task": "transcribe"}}).encode()
    t0 = time.perf_counter()
    r = client.post(f"{triton}/v2/models/whisper/infer", content=header + element,
                    headers={"inference-header-content-length": str(len(header)),
                             "content-type": "application/octet-stream"})
    r.raise_for_status()
    return time.perf_counter() - t0


QUESTION = "What is the capital of France?"
CHATML = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"


def direct_chat_ttft(client: httpx.Client, triton: str) -> float:
    t0, first = time.perf_counter(), None
    with client.stream("POST", f"{triton}/v2/models/smollm/generate_stream",
                       json={"text_input": CHATML, "parameters": {"max_tokens": 16, "temperature": 0}}) as r:
        for line in r.iter_lines():  # read to the end: nothing may go on generating behind the next sample
            if first is None and line.startswith("data:") and json.loads(line[5:]).get("text_output"):
                first = time.perf_counter() - t0
    if first is None:
        raise RuntimeError("no text from Triton")
    return first


def proxy_chat_ttft(client: httpx.Client, proxy: str, auth: dict[str, str]) -> float:
    body = {"model": "smollm2-triton", "stream": True, "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "user", "content": QUESTION}]}
    t0, first = time.perf_counter(), None
    with client.stream("POST", f"{proxy}/v1/chat/completions", json=body, headers=auth) as r:
        for line in r.iter_lines():
            if first is None and line.startswith("data: {") and '"content":"' in line.replace(" ", "") \
                    and '"content":""' not in line.replace(" ", ""):
                first = time.perf_counter() - t0
    if first is None:
        raise RuntimeError("no text from the proxy")
    return first


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def summary(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    return {"p50_ms": round(statistics.median(ms), 1), "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 1),
            "mean_ms": round(statistics.fmean(ms), 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=15)
    args = parser.parse_args()
    var = Path(tempfile.mkdtemp(prefix="sy-audio-bench-"))
    proc, proxy, triton, key = start_stack(var)
    auth = {"authorization": f"Bearer {key}"}
    samples: dict[str, list[float]] = {k: [] for k in (
        "speech_first_byte_direct", "speech_first_byte_proxy", "speech_total_direct", "speech_total_proxy",
        "transcription_direct", "transcription_proxy", "embedding_direct", "embedding_proxy",
        "chat_ttft_direct", "chat_ttft_proxy")}
    try:
        with httpx.Client(timeout=120) as c:
            speech_body = {"model": "hibari-tts", "voice": "heart", "input": TEXT, "response_format": "wav"}
            _, _, audio = timed_stream(c, f"{proxy}/v1/audio/speech", json=speech_body, headers=auth)
            for _ in range(2):  # warm both paths
                direct_speech(c, triton)
                direct_transcription(c, triton, audio)
                direct_chat_ttft(c, triton)
                proxy_chat_ttft(c, proxy, auth)
            for _ in range(args.n):
                first, total = direct_speech(c, triton)
                samples["speech_first_byte_direct"].append(first)
                samples["speech_total_direct"].append(total)
                first, total, _ = timed_stream(c, f"{proxy}/v1/audio/speech", json=speech_body, headers=auth)
                samples["speech_first_byte_proxy"].append(first)
                samples["speech_total_proxy"].append(total)
                samples["transcription_direct"].append(direct_transcription(c, triton, audio))
                samples["transcription_proxy"].append(timed(lambda: c.post(
                    f"{proxy}/v1/audio/transcriptions", headers=auth, data={"model": "whisper-tiny"},
                    files={"file": ("fox.wav", audio)}).raise_for_status()))
                samples["embedding_direct"].append(timed(lambda: c.post(
                    f"{triton}/v2/models/minilm/infer", json={"inputs": [{
                        "name": "text_input", "datatype": "BYTES", "shape": [1, 1], "data": [TEXT]}]}
                ).raise_for_status()))
                samples["embedding_proxy"].append(timed(lambda: c.post(
                    f"{proxy}/v1/embeddings", headers=auth,
                    json={"model": "all-minilm-l6-v2", "input": TEXT}).raise_for_status()))
                samples["chat_ttft_direct"].append(direct_chat_ttft(c, triton))
                samples["chat_ttft_proxy"].append(proxy_chat_ttft(c, proxy, auth))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    figures = {k: summary(v) for k, v in samples.items()}
    added = {k.removesuffix("_proxy"): round(figures[k]["p50_ms"] - figures[k.replace("_proxy", "_direct")]["p50_ms"], 1)
             for k in figures if k.endswith("_proxy")}
    result = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "n": args.n,
              "audio_bytes": len(audio), "figures": figures, "added_p50_ms": added}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for name, fig in figures.items():
        print(f"{name:28s} p50 {fig['p50_ms']:8.1f} ms   p90 {fig['p90_ms']:8.1f} ms")
    print("added p50:", added)


if __name__ == "__main__":
    sys.exit(main())

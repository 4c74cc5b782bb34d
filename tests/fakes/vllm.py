"""A fake vLLM OpenAI server for failure scenarios the real engine cannot be made to produce.

It speaks vLLM's wire format: `chat.completion.chunk` SSE events ending in `data: [DONE]`, a
usage chunk with `choices: []` when `stream_options.include_usage` is set, and errors as
`{"error": {"message", "type", "param", "code"}}` with the HTTP status (vLLM's ErrorResponse).

The scenario is chosen by the last user message: `scenario=<name>;nonce=<unique>`.
  ok           streams REPLY
  503x2        answers 503 to the first two calls for this nonce, then streams REPLY
  slow         streams REPLY one word every 0.3 s (`delay=<seconds>` sets another pace)
  tools        streams a tool call in pieces
  bad-request  answers 400 (a non-retryable engine error)
  size         streams "received <N> bytes", N the size of the request body it got
`repeat=<n>` (with ok or slow) streams REPLY n times over.

Audio, as vLLM's speech-to-text serving answers (vllm/entrypoints/openai/speech_to_text.py):
`/v1/audio/transcriptions` and `/translations` take multipart; response_format text, json or
verbose_json (others: 400); a language code Whisper does not know: 400 "Unsupported language";
over 25 MB: 400 "Maximum file size exceeded". verbose_json carries vLLM's quirks: `duration` a
string, `language` the request's (null when not given), segments' avg_logprob, compression_ratio
and no_speech_prob null, `words` null. It "hears" TRANSCRIPT (the audio must be a WAV: its length
gives the duration). LoRA adapters, as vLLM's runtime LoRA API answers (serving_models.py):
`/v1/load_lora_adapter` {lora_name, lora_path}: 200 "Success: LoRA adapter 'x' added successfully.",
400 when one is missing or the name is loaded already, 404 when the path holds no adapter;
`/v1/unload_lora_adapter` {lora_name}: 200, 404 for an unknown name. A chat naming an adapter
that was unloaded: 404 "The model `x` does not exist.". `replies` sets the text per requested
model name (to tell versions apart), `failing = True` answers every chat 503 (an injected breach),
`served` counts chats per requested model name. `/v1/audio/speech` (OpenAI's speech API, as vLLM-Omni serves it) streams a
deterministic tone as pcm or wav in 4 pieces; an unknown voice is a 400.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import struct
import time
import wave
from collections import Counter, deque

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from tests.fakes.server import LoopbackServer

REPLY = "Hello from the fake engine, streamed in pieces."
TRANSCRIPT = (" The fake engine heard you.", " It says so in two segments.")
WHISPER_LANGUAGES = {"en": "English", "de": "German", "fr": "French", "ja": "Japanese", "ko": "Korean"}
VOICES = ("alloy", "echo")


def _error(status: int, message: str, type_: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": None, "code": status}},
                        status_code=status)


class FakeVLLM(LoopbackServer):
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.seen: list[str] = []  # every prompt text the engine received, to check what reached it
        self.bodies: deque[dict] = deque(maxlen=64)  # the latest chat request bodies, as received
        self.audio_forms: list[dict[str, list[str]]] = []  # the non-file fields of each audio request
        self.replies: dict[str, str] = {}  # requested model name -> the text it streams (default REPLY)
        self.failing = False
        self.served: Counter[str] = Counter()
        self.loras: dict[str, str] = {}
        self.unloaded: set[str] = set()
        self.responses_bodies: deque[dict] = deque(maxlen=64)  # the latest /v1/responses bodies
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"]),
                                     Route("/v1/responses", self.responses, methods=["POST"]),
                                     Route("/v1/audio/transcriptions", self.transcriptions, methods=["POST"]),
                                     Route("/v1/audio/translations", self.translations, methods=["POST"]),
                                     Route("/v1/audio/speech", self.speech, methods=["POST"]),
                                     Route("/v1/load_lora_adapter", self.load_lora, methods=["POST"]),
                                     Route("/v1/unload_lora_adapter", self.unload_lora, methods=["POST"]),
                                     Route("/health", self.health)])

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({})

    async def chat(self, request: Request):
        raw = await request.body()
        body = json.loads(raw)
        self.bodies.append(body)
        text = body["messages"][-1]["content"]
        if isinstance(text, list):  # content parts: the scenario is in the text ones
            text = ";".join(p.get("text", "") for p in text)
        self.seen.extend(str(m.get("content")) for m in body["messages"])
        params = dict(p.split("=", 1) for p in text.split(";") if "=" in p)
        scenario, nonce = params.get("scenario", "ok"), params.get("nonce", "")
        self.calls[nonce] += 1
        if body.get("model") in self.unloaded:
            return JSONResponse({"error": {"message": f"The model `{body['model']}` does not exist.",
                                           "type": "NotFoundError", "param": "model", "code": 404}}, status_code=404)
        if self.failing:
            return _error(503, "The server is overloaded; try again later.", "ServiceUnavailableError")
        self.served[body.get("model", "")] += 1
        if scenario == "503x2" and self.calls[nonce] <= 2:
            return _error(503, "The server is overloaded; try again later.", "ServiceUnavailableError")
        if scenario == "bad-request":
            return _error(400, "This model's maximum context length is 2048 tokens.", "BadRequestError")
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        reply = " ".join([self.replies.get(body.get("model", ""), REPLY)] * int(params.get("repeat", 1)))
        reply = f"received {len(raw)} bytes" if scenario == "size" else reply
        return StreamingResponse(self._stream(body["model"], scenario, include_usage, reply,
                                              float(params.get("delay", 0.3))),
                                 media_type="text/event-stream")

    async def _stream(self, model: str, scenario: str, include_usage: bool, reply: str = REPLY,
                      delay: float = 0.3):
        created = int(time.time())
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": model}

        def chunk(delta: dict, finish: str | None = None) -> str:
            c = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            return f"data: {json.dumps(c)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        pieces: list[str] = reply.split(" ")
        if scenario == "tools":
            yield chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                         "function": {"name": "get_weather", "arguments": ""}}]})
            for part in ('{"city": ', '"Seoul"}'):
                yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
            yield chunk({}, "tool_calls")
            n = 3
        else:
            for i, word in enumerate(pieces):
                if scenario == "slow":
                    await asyncio.sleep(delay)
                yield chunk({"content": word if i == 0 else " " + word})
            yield chunk({}, "stop")
            n = len(pieces)
        if include_usage:
            usage = {"prompt_tokens": 11, "completion_tokens": n, "total_tokens": 11 + n}
            yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    async def load_lora(self, request: Request):
        body = await request.json()
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            return _error(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
        if name in self.loras:
            return _error(400, f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput")
        if not os.path.exists(path):
            return _error(404, f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError")
        self.loras[name] = path
        self.unloaded.discard(name)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    async def unload_lora(self, request: Request):
        body = await request.json()
        name = body.get("lora_name")
        if not name and not body.get("lora_int_id"):
            return _error(400, "either 'lora_name' and 'lora_int_id' needs to be provided.", "InvalidUserInput")
        if name not in self.loras:
            return _error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        del self.loras[name]
        self.unloaded.add(name)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    async def responses(self, request: Request):
        """vLLM's /v1/responses (vllm/entrypoints/openai/serving_responses.py): typed events, each
        `event: <type>` with a `sequence_number`; the scenario is in the last input item's text."""
        body = await request.json()
        self.responses_bodies.append(body)
        last = body["input"][-1] if isinstance(body["input"], list) else {"content": body["input"]}
        text = last.get("content") or last.get("output") or ""
        if isinstance(text, list):
            text = ";".join(p.get("text", "") for p in text)
        params = dict(p.split("=", 1) for p in str(text).split(";") if "=" in p)
        scenario, nonce = params.get("scenario", "ok"), params.get("nonce", "")
        self.calls[nonce] += 1
        if scenario == "bad-request":
            return _error(400, "This model's maximum context length is 2048 tokens.", "BadRequestError")
        words = " ".join([REPLY] * int(params.get("repeat", 1))).split(" ")
        return StreamingResponse(_responses_stream(body, scenario, words, float(params.get("delay", 0.3))),
                                 media_type="text/event-stream")

    async def transcriptions(self, request: Request):
        return await self._speech_to_text(request, "transcribe")

    async def translations(self, request: Request):
        return await self._speech_to_text(request, "translate")

    async def _speech_to_text(self, request: Request, task: str):
        form = await request.form()
        self.audio_forms.append({k: [str(v) for v in form.getlist(k)] for k in form.keys() if k != "file"})
        fmt = form.get("response_format") or "json"
        if fmt not in ("text", "json", "verbose_json"):
            return _error(400, "Currently only support response_format`text`, `json` or `verbose_json`",
                          "BadRequestError")
        language = form.get("language")
        if language is not None and language not in WHISPER_LANGUAGES:
            return _error(400, f"Unsupported language: {language!r}.  Language should be one of: "
                               f"{list(WHISPER_LANGUAGES.values())}.", "BadRequestError")
        data = await form["file"].read()
        if len(data) / 1024 ** 2 > 25:
            return _error(400, "Maximum file size exceeded", "BadRequestError")
        with wave.open(io.BytesIO(data)) as w:
            duration = w.getnframes() / w.getframerate()
        text = "".join(TRANSCRIPT)
        if fmt == "text":
            return PlainTextResponse(text)
        if fmt == "json":
            usage = {"usage": {"type": "duration", "seconds": math.ceil(duration)}} if task == "transcribe" else {}
            return JSONResponse({"text": text, **usage})
        temperature = float(form.get("temperature") or 0.0)
        half = round(duration / 2, 2)
        segments = [{"id": i, "seek": 0, "start": start, "end": end, "temperature": temperature, "text": part,
                     "tokens": [50364 + i], "avg_logprob": None, "compression_ratio": None,
                     "no_speech_prob": None}
                    for i, (part, start, end) in enumerate(zip(TRANSCRIPT, (0.0, half), (half, round(duration, 2))))]
        return JSONResponse({"text": text, "language": language, "duration": str(duration),
                             "segments": segments, "words": None, "logprobs": None})

    async def speech(self, request: Request):
        body = await request.json()
        self.audio_forms.append({k: [str(v)] for k, v in body.items() if k != "input"})
        if body.get("voice") not in VOICES:
            return _error(400, f"Invalid voice {body.get('voice')!r}; supported voices: {list(VOICES)}",
                          "BadRequestError")
        fmt = body.get("response_format", "mp3")
        if fmt not in ("pcm", "wav"):
            return _error(400, f"Unsupported response_format {fmt!r}", "BadRequestError")
        return StreamingResponse(_tone(fmt, len(body.get("input", ""))), media_type=f"audio/{fmt}")


def tone(fmt: str, chars: int) -> bytes:
    """The audio the fake speaks: 40 ms of a 440 Hz tone per input character, 24 kHz 16-bit mono."""
    n = 960 * chars
    pcm = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / 24000))) for i in range(n))
    if fmt == "wav":
        header = (b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVE" + b"fmt "
                  + struct.pack("<IHHIIHH", 16, 1, 1, 24000, 48000, 2, 16) + b"data" + struct.pack("<I", len(pcm)))
        return header + pcm
    return pcm


async def _tone(fmt: str, chars: int):
    audio = tone(fmt, chars)
    step = -(-len(audio) // 4)
    for i in range(0, len(audio), step):
        await asyncio.sleep(0.05)
        yield audio[i:i + step]


async def _responses_stream(body: dict, scenario: str, words: list[str], delay: float):
    seq = iter(range(10 ** 6))
    rid, created = "resp_fake" + str(time.time_ns()), int(time.time())
    response = {"id": rid, "object": "response", "created_at": created, "model": body["model"],
                "status": "in_progress", "output": [], "usage": None}

    def event(kind: str, **fields) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields, 'sequence_number': next(seq)})}\n\n"

    yield event("response.created", response=response)
    yield event("response.in_progress", response=response)
    if scenario == "tools":
        item = {"type": "function_call", "id": "fc_fake", "call_id": "call_fake_1", "name": "get_weather",
                "arguments": "", "status": "in_progress"}
        yield event("response.output_item.added", output_index=0, item=item)
        for part in ('{"city": ', '"Seoul"}'):
            yield event("response.function_call_arguments.delta", item_id="fc_fake", output_index=0, delta=part)
        args = '{"city": "Seoul"}'
        yield event("response.function_call_arguments.done", item_id="fc_fake", output_index=0, arguments=args)
        yield event("response.output_item.done", output_index=0, item={**item, "arguments": args, "status": "completed"})
        output, n = [{**item, "arguments": args, "status": "completed"}], 3
    else:
        item = {"type": "message", "id": "msg_fake", "role": "assistant", "status": "in_progress", "content": []}
        yield event("response.output_item.added", output_index=0, item=item)
        yield event("response.content_part.added", item_id="msg_fake", output_index=0, content_index=0,
                    part={"type": "output_text", "text": "", "annotations": []})
        limit = body.get("max_output_tokens") or len(words)
        for i, word in enumerate(words[:limit]):
            if scenario == "slow":
                await asyncio.sleep(delay)
            if scenario == "error" and i == 3:
                yield event("error", code="internal_error", message="The engine failed mid-stream.", param=None)
                return
            yield event("response.output_text.delta", item_id="msg_fake", output_index=0, content_index=0,
                        delta=word if i == 0 else " " + word, logprobs=[])
        text = " ".join(words[:limit])
        part = {"type": "output_text", "text": text, "annotations": []}
        yield event("response.output_text.done", item_id="msg_fake", output_index=0, content_index=0, text=text,
                    logprobs=[])
        yield event("response.content_part.done", item_id="msg_fake", output_index=0, content_index=0, part=part)
        yield event("response.output_item.done", output_index=0, item={**item, "status": "completed", "content": [part]})
        output, n = [{**item, "status": "completed", "content": [part]}], min(limit, len(words))
    usage = {"input_tokens": 11, "output_tokens": n, "total_tokens": 11 + n,
             "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}
    if scenario != "tools" and (body.get("max_output_tokens") or len(words)) < len(words):
        yield event("response.incomplete", response={**response, "status": "incomplete", "output": output,
                                                     "usage": usage,
                                                     "incomplete_details": {"reason": "max_output_tokens"}})
    else:
        yield event("response.completed", response={**response, "status": "completed", "output": output,
                                                    "usage": usage})

"""Job events → OpenAI chat wire format: SSE chunk frames, or one assembled chat.completion.

Each event's frames depend on that event alone, so a stream resumed after event N is exactly the
tail of the uninterrupted stream.
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from schemas.errors import APIError
from proxy.http.errors import envelope_bytes
from proxy.http.sse import CHUNK, DONE_DATA, END, USAGE, Part, render
from schemas.events import Cancelled, Delta, Failed, Finished, JobEvent, Restarted, Started
from schemas.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    ChunkDelta,
    CompletionChoice,
    ErrorBody,
    ResponseMessage,
    TextCompletion,
)

_encoder = msgspec.json.Encoder()


def terminal_error(event: Failed | Cancelled, headers: dict[str, str] | None = None) -> APIError:
    if isinstance(event, Cancelled):
        return APIError("The job was cancelled.", status=409, type="invalid_request_error",
                        code="job_cancelled", headers=headers)
    if event.error.code == "no_capacity":  # backpressure: come back soon
        headers = {**(headers or {}), "retry-after": "1"}
    return APIError(event.error.message, status=event.status, type=event.error.type,
                    param=event.error.param, code=event.error.code, headers=headers)


class ChunkWriter:
    """`after_id`: the frame id a resumed stream starts after; frames up to it are not written."""

    def __init__(self, job_id: str, model: str, created: int, include_usage: bool, after_id: int = -1):
        self.job_id = job_id
        self.model = model
        self.created = created
        self.include_usage = include_usage
        self.after_id = after_id

    def chunk(self, choices: list[ChunkChoice], **extra: Any) -> bytes:
        return _encoder.encode(ChatCompletionChunk(id=self.job_id, created=self.created,
                                                   model=self.model, choices=choices, **extra))

    def delta_chunk(self, event: Delta) -> bytes:
        delta = ChunkDelta()
        if event.role:
            delta.role = event.role
        if event.content or not (event.tool_calls or event.reasoning):
            delta.content = event.content
        if event.reasoning:
            delta.reasoning_content = event.reasoning
        if event.tool_calls:
            delta.tool_calls = event.tool_calls
        return self.chunk([ChunkChoice(index=0, delta=delta)])

    def frames(self, event: JobEvent) -> bytes:
        return render(event.seq, self.parts(event), self.after_id)

    def parts(self, event: JobEvent) -> list[Part]:
        """The OpenAI endpoint's own stream: unnamed chunk events only."""
        if isinstance(event, Delta):
            return [(CHUNK, None, self.delta_chunk(event))]
        if isinstance(event, Finished):
            return self.finish_parts(event) + [(END, None, DONE_DATA)]
        if isinstance(event, Started):
            return []
        if isinstance(event, Restarted):
            # A chunk stream cannot take text back: end it; /v1/jobs/{id}/events shows the restart.
            return [(CHUNK, None, envelope_bytes(ErrorBody(
                message=f"The generation restarted ({event.reason}); follow /v1/jobs/{self.job_id}/events.",
                type="server_error", code="stream_restarted"))), (END, None, DONE_DATA)]
        assert isinstance(event, (Failed, Cancelled))
        return [(CHUNK, None, envelope_bytes(terminal_error(event).body())), (END, None, DONE_DATA)]

    def finish_parts(self, event: Finished) -> list[Part]:
        out: list[Part] = [(CHUNK, None, self.chunk([ChunkChoice(index=0, delta=ChunkDelta(),
                                                                 finish_reason=event.finish_reason or "stop")]))]
        if self.include_usage:
            out.append((USAGE, None, self.chunk([], usage=event.usage)))
        return out


class CompletionAssembler:
    """Collects a job's events into the chat.completion the synchronous endpoint returns."""

    def __init__(self, chunks: ChunkWriter):
        self.chunks = chunks
        self._reset()

    def _reset(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.tools = ToolCallMerger()

    def add(self, event: JobEvent) -> ChatCompletion | None:
        if isinstance(event, Delta):
            self.text.append(event.content)
            self.reasoning.append(event.reasoning)
            if event.tool_calls:
                self.tools.add(event.tool_calls)
        elif isinstance(event, Restarted):
            self._reset()
        elif isinstance(event, (Failed, Cancelled)):
            raise terminal_error(event)
        elif isinstance(event, Finished):
            return self._completion(event)
        return None

    def _completion(self, event: Finished) -> ChatCompletion:
        text = "".join(self.text)
        message = ResponseMessage(role="assistant", content=text if text or not self.tools.calls else None)
        if any(self.reasoning):
            message.reasoning_content = "".join(self.reasoning)
        if self.tools.calls:
            message.tool_calls = self.tools.result()
        c = self.chunks
        return ChatCompletion(id=c.job_id, created=c.created, model=c.model, usage=event.usage,
                              choices=[Choice(index=0, message=message,
                                              finish_reason=event.finish_reason or "stop")])


class ToolCallMerger:
    """Merges streamed tool-call deltas (by index) into complete tool calls."""

    def __init__(self) -> None:
        self.calls: dict[int, dict[str, Any]] = {}

    def add(self, deltas: list[dict[str, Any]]) -> None:
        for d in deltas:
            index = int(d.get("index", 0))
            call = self.calls.setdefault(index, {"id": "", "type": "function",
                                                 "function": {"name": "", "arguments": ""}})
            if d.get("id"):
                call["id"] = d["id"]
            if d.get("type"):
                call["type"] = d["type"]
            fn = d.get("function") or {}
            if fn.get("name"):
                call["function"]["name"] += fn["name"]
            if fn.get("arguments"):
                call["function"]["arguments"] += fn["arguments"]

    def result(self) -> list[dict[str, Any]]:
        return [self.calls[i] for i in sorted(self.calls)]


class TextChunkWriter(ChunkWriter):
    """Frames of POST /v1/completions' stream: `text_completion` chunks with `choices[].text`."""

    def text_chunk(self, choices: list[CompletionChoice], **extra: Any) -> bytes:
        return _encoder.encode(TextCompletion(id=self.job_id, created=self.created, model=self.model,
                                              choices=choices, **extra))

    def delta_chunk(self, event: Delta) -> bytes:
        return self.text_chunk([CompletionChoice(index=0, text=event.content)])

    def finish_parts(self, event: Finished) -> list[Part]:
        out: list[Part] = [(CHUNK, None, self.text_chunk([CompletionChoice(
            index=0, text="", finish_reason=event.finish_reason or "stop")]))]
        if self.include_usage:
            out.append((USAGE, None, self.text_chunk([], usage=event.usage)))
        return out


class TextCompletionAssembler(CompletionAssembler):
    """Collects a completions job's events into the `text_completion` the endpoint returns."""

    def _completion(self, event: Finished) -> TextCompletion:  # type: ignore[override]
        c = self.chunks
        return TextCompletion(id=c.job_id, created=c.created, model=c.model, usage=event.usage,
                              choices=[CompletionChoice(index=0, text="".join(self.text),
                                                        finish_reason=event.finish_reason or "stop")])


class ResultWriter(ChunkWriter):
    """A job whose result is an object (embeddings): no chunks; its end names the result."""

    def delta_chunk(self, event: Delta) -> bytes:
        return b"{}"

    def finish_parts(self, event: Finished) -> list[Part]:
        return []


class ResultAssembler(CompletionAssembler):
    """Yields the job's `Finished` event: its `result_ref` names the stored response body."""

    def _completion(self, event: Finished) -> Finished:  # type: ignore[override]
        return event


class SpeechWriter(ResultWriter):
    """A speech job's events stream: OpenAI's `speech.audio.delta` / `speech.audio.done` events."""

    def delta_chunk(self, event: Delta) -> bytes:
        return b'{"type":"speech.audio.delta","audio":"' + base64.b64encode(event.audio) + b'"}'

    def finish_parts(self, event: Finished) -> list[Part]:
        usage = {"input_tokens": event.usage.prompt_tokens, "output_tokens": 0,
                 "total_tokens": event.usage.prompt_tokens}
        return [(CHUNK, None, _encoder.encode({"type": "speech.audio.done", "usage": usage}))]

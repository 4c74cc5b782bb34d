"""The Responses API for engines: a Responses request (with the conversation rebuilt from earlier
responses) as a chat completions body, or as a Responses body for an engine that serves
/v1/responses itself; and that engine's Responses stream events back as StreamPieces."""

from __future__ import annotations

from typing import Any, Iterable

import msgspec

from adapters.base import EngineError, StreamPiece, bad_output
from schemas.openai import Usage
from schemas.responses import (
    FormatJSONObject,
    FormatJSONSchema,
    FunctionCall,
    FunctionCallOutput,
    FunctionChoice,
    InputImage,
    InputItem,
    InputText,
    Message,
    OutputText,
    Refusal,
    ResponsesRequest,
)

_ROLES = {"developer": "system"}


def _text_of(content: str | list[Any]) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.text if isinstance(p, (InputText, OutputText)) else p.refusal if isinstance(p, Refusal)
                   else "" for p in content)


def _chat_content(content: str | list[Any]) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not any(isinstance(p, InputImage) for p in content):
        return _text_of(content)
    parts: list[dict[str, Any]] = []
    for p in content:
        if isinstance(p, InputImage):
            parts.append({"type": "image_url", "image_url": {"url": p.image_url or "", "detail": p.detail}})
        else:
            parts.append({"type": "text", "text": _text_of([p])})
    return parts


def chat_messages(instructions: str | None, items: Iterable[InputItem]) -> list[dict[str, Any]]:
    """The conversation as chat messages: instructions first as the system message, function calls
    as the assistant's `tool_calls` (consecutive calls in one message), their outputs as tool messages."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for item in items:
        if isinstance(item, Message):
            role = _ROLES.get(item.role, item.role)
            content = _text_of(item.content) if role == "assistant" else _chat_content(item.content)
            messages.append({"role": role, "content": content})
        elif isinstance(item, FunctionCall):
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutput):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": _text_of(item.output)})
    return messages


def chat_body(req: ResponsesRequest, model: str, items: list[InputItem],
              default_max_tokens: int | None = None) -> dict[str, Any]:
    """The chat completions request that serves `req` over the whole conversation `items`."""
    body: dict[str, Any] = {"model": model, "messages": chat_messages(req.instructions, items)}
    if req.tools:
        body["tools"] = [{"type": "function", "function": _untagged(t)} for t in req.tools]
        if req.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = req.parallel_tool_calls
    if isinstance(req.tool_choice, FunctionChoice):
        body["tool_choice"] = {"type": "function", "function": {"name": req.tool_choice.name}}
    elif req.tool_choice is not None:
        body["tool_choice"] = req.tool_choice
    fmt = req.text.format if req.text is not None else None
    if isinstance(fmt, FormatJSONSchema):
        body["response_format"] = {"type": "json_schema", "json_schema": _untagged(fmt)}
    elif isinstance(fmt, FormatJSONObject):
        body["response_format"] = {"type": "json_object"}
    max_tokens = req.max_output_tokens if req.max_output_tokens is not None else default_max_tokens
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    for name in ("temperature", "top_p"):
        if getattr(req, name) is not None:
            body[name] = getattr(req, name)
    return body


def _untagged(value: msgspec.Struct) -> dict[str, Any]:
    return {k: v for k, v in msgspec.to_builtins(value).items() if k != "type"}


_PASSED = ("instructions", "tools", "tool_choice", "parallel_tool_calls", "text", "max_output_tokens",
           "temperature", "top_p")


def passthrough_body(req: ResponsesRequest, model: str, items: list[InputItem],
                     default_max_tokens: int | None = None) -> dict[str, Any]:
    """The Responses request for an engine that serves /v1/responses: the whole conversation as
    `input` (the engine keeps nothing: `store` false, no `previous_response_id` of ours)."""
    raw = msgspec.to_builtins(req)
    body: dict[str, Any] = {k: raw[k] for k in _PASSED if raw.get(k) not in (None, [])}
    body.update(model=model, input=msgspec.to_builtins(items), store=False)
    if "max_output_tokens" not in body and default_max_tokens is not None:
        body["max_output_tokens"] = default_max_tokens
    return body


# ---- an engine's Responses stream → pieces ---------------------------------------------------------


class _Usage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


class _Error(msgspec.Struct):
    message: str = ""
    code: Any = None


class _Incomplete(msgspec.Struct):
    reason: str | None = None


class _Response(msgspec.Struct):
    usage: _Usage | None = None
    error: _Error | None = None
    incomplete_details: _Incomplete | None = None
    model: str | None = None


class _Item(msgspec.Struct):
    type: str = ""
    call_id: str = ""
    name: str = ""
    arguments: str = ""


class _Event(msgspec.Struct):
    type: str
    delta: str = ""
    output_index: int = 0
    item: _Item | None = None
    response: _Response | None = None
    message: str = ""
    code: Any = None


_event_decoder = msgspec.json.Decoder(_Event)


class ResponsesStreamReader:
    """Maps one engine Responses stream (`data:` payloads, in order) to pieces: text and reasoning
    deltas, function calls as chat tool-call deltas indexed by their order, the end's finish reason
    and usage. `done` once the stream's terminal event was read."""

    def __init__(self) -> None:
        self.calls: dict[int, int] = {}  # output_index -> tool-call index
        self.done = False

    def pieces(self, data: str) -> list[StreamPiece]:
        try:
            ev = _event_decoder.decode(data)
        except msgspec.DecodeError:
            raise bad_output() from None
        if ev.type == "response.output_text.delta":
            return [StreamPiece(content=ev.delta)] if ev.delta else []
        if ev.type in ("response.reasoning_text.delta", "response.reasoning.delta"):
            return [StreamPiece(reasoning=ev.delta)] if ev.delta else []
        if ev.type == "response.output_item.added" and ev.item is not None and ev.item.type == "function_call":
            index = self.calls.setdefault(ev.output_index, len(self.calls))
            call = {"index": index, "id": ev.item.call_id, "type": "function",
                    "function": {"name": ev.item.name, "arguments": ev.item.arguments}}
            return [StreamPiece(role="assistant", tool_calls=[call])]
        if ev.type == "response.function_call_arguments.delta" and ev.output_index in self.calls and ev.delta:
            return [StreamPiece(tool_calls=[{"index": self.calls[ev.output_index],
                                             "function": {"arguments": ev.delta}}])]
        if ev.type in ("response.completed", "response.incomplete"):
            self.done = True
            return [self._end(ev)]
        if ev.type == "response.failed":
            error = ev.response.error if ev.response is not None and ev.response.error else _Error()
            raise EngineError(error.message or "engine error", status=502, retryable=False, code="engine_error")
        if ev.type == "error":
            raise EngineError(ev.message or "engine error", status=502, retryable=False, code="engine_error")
        return []

    def _end(self, ev: _Event) -> StreamPiece:
        resp = ev.response or _Response()
        if ev.type == "response.incomplete":
            reason = resp.incomplete_details.reason if resp.incomplete_details else None
            finish = "length" if reason in (None, "max_output_tokens") else "content_filter"
        else:
            finish = "tool_calls" if self.calls else "stop"
        usage = None
        if resp.usage is not None:
            u = resp.usage
            usage = Usage(prompt_tokens=u.input_tokens, completion_tokens=u.output_tokens,
                          total_tokens=u.total_tokens or u.input_tokens + u.output_tokens)
        return StreamPiece(finish_reason=finish, usage=usage, model=resp.model)

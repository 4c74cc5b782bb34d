"""Continuing a generation from the text a previous attempt already delivered."""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.events import Delta, JobEvent, Restarted


class Delivered(msgspec.Struct):
    text: str = ""
    reasoning: str = ""
    tokens: int = 0
    tool_calls: bool = False
    audio: int = 0  # bytes of audio sent (speech)
    last_seq: int = 0


def delivered(events: list[JobEvent]) -> Delivered:
    """What the client has been sent so far (after the last restart, if any)."""
    out = Delivered()
    parts: list[str] = []
    reasoning: list[str] = []
    for e in events:
        out.last_seq = max(out.last_seq, e.seq)
        if isinstance(e, Restarted):
            parts, reasoning, out.tokens, out.tool_calls, out.audio = [], [], 0, False, 0
        elif isinstance(e, Delta):
            parts.append(e.content)
            reasoning.append(e.reasoning)
            out.tokens += e.tokens
            out.tool_calls = out.tool_calls or bool(e.tool_calls)
            out.audio += len(e.audio)
    out.text = "".join(parts)
    out.reasoning = "".join(reasoning)
    return out


def continuation_body(body: dict[str, Any], prefix: str, tokens_used: int) -> dict[str, Any]:
    """The chat request that asks the engine to continue `prefix` as the assistant's message
    (vLLM's `continue_final_message`; llama-server continues a final assistant message too)."""
    out = dict(body)
    out["messages"] = [*body["messages"], {"role": "assistant", "content": prefix}]
    out["continue_final_message"] = True
    out["add_generation_prompt"] = False
    for name in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(name), int):
            out[name] = max(1, body[name] - tokens_used)
    return out


def completion_continuation_body(body: dict[str, Any], prefix: str, tokens_used: int) -> dict[str, Any] | None:
    """The legacy completions request that continues `prefix`: the delivered text appended to the
    prompt. None where that cannot be done faithfully (a token-id prompt, `echo`)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or body.get("echo"):
        return None
    out = dict(body)
    out["prompt"] = prompt + prefix
    if isinstance(body.get("max_tokens"), int):
        out["max_tokens"] = max(1, body["max_tokens"] - tokens_used)
    return out


class PrefixEchoStripper:
    """Removes an echo of the delivered prefix from the start of a continuation.

    Some engines repeat the prefix (re-tokenized: "6," may come back as "6, ") before continuing.
    Non-whitespace characters are matched in order; if the output diverges from the prefix it
    was no echo and everything buffered is passed on.
    """

    def __init__(self, prefix: str):
        self._want = [c for c in prefix if not c.isspace()]
        self._buffer: list[str] = []
        self.done = not self._want

    def feed(self, text: str) -> str:
        if self.done:
            return text
        self._buffer.append(text)
        joined = "".join(self._buffer)
        pos = 0
        for i, c in enumerate(joined):
            if c.isspace():
                continue
            if c != self._want[pos]:
                self.done = True
                return joined  # not an echo
            pos += 1
            if pos == len(self._want):
                self.done = True
                return joined[i + 1:]
        return ""

    def flush(self) -> str:
        """At the end of the stream: an unfinished match was real output, not an echo."""
        if self.done:
            return ""
        self.done = True
        return "".join(self._buffer)

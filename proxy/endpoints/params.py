"""What of a request reaches the engine: OpenAI's fields, the model's declared extras, nothing else;
and which content parts a model takes.

An engine's OpenAI server honours more than OpenAI documents (llama-server's `n_predict` overrides
`max_tokens`; vLLM's `ignore_eos` and `min_tokens`), and a content part with a URL makes the engine
fetch it. So the proxy names what passes. A field outside the lists is a 400, as OpenAI answers
("Unrecognized request argument supplied: X"); vendor options pass where the catalog's
`extra_params` names them for the model.
"""

from __future__ import annotations

from typing import Any

from schemas.errors import InvalidRequest
from schemas.catalog import ModelEntry
from schemas.jobs import CHAT_ENDPOINT, COMPLETIONS_ENDPOINT, EMBEDDINGS_ENDPOINT
from schemas.openai import (AudioURLPart, ChatCompletionRequest, FilePart, ImagePart, InputAudioPart,
                            RefusalPart, TextPart, VideoURLPart)

# OpenAI's request fields (openai-python's *CreateParams) that engines' OpenAI servers take.
_SAMPLING = frozenset({"model", "max_tokens", "temperature", "top_p", "n", "stop", "presence_penalty",
                       "frequency_penalty", "logit_bias", "logprobs", "seed", "user"})
FORWARDED = {
    CHAT_ENDPOINT: _SAMPLING | {"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice",
                                "parallel_tool_calls", "response_format", "reasoning_effort"},
    COMPLETIONS_ENDPOINT: _SAMPLING | {"prompt", "best_of", "echo", "suffix"},
    EMBEDDINGS_ENDPOINT: frozenset({"model", "input", "dimensions", "user"}),
}
# Switchyard's own: `priority` is read at admission from the job's body, so it stays in it.
SWITCHYARD = frozenset({"priority"})
# Read by the proxy and not sent (the adapter always streams; the proxy encodes embeddings), or
# OpenAI platform features that mean nothing to a self-hosted engine: accepted, not sent.
_NOT_SENT = {
    CHAT_ENDPOINT: frozenset({"stream", "stream_options", "modalities", "store", "metadata", "service_tier",
                              "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention",
                              "safety_identifier", "verbosity"}),
    COMPLETIONS_ENDPOINT: frozenset({"stream", "stream_options"}),
    EMBEDDINGS_ENDPOINT: frozenset({"encoding_format"}),
}
# OpenAI fields no engine here honours: refused rather than silently ignored.
_UNSUPPORTED = frozenset({"audio", "prediction", "web_search_options", "moderation", "functions",
                          "function_call"})


def engine_body(raw: dict[str, Any], endpoint: str, model: ModelEntry) -> dict[str, Any]:
    """The body the engine gets: the known fields of `raw` (nulls left out: null means the default),
    or a 400 naming the first field that is unknown or unsupported."""
    forwarded, not_sent = FORWARDED[endpoint] | SWITCHYARD, _NOT_SENT[endpoint]
    extras = frozenset(model.extra_params)
    unknown = sorted(k for k in raw if k not in forwarded and k not in not_sent and k not in extras)
    refused = [k for k in unknown if k in _UNSUPPORTED]
    if refused:
        raise InvalidRequest(f"'{refused[0]}' is not supported by this server.", param=refused[0],
                             code="unsupported_parameter")
    if unknown:
        hint = (f" The model '{model.id}' also accepts: {', '.join(model.extra_params)}."
                if model.extra_params else "")
        noun = "argument" if len(unknown) == 1 else "arguments"
        raise InvalidRequest(f"Unrecognized request {noun} supplied: {', '.join(unknown)}.{hint}",
                             param=unknown[0], code="unknown_parameter")
    return {k: v for k, v in raw.items() if v is not None and (k in forwarded or k in extras)}


# A content part's type -> the engine capability that must be declared for it (text needs none).
_PART_CAPABILITY: dict[type, tuple[str, str]] = {
    ImagePart: ("image_url", "vision"), InputAudioPart: ("input_audio", "audio_input"),
    AudioURLPart: ("audio_url", "audio_input"), VideoURLPart: ("video_url", "video_input"),
    FilePart: ("file", "file_input"),
}
_ALWAYS = (TextPart, RefusalPart)
# URLs an engine may be given to fetch: inline data, or the public web over TLS.
URL_SCHEMES = ("data:", "https://")


def check_content_parts(req: ChatCompletionRequest, model: ModelEntry) -> None:
    """A 400 naming the first content part the model's engine was not declared to take, or a
    media URL it would fetch from somewhere other than `URL_SCHEMES`. Media capabilities count
    only where the catalog names them: an engine without a `capabilities` list takes text."""
    declared = set(model.engine.capabilities) if model.engine is not None else set()
    for i, message in enumerate(req.messages):
        if not isinstance(message.content, list):
            continue
        for j, part in enumerate(message.content):
            if isinstance(part, _ALWAYS):
                continue
            kind, capability = _PART_CAPABILITY[type(part)]
            where = f"messages[{i}].content[{j}]"
            if capability not in declared:
                raise InvalidRequest(f"The model '{model.id}' does not accept '{kind}' content parts.",
                                     param=f"{where}.type", code="unsupported_content_part")
            url = _url_of(part)
            if url is not None and not url.lower().startswith(URL_SCHEMES):
                raise InvalidRequest(f"'{where}.{kind}.url' must be a data: URL or an https:// URL.",
                                     param=f"{where}.{kind}.url", code="invalid_value")


def _url_of(part: Any) -> str | None:
    if isinstance(part, ImagePart):
        return part.image_url.url
    if isinstance(part, (AudioURLPart, VideoURLPart)):
        holder = part.audio_url if isinstance(part, AudioURLPart) else part.video_url
        url = holder.get("url")
        return url if isinstance(url, str) else ""
    return None

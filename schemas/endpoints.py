"""What every layer needs to know of an OpenAI endpoint a job can serve, as data: its path, its
job-id prefix, what it needs of an engine, and how the inference activity serves it.

The proxy's registry (proxy/endpoints/registry.py) adds the HTTP half (handler, rendering, OpenAPI)
to each of these; the activity dispatches on `work`. A new endpoint is one entry here and one module
under proxy/endpoints/."""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.jobs import (
    CHAT_ENDPOINT,
    COMPLETIONS_ENDPOINT,
    EMBEDDINGS_ENDPOINT,
    SPEECH_ENDPOINT,
    TRANSCRIPTIONS_ENDPOINT,
    TRANSLATIONS_ENDPOINT,
)
from schemas.responses import RESPONSES_ENDPOINT

# How the inference activity produces a job's output:
#   chat, completion: streamed text (job events); embedding, transcription: one stored result;
#   speech: streamed audio, stored whole too.
Work = Literal["chat", "completion", "embedding", "transcription", "speech", "responses"]


class EndpointSpec(msgspec.Struct, frozen=True):
    path: str
    id_prefix: str  # job ids are `<id_prefix><hex>`, the prefix with its separator (OpenAI's object id prefixes where it has one)
    capability: str  # what the model's engine must offer (adapters.base capability names)
    work: Work
    stored_result: bool = False  # the result is an object in the store, not assembled from text events


CHAT = EndpointSpec(CHAT_ENDPOINT, "chatcmpl-", "chat", "chat")
COMPLETIONS = EndpointSpec(COMPLETIONS_ENDPOINT, "cmpl-", "completions", "completion")
EMBEDDINGS = EndpointSpec(EMBEDDINGS_ENDPOINT, "embd-", "embeddings", "embedding", stored_result=True)
TRANSCRIPTIONS = EndpointSpec(TRANSCRIPTIONS_ENDPOINT, "trsc-", "asr", "transcription", stored_result=True)
TRANSLATIONS = EndpointSpec(TRANSLATIONS_ENDPOINT, "trsl-", "asr", "transcription", stored_result=True)
SPEECH = EndpointSpec(SPEECH_ENDPOINT, "spch-", "tts", "speech", stored_result=True)
# The Responses API: a chat generation (translated to chat completions by adapters/responses.py, or
# passed through to an engine that serves /v1/responses itself).
RESPONSES = EndpointSpec(RESPONSES_ENDPOINT, "resp_", "chat", "responses")

SPECS: dict[str, EndpointSpec] = {s.path: s for s in (CHAT, COMPLETIONS, EMBEDDINGS, TRANSCRIPTIONS,
                                                        TRANSLATIONS, SPEECH, RESPONSES)}


def spec_of(path: str) -> EndpointSpec:
    return SPECS[path]

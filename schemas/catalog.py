"""The model catalog: one entry per model; adding a model is configuration, not code."""

from __future__ import annotations

from typing import Any, Literal, Union

import msgspec
from msgspec import Meta
from typing_extensions import Annotated

from schemas.jobs import RetrySpec, StageTimeouts

Name = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")]
Queue = Annotated[str, Meta(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")]


# The last four name the content parts a chat may carry (image_url; input_audio and audio_url;
# video_url; file): unlike the others they are never implied by an empty `capabilities`.
Capability = Literal["chat", "completions", "embeddings", "asr", "tts", "prefix_continuation", "responses",
                     "vision", "audio_input", "video_input", "file_input"]
# Engine options that set the output length past `max_tokens` (llama-server, TGI): never an extra.
LENGTH_OVERRIDES = frozenset({"n_predict", "max_new_tokens"})
ParamName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]


class EngineSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kind: Literal["openai", "tgi", "triton"]
    url: Annotated[str, Meta(pattern=r"^https?://")]
    served_name: str = ""
    api_key_env: str = ""
    connect_timeout_s: Annotated[float, Meta(gt=0)] = 2.0
    read_timeout_s: Annotated[float, Meta(gt=0)] = 120.0
    # What this deployment serves; empty: everything its adapter can do.
    capabilities: tuple[Capability, ...] = ()
    # Triton (KServe v2): field and tensor names, and how chat messages become `text_input`.
    triton_text_input: str = "text_input"
    triton_text_output: str = "text_output"
    triton_params_as_inputs: bool = False     # sampling options as top-level fields (tensors), not `parameters`
    triton_cumulative_output: bool = False    # each stream event repeats the whole text so far
    triton_embedding_input: str = "text_input"
    triton_embedding_output: str = "embedding"
    triton_embedding_input_dims: tuple[int, ...] = (1,)   # input shape is [n, *dims]
    triton_token_count_output: str = ""             # an INT output of tokens per input, for usage
    triton_max_batch: Annotated[int, Meta(ge=0)] = 0  # the model's max_batch_size: inputs go in batches of it
    # Speech: an infer request with the file as a BYTES input (binary data extension), answered by a
    # BYTES output holding Whisper's verbose JSON; text to speech over generate_stream, each event
    # holding the next audio bytes in base64.
    triton_audio_input: str = "audio"
    triton_transcript_output: str = "transcript"
    triton_speech_output: str = "audio"
    triton_chat_mode: Literal["transcript", "last_user"] = "transcript"
    triton_message_format: str = "{role}: {content}\n"
    triton_generation_prompt: str = "assistant:"
    # text-embeddings-inference (kind tgi): /embed options
    tei_normalize: bool = True
    tei_truncate: bool = False

    def __post_init__(self) -> None:
        if self.kind == "triton" and not self.served_name:
            raise ValueError("a triton engine needs `served_name`, the model's name on Triton")
        if "prefix_continuation" in self.capabilities and (
                self.kind == "tgi" or (self.kind == "triton" and self.triton_chat_mode == "last_user")):
            raise ValueError("this engine cannot continue a final assistant message (prefix_continuation)")


class ModelLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_tokens: Annotated[int, Meta(ge=1)] = 4096
    default_max_tokens: Annotated[int, Meta(ge=1)] = 512  # a chat's `max_tokens` when it sends none
    max_messages: Annotated[int, Meta(ge=1)] = 2048


class EmbeddingOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How an embedding model serves a request's `dimensions`."""

    dimensions: Annotated[int, Meta(ge=0)] = 0  # the model's vector size; 0: not declared
    # none: `dimensions` is refused (400); engine: passed on (vLLM with a Matryoshka model);
    # truncate: Switchyard keeps the first N values and re-normalizes (a Matryoshka model on an
    # engine without the option).
    reduce: Literal["none", "engine", "truncate"] = "none"


class SpeechOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a text-to-speech model offers; a request outside it gets a 400 before any job starts."""

    # The voices clients may ask for, each mapped to the engine's own voice name; the first is the default.
    voices: dict[str, str] = {}
    formats: tuple[Literal["mp3", "opus", "aac", "flac", "wav", "pcm"], ...] = ("mp3", "wav", "pcm")


class PipelineStage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One step of a pipeline model: another catalog model, run as its own activity on its queue.
    The first stage gets the request; each later one is a chat whose messages carry the previous
    stage's text where `{context}` stands."""

    name: Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
    model: Name
    system: str = ""
    user: str = "{context}"
    max_tokens: Annotated[int, Meta(ge=1)] = 512


class ModelEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: Name
    task_queue: Queue
    engine: Union[EngineSpec, None] = None
    # A pipeline (ADR-003: Pre → Model A → Model B → Post) instead of an engine of its own.
    pipeline: tuple[PipelineStage, ...] = ()
    # Other names clients may send as `model`; requests, jobs and responses use the id.
    aliases: tuple[Name, ...] = ()
    owned_by: str = "switchyard"
    created: int = 0
    tenant: str = ""  # an owning tenant: the model is invisible to every other tenant ("": everyone's)
    max_concurrency: Annotated[int, Meta(ge=1)] = 4
    limits: ModelLimits = ModelLimits()
    timeouts: StageTimeouts = StageTimeouts()
    retry: RetrySpec = RetrySpec()
    embeddings: EmbeddingOptions = EmbeddingOptions()
    speech: SpeechOptions = SpeechOptions()
    # Request fields beyond OpenAI's that clients may send to this model's engine (e.g. vLLM's
    # top_k); any other unknown field is a 400.
    extra_params: tuple[ParamName, ...] = ()
    # Generation options a request gets when it sets none of its own, e.g. a fine-tuned model's
    # stop strings (its training text spells the chat template's markers out).
    default_params: dict[ParamName, Any] = {}

    def __post_init__(self) -> None:
        if (self.engine is None) == (not self.pipeline):
            raise ValueError("a model has either an `engine` or a `pipeline` of stages")
        overrides = LENGTH_OVERRIDES.intersection([*self.extra_params, *self.default_params])
        if overrides:
            raise ValueError(f"extra_params and default_params may not name {sorted(overrides)}: it would lift the "
                             "model's max_tokens limit")


class Catalog(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: Literal[1]
    models: Annotated[list[ModelEntry], Meta(min_length=1)]

    def get(self, model_id: str) -> ModelEntry | None:
        """The entry with this id, else the one with this alias."""
        for entry in self.models:
            if entry.id == model_id:
                return entry
        for entry in self.models:
            if model_id in entry.aliases:
                return entry
        return None

    def task_queues(self) -> list[str]:
        return sorted({m.task_queue for m in self.models})

    def __post_init__(self) -> None:
        for model in self.models:
            for stage in model.pipeline:
                target = self.get(stage.model)
                if target is None or target.engine is None:
                    raise ValueError(f"pipeline {model.id!r}: stage {stage.name!r} names {stage.model!r}, "
                                     "which is not a catalog model with an engine")

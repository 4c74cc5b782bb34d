"""The model catalog: one entry per model; adding a model is configuration, not code."""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import Meta
from typing_extensions import Annotated

from schemas.jobs import RetrySpec, StageTimeouts

Name = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")]
Queue = Annotated[str, Meta(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")]


class EngineSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kind: Literal["openai"]
    url: Annotated[str, Meta(pattern=r"^https?://")]
    served_name: str = ""
    api_key_env: str = ""
    connect_timeout_s: Annotated[float, Meta(gt=0)] = 2.0
    read_timeout_s: Annotated[float, Meta(gt=0)] = 120.0


class ModelLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_tokens: Annotated[int, Meta(ge=1)] = 4096
    default_max_tokens: Annotated[int, Meta(ge=1)] = 512


class ModelEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: Name
    engine: EngineSpec
    task_queue: Queue
    owned_by: str = "switchyard"
    created: int = 0
    max_concurrency: Annotated[int, Meta(ge=1)] = 4
    limits: ModelLimits = ModelLimits()
    timeouts: StageTimeouts = StageTimeouts()
    retry: RetrySpec = RetrySpec()


class Catalog(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: Literal[1]
    models: Annotated[list[ModelEntry], Meta(min_length=1)]

    def get(self, model_id: str) -> ModelEntry | None:
        for entry in self.models:
            if entry.id == model_id:
                return entry
        return None

    def task_queues(self) -> list[str]:
        return sorted({m.task_queue for m in self.models})

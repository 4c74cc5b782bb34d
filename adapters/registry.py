"""Builds the adapter for a catalog entry's engine kind."""

from __future__ import annotations

from adapters.base import InferenceAdapter
from adapters.openai_protocol import OpenAIProtocolAdapter
from schemas.catalog import EngineSpec


def build_adapter(spec: EngineSpec) -> InferenceAdapter:
    if spec.kind == "openai":
        return OpenAIProtocolAdapter(spec)
    raise ValueError(f"no adapter for engine kind {spec.kind!r}")

"""Builds the adapter for a catalog entry's engine kind."""

from __future__ import annotations

from adapters.base import InferenceAdapter
from adapters.openai_protocol import OpenAIProtocolAdapter
from adapters.tgi import TGIAdapter
from adapters.triton import TritonAdapter
from schemas.catalog import EngineSpec

ADAPTERS = {"openai": OpenAIProtocolAdapter, "tgi": TGIAdapter, "triton": TritonAdapter}


def build_adapter(spec: EngineSpec) -> InferenceAdapter:
    try:
        factory = ADAPTERS[spec.kind]
    except KeyError:
        raise ValueError(f"no adapter for engine kind {spec.kind!r}") from None
    return factory(spec)

"""Builds the adapter for a catalog entry's engine kind."""

from __future__ import annotations

from adapters.base import InferenceAdapter, declared_capabilities
from adapters.openai_protocol import OpenAIProtocolAdapter
from adapters.tgi import TGIAdapter
from adapters.triton import TritonAdapter
from schemas.catalog import EngineSpec

ADAPTERS: dict[str, type[OpenAIProtocolAdapter] | type[TGIAdapter] | type[TritonAdapter]] = {
    "openai": OpenAIProtocolAdapter, "tgi": TGIAdapter, "triton": TritonAdapter}


def build_adapter(spec: EngineSpec) -> InferenceAdapter:
    try:
        factory = ADAPTERS[spec.kind]
    except KeyError:
        raise ValueError(f"no adapter for engine kind {spec.kind!r}") from None
    return factory(spec)


def engine_capabilities(spec: EngineSpec) -> frozenset[str]:
    """What a catalog entry's engine can do (its adapter's capabilities narrowed by the entry's
    `capabilities`), answered without building an adapter or opening a connection."""
    try:
        factory = ADAPTERS[spec.kind]
    except KeyError:
        raise ValueError(f"no adapter for engine kind {spec.kind!r}") from None
    supported_for = getattr(factory, "supported_for", None)
    supported = supported_for(spec) if supported_for else factory.supported
    return declared_capabilities(supported, spec.capabilities, spec.kind)

"""An engine's embedding vectors → the body of OpenAI's embeddings response.

Vectors are rounded to float32 once, here: the `float` format writes those values as JSON numbers
and `base64` their little-endian float32 bytes, so a client decoding either gets the same vectors
(the OpenAI SDK asks for base64 unless told otherwise and decodes it).
"""

from __future__ import annotations

import base64
import math
import sys
from array import array
from typing import Sequence

import msgspec

from schemas.openai import Embedding, EmbeddingList, EmbeddingUsage

_encoder = msgspec.json.Encoder()


def float32(vector: Sequence[float]) -> array:
    return array("f", vector)


def truncate(vector: array, dimensions: int) -> array:
    """A Matryoshka reduction: the first `dimensions` values, re-normalized to unit length."""
    head = vector[:dimensions]
    norm = math.sqrt(sum(v * v for v in head))
    return array("f", (v / norm for v in head)) if norm > 0 else head


def b64_float32(vector: array) -> str:
    if sys.byteorder != "little":
        vector = array("f", vector)
        vector.byteswap()
    return base64.b64encode(vector.tobytes()).decode("ascii")


def embeddings_body(vectors: Sequence[Sequence[float]], model: str, prompt_tokens: int,
                    encoding_format: str = "float", dimensions: int | None = None) -> bytes:
    """The JSON body of POST /v1/embeddings. `dimensions` truncates (and re-normalizes) here."""
    data = []
    for index, raw in enumerate(vectors):
        vector = float32(raw)
        if dimensions is not None:
            if dimensions > len(vector):
                raise ValueError(f"dimensions {dimensions} is larger than the model's {len(vector)}")
            vector = truncate(vector, dimensions)
        value = b64_float32(vector) if encoding_format == "base64" else vector.tolist()
        data.append(Embedding(index=index, embedding=value))
    return _encoder.encode(EmbeddingList(data=data, model=model, usage=EmbeddingUsage(
        prompt_tokens=prompt_tokens, total_tokens=prompt_tokens)))

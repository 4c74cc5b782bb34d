"""DataSource `UploadedFile`: a chat-format JSONL file (`{"messages": [...]}` per line), validated
line by line, rendered to the plain text llama-finetune trains on."""

from __future__ import annotations

import msgspec

from orchestration.training.protocols import DataError, Example, Prepared

ROLES = ("system", "user", "assistant")
MAX_LINE_BYTES = 256 * 1024
MIN_EXAMPLES = 1


def parse_examples(data: bytes, param: str = "training_file") -> list[Example]:
    """Every line's chat, or DataError naming the first bad line (counted from 1)."""
    examples: list[Example] = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DataError(f"line {line}: the file is not valid UTF-8", param) from None
    for number, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        if len(raw) > MAX_LINE_BYTES:
            raise DataError(f"line {number}: longer than {MAX_LINE_BYTES} bytes", param)
        examples.append(Example(line=number, messages=_messages(raw, number, param)))
    if len(examples) < MIN_EXAMPLES:
        raise DataError(f"the file holds no examples; expected at least {MIN_EXAMPLES} "
                        "JSON line of the form {\"messages\": [...]}", param)
    return examples


def _messages(raw: str, number: int, param: str) -> list[dict[str, str]]:
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise DataError(f"line {number}: not valid JSON", param) from None
    if not isinstance(value, dict) or not isinstance(value.get("messages"), list):
        raise DataError(f"line {number}: expected an object with a \"messages\" array", param)
    messages = value["messages"]
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise DataError(f"line {number}: messages[{i}] needs a role of {', '.join(ROLES)}", param)
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise DataError(f"line {number}: messages[{i}] needs a non-empty string content", param)
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "user" for m in out):
        raise DataError(f"line {number}: no user message", param)
    if out[-1]["role"] != "assistant":
        raise DataError(f"line {number}: the last message must be the assistant's answer", param)
    return out


def held_out_count(n: int) -> int:
    """Without a validation file: the last tenth of the lines, at least one once there are 10."""
    return n // 10


class UploadedFile:
    """A tenant's uploaded training file, and its validation file if any, as bytes."""

    def __init__(self, training: bytes, validation: bytes | None = None):
        self.training = training
        self.validation = validation

    async def collect(self) -> Prepared:
        examples = parse_examples(self.training, "training_file")
        if self.validation is not None:
            return Prepared(train=examples, held_out=parse_examples(self.validation, "validation_file"))
        held = held_out_count(len(examples))
        if held == 0:
            return Prepared(train=examples, held_out=[])
        return Prepared(train=examples[:-held], held_out=examples[-held:])


# llama-finetune reads the training text without parsing special tokens, so the chat template's
# markers are learnt as plain text: the tuned model is served with them as stop strings.
TEMPLATE_STOPS = ("<|im_end", "<|im_start")


def render_chat(messages: list[dict[str, str]], answer: bool = True) -> str:
    """A chat as plain text in the model's ChatML layout. llama-finetune tokenizes its file without
    special tokens, so the markers are learnt as text; the question and answer tokens are the same
    as served."""
    parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    return "".join(parts)


def render_dataset(examples: list[Example], min_chars: int = 0) -> bytes:
    """The trainer's text: the examples one after another, then again from the first until it is
    at least `min_chars` long (llama-finetune trains on windows of its context, with half a window
    of stride: the text must hold a few of them)."""
    chats = [render_chat(e.messages) for e in examples]
    parts = list(chats)
    size = sum(map(len, parts))
    i = 0
    while size < min_chars:
        parts.append(chats[i % len(chats)])
        size += len(parts[-1])
        i += 1
    return "".join(parts).encode()

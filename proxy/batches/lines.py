"""A batch's lines: reading the input file line by line, the object-store keys of its prepared chunks
and output/error parts, and the output and error lines in OpenAI's format."""

from __future__ import annotations

import hashlib
from typing import Any, AsyncIterable, AsyncIterator

import msgspec

from schemas.batches import LineError, LineJob, LineResponse, OutputLine
from schemas.openai import ErrorBody

_encoder = msgspec.json.Encoder()
_jobs = msgspec.json.Decoder(list[LineJob])
MAX_LINE_BYTES = 32 * 1024 * 1024  # the proxy's own body limit: a longer line is an error line


def prepared_key(batch_id: str, chunk: int) -> str:
    return f"{batch_id}/prepared-{chunk:06d}.json"


def output_key(batch_id: str, chunk: int) -> str:
    return f"{batch_id}/out-{chunk:06d}.jsonl"


def error_key(batch_id: str, chunk: int) -> str:
    return f"{batch_id}/err-{chunk:06d}.jsonl"


def validation_errors_key(batch_id: str) -> str:
    return f"{batch_id}/err-validation.jsonl"


def rest_key(batch_id: str) -> str:
    return f"{batch_id}/err-rest.jsonl"


def encode_jobs(jobs: list[LineJob]) -> bytes:
    return _encoder.encode(jobs)


def decode_jobs(data: bytes) -> list[LineJob]:
    return _jobs.decode(data)


def line_id(batch_id: str, index: int) -> str:
    return "batch_req_" + hashlib.sha256(f"{batch_id}:{index}".encode()).hexdigest()[:32]


def answered(batch_id: str, index: int, custom_id: str | None, status: int, request_id: str,
             body: Any) -> OutputLine:
    """A line the endpoint answered: the output file's when `status` is 200, else the error file's."""
    return OutputLine(id=line_id(batch_id, index), custom_id=custom_id,
                      response=LineResponse(status_code=status, request_id=request_id, body=body))


def refused(batch_id: str, index: int, custom_id: str | None, status: int, request_id: str,
            error: ErrorBody) -> OutputLine:
    return answered(batch_id, index, custom_id, status, request_id, {"error": msgspec.to_builtins(error)})


def not_run(batch_id: str, index: int, custom_id: str | None, code: str, message: str) -> OutputLine:
    """A line that got no response (malformed, cancelled, expired): `response` null, `error` set."""
    return OutputLine(id=line_id(batch_id, index), custom_id=custom_id, error=LineError(code=code, message=message))


def jsonl(lines: list[OutputLine]) -> bytes:
    return b"".join(_encoder.encode(line) + b"\n" for line in lines)


async def split_lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[tuple[int, bytes]]:
    """(0-based line number, line) for each line of the file, blank lines skipped; a line longer
    than MAX_LINE_BYTES is given truncated (it fails to parse, as it should)."""
    number, rest = 0, b""
    async for chunk in chunks:
        rest += chunk
        *whole, rest = rest.split(b"\n")
        for line in whole:
            if line.strip():
                yield number, line
            number += 1
        if len(rest) > MAX_LINE_BYTES:
            rest = rest[:MAX_LINE_BYTES]
    if rest.strip():
        yield number, rest


CANCELLED_MESSAGE = "This request was not executed because the batch was cancelled."
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."

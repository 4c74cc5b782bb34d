"""Reading a multipart/form-data body part by part as it arrives, so a file part can be streamed
on (to the object store) without being held in memory or spooled to a temporary file.

    form = FormStream(request, limit)
    async for part in form.parts():
        if part.name == "file":
            await sink(form.data())        # the part's bytes, as they arrive
        else:
            value = await form.text(4096, part.name)  # a small field, whole

A part the caller neither reads nor drains is skipped. Malformed or truncated bodies are a 400,
a body over `limit` bytes a 413 (`too_large()`, by default PayloadTooLarge).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import NamedTuple

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from schemas.errors import APIError, InvalidRequest, PayloadTooLarge

MAX_HEADER_BYTES = 8 * 1024  # one part's header lines together


class FormPart(NamedTuple):
    name: str
    filename: str | None  # None: a plain field (no filename in its Content-Disposition)
    content_type: str


class _Event(NamedTuple):
    kind: str  # "part" | "data" | "end" | "done"
    part: FormPart | None = None
    data: bytes = b""


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid multipart body: {message}", code="invalid_multipart")


class FormStream:
    def __init__(self, request: Request, limit: int, too_large: Callable[[], APIError] | None = None):
        content_type = request.headers.get("content-type", "")
        kind, params = parse_options_header(content_type)
        if kind != b"multipart/form-data":
            raise InvalidRequest("This endpoint takes multipart/form-data.", code="invalid_content_type")
        boundary = params.get(b"boundary")
        if not boundary:
            raise _bad("missing boundary.")
        self._too_large = too_large or (lambda: PayloadTooLarge(
            f"Request body is larger than the limit of {limit} bytes."))
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise self._too_large()
        self._limit = limit
        self._body = request.stream()
        self._events: deque[_Event] = deque()
        self._seen = 0
        self._header_bytes = 0
        self._field, self._value = b"", b""
        self._headers: dict[bytes, bytes] = {}
        self._in_part = False
        self._done = False
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._on_part_begin, "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value, "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished, "on_part_data": self._on_part_data,
            "on_part_end": lambda: self._events.append(_Event("end")),
            "on_end": lambda: self._events.append(_Event("done")),
        })

    def _on_part_begin(self) -> None:
        self._headers, self._header_bytes = {}, 0

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]
        self._count_header(end - start)

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]
        self._count_header(end - start)

    def _count_header(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _bad("a part's headers are too large.")

    def _on_header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise _bad('every part needs a Content-Disposition with a "name".')
        filename = options.get(b"filename")
        content_type = self._headers.get(b"content-type", b"application/octet-stream")
        self._events.append(_Event("part", FormPart(
            options[b"name"].decode("utf-8", "replace"),
            None if filename is None else _basename(filename.decode("utf-8", "replace")),
            content_type.decode("latin-1")[:255])))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._events.append(_Event("data", data=data[start:end]))

    async def _next(self) -> _Event:
        while not self._events:
            try:
                chunk = await self._body.__anext__()
            except StopAsyncIteration:
                raise _bad("the body ended before its closing boundary.") from None
            self._seen += len(chunk)
            if self._seen > self._limit:
                raise self._too_large()
            try:
                self._parser.write(chunk)
            except FormParserError as exc:
                raise _bad(str(exc)[:200]) from None
        return self._events.popleft()

    async def parts(self) -> AsyncIterator[FormPart]:
        while not self._done:
            if self._in_part:  # the caller left the last part unread: skip its bytes
                async for _ in self.data():
                    pass
            event = await self._next()
            if event.kind == "done":
                self._done = True
            elif event.kind == "part":
                assert event.part is not None
                self._in_part = True
                yield event.part

    async def data(self) -> AsyncIterator[bytes]:
        """The current part's bytes, as they arrive."""
        while self._in_part:
            event = await self._next()
            if event.kind == "data":
                if event.data:
                    yield event.data
            else:
                self._in_part = False

    async def text(self, limit: int, name: str) -> str:
        """The current part (the field `name`) whole, as text; a 400 past `limit` bytes."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in self.data():
            size += len(chunk)
            if size > limit:
                raise InvalidRequest(f"The form field '{name[:64]}' is longer than {limit} bytes.", param=name[:64],
                                     code="invalid_multipart")
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")


def _basename(filename: str) -> str:
    """The file's name without any client-side directory (some browsers send a whole path)."""
    return filename.replace("\\", "/").rsplit("/", 1)[-1]

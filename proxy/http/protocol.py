"""The proxy's HTTP/1.1 protocol for uvicorn: its httptools one, except that what it refuses before
the app runs is answered in OpenAI's error envelope (application/json) instead of text/plain:

- a request httptools cannot parse (junk in the request line, a malformed header): 400
  `invalid_http_request`;
- request header fields over MAX_HEADER_BYTES in all: 431 `request_header_fields_too_large`,
  decided while they arrive, so an endless header is never buffered whole.

Run it with `uvicorn.run(app, http=EnvelopeHttpToolsProtocol, ...)`; `HeaderLimitMiddleware`
(proxy.http.middleware) applies the same header limit in the app for any other server.
"""

from __future__ import annotations

import uuid

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from schemas.errors import APIError, InvalidRequest
from proxy.http.errors import envelope_bytes
from proxy.http.middleware import MAX_HEADER_BYTES, header_fields_too_large

# What may arrive before the headers complete: the fields plus room for the request line.
_MAX_HEAD_BYTES = MAX_HEADER_BYTES + 16 * 1024


class EnvelopeHttpToolsProtocol(HttpToolsProtocol):
    max_header_bytes = MAX_HEADER_BYTES
    max_head_bytes = _MAX_HEAD_BYTES
    linger_s = 2.0  # after a refusal, how long unread input is drained before the connection closes
    _in_head = False
    _too_large = False
    _refused = False
    _header_bytes = 0
    _head_bytes = 0
    _messages = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._header_bytes, self._head_bytes = True, 0, 0
        self._messages += 1

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.max_header_bytes:
            self._too_large = True
            self.logger.warning("Request header fields over %d bytes.", self.max_header_bytes)
            raise ValueError("header fields too large")  # httptools raises it as a parse error
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # draining what the client still sends, so it can read the refusal
        messages = self._messages
        super().data_received(data)  # a parse error calls send_400_response
        if self._in_head and self._messages == messages and not self._refused:
            # httptools holds a header until it ends: count each read that only extended an open head
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self.logger.warning("Request head over %d bytes.", self.max_head_bytes)
                self._refuse(header_fields_too_large(self.max_header_bytes))

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self._refuse(header_fields_too_large(self.max_header_bytes))
        else:
            self._refuse(InvalidRequest(f"{msg} Check the request line and headers.",
                                        code="invalid_http_request"))

    def _refuse(self, exc: APIError) -> None:
        """Answers `exc` and ends the connection: the response, then EOF; input still arriving is
        discarded (closing on unread input would reset the connection before the client reads the
        answer) for at most `linger_s`."""
        self._refused, self._in_head = True, False
        body = envelope_bytes(exc.body())
        head = [STATUS_LINE[exc.status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                 b"x-request-id: req_%s\r\n" % uuid.uuid4().hex.encode(),
                 b"connection: close\r\n\r\n"]
        self.transport.write(b"".join(head) + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(self.linger_s, self.transport.close)
        else:
            self.transport.close()

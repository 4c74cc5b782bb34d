"""The InferenceAdapter interface and the errors every adapter raises."""

from __future__ import annotations

from typing import Any, AsyncIterator, Protocol, Union

import msgspec

from schemas.openai import Usage


class StreamPiece(msgspec.Struct, omit_defaults=True):
    """One engine event, reduced to what a chat stream needs."""

    content: str = ""
    reasoning: str = ""
    role: Union[str, None] = None
    tool_calls: Union[list[dict[str, Any]], None] = None
    finish_reason: Union[str, None] = None
    usage: Union[Usage, None] = None
    model: Union[str, None] = None


class EngineError(Exception):
    """An engine answered with an error or could not be reached.

    `status` is what the client should see (OpenAI codes); `retryable` decides whether
    Temporal tries again.
    """

    def __init__(self, message: str, *, status: int, retryable: bool,
                 type: str = "server_error", code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.type = type
        self.code = code
        self.param = param


def unavailable(message: str, code: str = "engine_unavailable") -> EngineError:
    return EngineError(message, status=503, retryable=True, type="server_error", code=code)


def rejected(message: str, param: str | None = None, code: str | None = None) -> EngineError:
    return EngineError(message, status=400, retryable=False, type="invalid_request_error",
                       code=code, param=param)


class InferenceAdapter(Protocol):
    capabilities: frozenset[str]

    def stream_chat(self, body: dict[str, Any]) -> AsyncIterator[StreamPiece]:
        """Yields pieces as the engine produces them; closing the iterator closes the engine request."""
        ...

    async def aclose(self) -> None: ...

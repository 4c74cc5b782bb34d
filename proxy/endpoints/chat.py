"""POST /v1/chat/completions: validate, start the job's workflow, relay its events."""

from __future__ import annotations

from typing import Any

from gatekeeping.auth import Principal
from proxy.endpoints.endpoint import Endpoint
from proxy.http.operations import CHAT_STREAM, generation_operation
from proxy.jobs.render import ChunkWriter, CompletionAssembler
from schemas.errors import InvalidRequest
from proxy.endpoints.params import check_content_parts
from proxy.runtime import Runtime
from proxy.jobs.prepare import PreparedJob, check_max_tokens, convert_request, engine_entry, find_model, new_streamed_job
from schemas.catalog import ModelEntry
from schemas import endpoints
from schemas.jobs import CHAT_ENDPOINT
from schemas.openai import CONTENT_REQUIRED, ChatCompletionRequest

CHAT = CHAT_ENDPOINT
PreparedChat = PreparedJob


def validate_chat(raw: dict[str, Any]) -> ChatCompletionRequest:
    """The body as a request, or a 400 naming the bad field: types, tools and content parts by the
    struct, then what it cannot say: which roles must carry `content`."""
    req = convert_request(raw, ChatCompletionRequest)
    for i, message in enumerate(req.messages):
        if message.content is None and message.role in CONTENT_REQUIRED:
            raise InvalidRequest(f"Missing required parameter: 'messages[{i}].content'.",
                                 param=f"messages[{i}].content", code="missing_required_parameter")
    return req


def check_limits(req: ChatCompletionRequest, model: ModelEntry) -> None:
    check_max_tokens(req, model, ("max_tokens", "max_completion_tokens"))


def check_message_count(raw: dict[str, Any], model: ModelEntry) -> None:
    """Before the messages are validated one by one: a count over the model's limit is a 400."""
    messages, most = raw.get("messages"), model.limits.max_messages
    if isinstance(messages, list) and len(messages) > most:
        raise InvalidRequest(f"'messages' has {len(messages)} items; this model takes at most {most}.",
                             param="messages", code="too_many_messages")


def default_max_tokens(req: ChatCompletionRequest, model: ModelEntry) -> dict[str, int]:
    """The engine body's `max_tokens` when the request names no limit: the catalog's default, which
    admission then reserves (an engine's own default is the context's end)."""
    if isinstance(req.max_tokens, int) or isinstance(req.max_completion_tokens, int):
        return {}
    return {"max_tokens": min(model.limits.default_max_tokens, model.limits.max_tokens)}


def prepare_chat(rt: Runtime, principal: Principal, raw: dict[str, Any], idempotency_key: str | None,
                 metadata: dict[str, str] | None = None, webhook_url: str = "") -> PreparedChat:
    known = rt.catalog.get(raw["model"]) if isinstance(raw.get("model"), str) else None
    if known is not None:
        check_message_count(raw, known)
    req = validate_chat(raw)
    model = find_model(rt, req.model, CHAT)
    check_limits(req, model)
    check_content_parts(req, engine_entry(rt, model))
    return new_streamed_job(principal, model, CHAT, req, raw,
                            defaults=default_max_tokens(req, model), idempotency_key=idempotency_key,
                            metadata=metadata, webhook_url=webhook_url)


ENDPOINT = Endpoint(
    spec=endpoints.CHAT, prepare=prepare_chat, writer=ChunkWriter, assembler=CompletionAssembler,
    operation=generation_operation("chat", "Create a chat completion (a durable job)", "ChatCompletionRequest",
                                   "ChatCompletion", "ChatCompletionChunk", CHAT_STREAM))

"""POST /v1/completions (legacy text completions): the chat flow with `text_completion` objects."""

from __future__ import annotations

from typing import Any

from gatekeeping.auth import Principal
from proxy.endpoints.endpoint import Endpoint
from proxy.http.operations import generation_operation
from proxy.jobs.render import TextChunkWriter, TextCompletionAssembler
from schemas.errors import InvalidRequest
from proxy.runtime import Runtime
from proxy.jobs.prepare import PreparedJob, check_max_tokens, convert_request, find_model, new_streamed_job
from schemas import endpoints
from schemas.jobs import COMPLETIONS_ENDPOINT
from schemas.openai import CompletionRequest

COMPLETIONS = COMPLETIONS_ENDPOINT
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint (engines differ: llama-server has none)


def check_prompt(prompt: Any) -> None:
    """One prompt per request: a string, token ids, or a list holding one of either."""
    if isinstance(prompt, str):
        return
    if not prompt:
        raise InvalidRequest("'prompt' must not be empty.", param="prompt", code="invalid_value")
    kinds = {type(p) for p in prompt}
    if len(kinds) > 1:
        raise InvalidRequest("'prompt' mixes strings, token ids and token-id lists.", param="prompt",
                             code="invalid_value")
    if kinds != {int} and len(prompt) > 1:
        raise InvalidRequest("This endpoint takes one prompt per request; send several requests "
                             "(or one job each) for several prompts.", param="prompt", code="invalid_value")
    if kinds == {list} and not prompt[0]:
        raise InvalidRequest("'prompt' must not be empty.", param="prompt", code="invalid_value")


def prepare_completion(rt: Runtime, principal: Principal, raw: dict[str, Any], idempotency_key: str | None,
                       metadata: dict[str, str] | None = None, webhook_url: str = "") -> PreparedJob:
    req = convert_request(raw, CompletionRequest)
    check_prompt(req.prompt)
    if isinstance(req.logprobs, int):  # job events carry no logprobs: refused rather than dropped
        raise InvalidRequest("'logprobs' is not supported.", param="logprobs", code="invalid_value")
    model = find_model(rt, req.model, COMPLETIONS)
    check_max_tokens(req, model)
    return new_streamed_job(principal, model, COMPLETIONS, req, raw,
                            defaults={"max_tokens": min(DEFAULT_MAX_TOKENS, model.limits.max_tokens)},
                            idempotency_key=idempotency_key, metadata=metadata, webhook_url=webhook_url)


ENDPOINT = Endpoint(
    spec=endpoints.COMPLETIONS, prepare=prepare_completion, writer=TextChunkWriter,
    assembler=TextCompletionAssembler,
    operation=generation_operation("completions", "Create a text completion (legacy; a durable job)",
                                   "CompletionRequest", "TextCompletion", "TextCompletion",
                                   "a `text/event-stream` of `text_completion` chunks ending with `data: [DONE]`."))

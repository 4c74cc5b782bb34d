"""POST /v1/embeddings: a job like chat, whose result is an object in the claim-check store.

The activity writes the whole response body (floats or base64, as asked) to the object store and
hands Temporal only its reference; the proxy sends that object back, streamed from the store.
"""

from __future__ import annotations

from typing import Any

from gatekeeping.auth import Principal
from proxy.endpoints.endpoint import Endpoint
from proxy.http.operations import JOB_ID_HEADER, json_content, json_job_operation, ok
from proxy.jobs.render import ResultAssembler, ResultWriter
from schemas.errors import InvalidRequest
from proxy.endpoints.params import engine_body
from proxy.jobs.results import stored_result
from proxy.runtime import Runtime
from proxy.jobs.prepare import PreparedJob, convert_request, find_model, new_job
from schemas import endpoints
from schemas.jobs import EMBEDDINGS_ENDPOINT
from schemas.openai import EmbeddingRequest

EMBEDDINGS = EMBEDDINGS_ENDPOINT
MAX_INPUTS = 2048  # OpenAI's limit on inputs per request


def _bad_input(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="input", code="invalid_value")


def check_input(value: Any) -> None:
    """A string, a list of strings, token ids, or a list of token-id lists; nothing empty."""
    if isinstance(value, str):
        if not value:
            raise _bad_input("'input' must not be an empty string.")
        return
    if not value:
        raise _bad_input("'input' must not be empty.")
    kinds = {type(v) for v in value}
    if len(kinds) > 1:
        raise _bad_input("'input' must be a string, a list of strings, a list of token ids or a list "
                         "of token-id lists, not a mix.")
    if len(value) > MAX_INPUTS and kinds != {int}:
        raise _bad_input(f"'input' takes at most {MAX_INPUTS} items.")
    if kinds != {int} and any(not v for v in value):
        raise _bad_input("'input' must not hold an empty string or an empty token list.")


def prepare_embedding(rt: Runtime, principal: Principal, raw: dict[str, Any], idempotency_key: str | None,
                      metadata: dict[str, str] | None = None, webhook_url: str = "") -> PreparedJob:
    req = convert_request(raw, EmbeddingRequest)
    check_input(req.input)
    model = find_model(rt, req.model, EMBEDDINGS)
    body = engine_body(raw, EMBEDDINGS, model)  # without encoding_format: engines answer floats
    options: dict[str, Any] = {"encoding_format": req.encoding_format}
    if isinstance(req.dimensions, int):
        spec = model.embeddings
        if spec.reduce == "none":
            raise InvalidRequest(f"The model '{model.id}' does not support 'dimensions'.",
                                 param="dimensions", code="invalid_value")
        if spec.dimensions and req.dimensions > spec.dimensions:
            raise InvalidRequest(f"'dimensions' is too large: {req.dimensions}. The model '{model.id}' "
                                 f"has {spec.dimensions}.", param="dimensions", code="invalid_value")
        if spec.reduce == "truncate":
            body.pop("dimensions")
            options["truncate_dimensions"] = req.dimensions
    return new_job(principal, model, EMBEDDINGS, req, raw, body, idempotency_key=idempotency_key,
                   metadata=metadata, webhook_url=webhook_url, options=options)


ENDPOINT = Endpoint(
    spec=endpoints.EMBEDDINGS, prepare=prepare_embedding, writer=ResultWriter, assembler=ResultAssembler,
    respond=stored_result,
    operation=json_job_operation("embeddings", "Create embeddings (a job)", "EmbeddingRequest",
                                 ok("The vectors, in input order.", json_content("EmbeddingList"), JOB_ID_HEADER)))

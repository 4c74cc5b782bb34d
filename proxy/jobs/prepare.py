"""From a request to a job: validating into a msgspec struct (a 400 names the field), picking the
model (404, or 400 when its engine cannot do the endpoint), the key's scopes, and the job's id,
workflow input and memo."""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable, TypeVar

import msgspec

from adapters.registry import engine_capabilities
from gatekeeping.admission import require_owner, require_scopes
from gatekeeping.auth import Principal
from proxy.endpoints.params import engine_body
from proxy.jobs.store import JobMemo, body_hash, new_job_id
from proxy.runtime import Runtime
from schemas.catalog import ModelEntry
from schemas.errors import InvalidRequest, NotFound
from schemas.endpoints import spec_of
from schemas.jobs import InferenceInput, WorkflowInput

T = TypeVar("T")


def convert_request(raw: dict[str, Any], kind: type[T]) -> T:
    """The body as `kind`, or a 400 whose `param` names the bad field."""
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(_describe(str(exc)), param=_param_of(str(exc)), code="invalid_value") from None


def _param_of(message: str) -> str | None:
    at = message.rsplit(" - at `$.", 1)[1].rstrip("`") if " - at `$." in message else None
    if "missing required field `" in message:  # msgspec names the missing field and its parent
        field = message.split("missing required field `", 1)[1].split("`", 1)[0]
        return f"{at}.{field}" if at else field
    return at


def _describe(message: str) -> str:
    param = _param_of(message)
    head = message.split(" - at `", 1)[0]
    return f"Invalid value for '{param}': {head}" if param else head


def check_max_tokens(req: Any, model: ModelEntry, names: tuple[str, ...] = ("max_tokens",)) -> None:
    for name in names:
        value = getattr(req, name)
        if isinstance(value, int) and value > model.limits.max_tokens:
            raise InvalidRequest(
                f"'{name}' is too large: {value}. This model supports at most {model.limits.max_tokens}.",
                param=name, code="invalid_value")


def find_model(rt: Runtime, name: str, endpoint: str) -> ModelEntry:
    """The catalog entry, 404 if absent; 400 `unsupported_capability` (param `model`) when its engine
    cannot serve `endpoint`: decided from the catalog before any workflow starts."""
    model = rt.catalog.get(name)
    if model is None:
        raise NotFound(f"The model '{name}' does not exist or you do not have access to it.",
                       param="model", code="model_not_found")
    need = spec_of(endpoint).capability
    entry = rt.catalog.get(model.pipeline[0].model) if model.pipeline else model  # a pipeline takes what its first stage takes
    if entry is None or entry.engine is None or need not in engine_capabilities(entry.engine):
        raise InvalidRequest(f"The model '{name}' does not support {endpoint} ({need}).",
                             param="model", code="unsupported_capability")
    return model


def engine_entry(rt: Runtime, model: ModelEntry) -> ModelEntry:
    """The entry whose engine takes the request: the model's own, or its pipeline's first stage's."""
    return (rt.catalog.get(model.pipeline[0].model) or model) if model.pipeline else model


def check_access(rt: Runtime, principal: Principal, endpoint: str, name: str | None) -> None:
    """The refusals that need no more of the body than its `model`: the key's endpoint and model
    scopes (403/404, as admission answers them) and the model's existence and capability."""
    require_scopes(principal, endpoint)
    if name is not None:
        model = find_model(rt, name, endpoint)
        require_owner(principal, model, name)
        require_scopes(principal, endpoint, model.id)


class PreparedJob(msgspec.Struct):
    request: Any  # the validated request struct
    model: ModelEntry
    inp: WorkflowInput
    memo: JobMemo

    @property
    def job_id(self) -> str:
        return self.inp.inference.job_id

    @property
    def stream(self) -> bool:
        return self.memo.stream


def new_job(principal: Principal, model: ModelEntry, endpoint: str, request: Any, raw: dict[str, Any],
            body: dict[str, Any], *, stream: bool = False, include_usage: bool = False,
            idempotency_key: str | None = None, metadata: dict[str, str] | None = None,
            webhook_url: str = "", options: dict[str, Any] | None = None) -> PreparedJob:
    """The job's id, workflow input and memo. `raw` is the client's body (for idempotency), `body`
    what the engine gets."""
    if idempotency_key is not None and not (0 < len(idempotency_key) <= 255):
        raise InvalidRequest("Idempotency-Key must be 1 to 255 characters.", param="Idempotency-Key")
    job_id = new_job_id(principal.tenant, idempotency_key, uuid.uuid4().hex, spec_of(endpoint).id_prefix)
    created = int(time.time())
    inp = WorkflowInput(
        inference=InferenceInput(job_id=job_id, model=model.id, endpoint=endpoint, body=body,
                                 created=created, include_usage=include_usage, options=options or {},
                                 tenant=principal.tenant, retention_s=principal.retention_s),
        task_queue=model.task_queue, timeouts=model.timeouts, retry=model.retry, webhook_url=webhook_url)
    memo = JobMemo(tenant=principal.tenant, endpoint=endpoint, model=model.id, created=created,
                   body_hash=body_hash(endpoint, raw), stream=stream, include_usage=include_usage,
                   metadata=metadata or {}, webhook_url=webhook_url)
    return PreparedJob(request, model, inp, memo)


def new_streamed_job(principal: Principal, model: ModelEntry, endpoint: str, request: Any, raw: dict[str, Any],
                     *, defaults: dict[str, Any] | None = None, **job: Any) -> PreparedJob:
    """A job whose request may stream: `stream` and `stream_options` are the proxy's business (the
    adapter always streams from the engine); `defaults` fill the engine body's missing fields."""
    include_usage = bool(request.stream and request.stream_options and request.stream_options.include_usage)
    body = engine_body(raw, endpoint, model)
    for name, value in {**model.default_params, **(defaults or {})}.items():
        if body.get(name) is None:
            body[name] = value
    return new_job(principal, model, endpoint, request, raw, body, stream=request.stream,
                   include_usage=include_usage, **job)


Prepare = Callable[..., PreparedJob]

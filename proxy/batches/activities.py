"""The batch activities, served by every proxy replica on task queue `switchyard-proxy` (the
workflow, orchestration/batch_workflow.py, calls them through its stubs of the same names).

They run here because a line must be validated and admitted exactly as the HTTP endpoint would do
it: the registry's `Endpoint.prepare`, the key's scopes, gatekeeping's admission; and its result
assembled as GET /v1/jobs/{id}/result does. Every write is keyed by the batch and chunk, so a
retried activity rewrites the same objects."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, AsyncIterator

import msgspec
from temporalio import activity

from gatekeeping.admission import admit
from gatekeeping.auth import Principal
from orchestration.batch_store import BatchStore
from orchestration.files import FileNotFound
from orchestration.objectstore import ObjectNotFound, request_key
from proxy.batches import lines as L
from proxy.batches.outcomes import outcome_line
from proxy.endpoints.registry import endpoint_of
from proxy.http.body import decode_json_object
from proxy.jobs.prepare import check_access
from proxy.runtime import Runtime
from schemas.batches import (
    BATCH_EXPIRED,
    BATCH_PRIORITY,
    AdmitInput,
    AdmitResult,
    BatchError,
    BatchErrors,
    FinalizeInput,
    InputLine,
    LineJob,
    MarkInput,
    OutputLine,
    Refused,
    RequestCounts,
    RestInput,
    ValidateInput,
    ValidateResult,
    WriteInput,
)
from schemas.errors import APIError, RateLimited
from schemas.openai import ErrorBody

LINE_INLINE_BYTES = 4 * 1024  # a larger line body reaches its workflow by reference: a run of 1,024
# lines keeps its history (the inputs of children and of admissions) far below Temporal's 50 MB
MAX_REPORTED_ERRORS = 20  # of a failed batch's line errors, in `errors.data`
_encoder = msgspec.json.Encoder()


class ProxyBatchActivities:
    def __init__(self, rt: Runtime, batches: BatchStore):
        self.rt = rt
        self.batches = batches

    @property
    def objects(self):
        assert self.rt.objects is not None, "the runtime opens its object store at start"
        return self.rt.objects

    # ---- validating -------------------------------------------------------------------------------
    @activity.defn(name="batch_validate")
    async def validate(self, inp: ValidateInput) -> ValidateResult:
        """Reads the input file line by line: each line prepared as its endpoint would (the creator's
        scopes apply), written in chunks of `inp.window`; a bad line goes to the error part at once."""
        files = self.rt.files
        assert files is not None
        principal = msgspec.convert(inp.principal, Principal)
        total, chunk, jobs, errors = 0, 0, list[LineJob](), list[OutputLine]()
        first_errors: list[BatchError] = []
        seen: set[str] = set()
        try:
            async for number, raw in L.split_lines(files.content(inp.tenant, inp.input_file_id)):
                total += 1
                if total % 64 == 0:  # preparing is CPU work on the proxy's loop: let requests through
                    activity.heartbeat(total)
                    await asyncio.sleep(0)
                job, error = self._prepare_line(inp, principal, number, raw, seen)
                if error is not None:
                    errors.append(error)
                    if len(first_errors) < MAX_REPORTED_ERRORS:
                        first_errors.append(_batch_error(number, error))
                    continue
                assert job is not None
                jobs.append(job)
                if len(jobs) == inp.window:
                    await self.objects.put(L.prepared_key(inp.batch_id, chunk), L.encode_jobs(jobs))
                    chunk, jobs = chunk + 1, []
        except FileNotFound:
            return ValidateResult(total=0, invalid=0, chunks=0, errors=[BatchError(
                code="file_not_found", param="input_file_id",
                message=f"The input file '{inp.input_file_id}' is gone.")])
        if jobs:
            await self.objects.put(L.prepared_key(inp.batch_id, chunk), L.encode_jobs(jobs))
            chunk += 1
        if errors:
            await self.objects.put(L.validation_errors_key(inp.batch_id), L.jsonl(errors), "application/jsonl")
        if total == 0:
            return ValidateResult(total=0, invalid=0, chunks=0, errors=[BatchError(
                code="empty_file", param="input_file_id", message="The input file has no requests.")])
        if chunk == 0:
            return ValidateResult(total=total, invalid=len(errors), chunks=0, errors=first_errors)
        await self.batches.move(inp.tenant, inp.batch_id, "in_progress",
                                request_counts=RequestCounts(total=total, failed=len(errors)))
        return ValidateResult(total=total, invalid=len(errors), chunks=chunk)

    def _prepare_line(self, inp: ValidateInput, principal: Principal, number: int, raw: bytes,
                      seen: set[str]) -> tuple[LineJob | None, OutputLine | None]:
        custom_id: str | None = None
        try:
            data = decode_json_object(raw)
            custom_id = data.get("custom_id") if isinstance(data.get("custom_id"), str) else None
            line = msgspec.convert(data, InputLine)
        except (APIError, msgspec.ValidationError) as exc:
            message = exc.message if isinstance(exc, APIError) else str(exc)
            return None, L.not_run(inp.batch_id, number, custom_id, "invalid_request",
                                   f"Line {number + 1} is not a valid batch request: {message}")
        if line.custom_id in seen:
            return None, L.not_run(inp.batch_id, number, line.custom_id, "duplicate_custom_id",
                                   f"The custom_id '{line.custom_id}' is used by an earlier line.")
        seen.add(line.custom_id)
        if line.method.upper() != "POST" or line.url != inp.endpoint:
            return None, L.not_run(inp.batch_id, number, line.custom_id, "invalid_url",
                                   f"Every line of this batch must be POST {inp.endpoint}.")
        job_id = f"{inp.batch_id}-{number}"
        body = {k: v for k, v in line.body.items() if k not in ("stream", "stream_options")}
        try:
            model = body.get("model")
            check_access(self.rt, principal, inp.endpoint, model if isinstance(model, str) else None)
            prepare = endpoint_of(inp.endpoint).prepare
            assert prepare is not None, "batches take JSON endpoints only"
            job = prepare(self.rt, principal, body, None, None, "")
        except APIError as exc:
            return None, L.refused(inp.batch_id, number, line.custom_id, exc.status, job_id, exc.body())
        inference = msgspec.structs.replace(job.inp.inference, job_id=job_id)
        return LineJob(index=number, custom_id=line.custom_id,
                       inp=msgspec.structs.replace(job.inp, inference=inference, priority=BATCH_PRIORITY)), None

    # ---- in progress ------------------------------------------------------------------------------
    @activity.defn(name="batch_admit")
    async def admit(self, inp: AdmitInput) -> AdmitResult:
        """The chunk's lines through the tenant's limits and quotas: admitted ones come back ready to
        start; a rate-limited one waits; any other refusal becomes an error line."""
        rt = self.rt
        assert rt.limiter is not None
        principal = msgspec.convert(inp.principal, Principal)
        jobs = L.decode_jobs(await self.objects.get(L.prepared_key(inp.batch_id, inp.chunk)))
        only = set(inp.only) if inp.only is not None else None
        out = AdmitResult(retry_after_s=0.0)
        for job in jobs:
            if only is not None and job.index not in only:
                continue
            inference = job.inp.inference
            model = rt.catalog.get(inference.model)
            try:
                if model is None:
                    raise APIError(f"The model '{inference.model}' does not exist or you do not have access "
                                   "to it.", status=404, type="invalid_request_error", code="model_not_found")
                admitted = await admit(rt.limiter, principal, inference.endpoint, model, inference.body)
            except RateLimited as exc:
                if exc.headers.get("x-should-retry") == "false":  # it would never fit
                    out.refused.append(_refused(job.index, exc))
                else:
                    out.waiting.append(job.index)
                    out.retry_after_s = max(out.retry_after_s, exc.retry_after)
                continue
            except APIError as exc:  # a quota, a PII refusal, a model removed since validation
                out.refused.append(_refused(job.index, exc))
                continue
            ready = msgspec.structs.replace(job.inp, inference=msgspec.structs.replace(inference, body=admitted.body),
                                            admission=msgspec.to_builtins(admitted.admission),
                                            prompt_estimate=admitted.prompt_estimate, priority=BATCH_PRIORITY)
            out.admitted.append(LineJob(index=job.index, custom_id=job.custom_id, inp=await self._by_reference(ready)))
        out.retry_after_s = out.retry_after_s or 1.0
        return out

    async def _by_reference(self, inp):
        """A body over LINE_INLINE_BYTES goes to the object store, so a window of inputs stays far
        below Temporal's payload limit."""
        inference = inp.inference
        data = _encoder.encode(inference.body)
        if len(data) <= LINE_INLINE_BYTES:
            return inp
        ref = await self.objects.put(request_key(inference.job_id, hashlib.sha256(data).hexdigest()[:16]), data)
        return msgspec.structs.replace(inp, inference=msgspec.structs.replace(inference, body={}, body_ref=ref))

    @activity.defn(name="batch_write")
    async def write(self, inp: WriteInput) -> RequestCounts:
        """The chunk's output and error parts: finished lines' results, refusals, and lines that did
        not run (cancelled, expired) as error lines."""
        jobs = L.decode_jobs(await self.objects.get(L.prepared_key(inp.batch_id, inp.chunk)))
        outcomes = {o.index: o for o in inp.outcomes}
        refusals = {r.index: r for r in inp.refused}
        ok: list[OutputLine] = []
        failed: list[OutputLine] = []
        for job in jobs:
            if job.index in outcomes:
                line, good = await outcome_line(self.rt, inp.batch_id, outcomes[job.index])
            elif job.index in refusals:
                r = refusals[job.index]
                line, good = L.refused(inp.batch_id, job.index, job.custom_id, r.status, job.inp.inference.job_id,
                                       ErrorBody(message=r.message, type=r.type, code=r.code)), False
            else:
                line, good = _not_run(inp.batch_id, job, inp.missing_code), False
            (ok if good else failed).append(line)
        await self.objects.put(L.output_key(inp.batch_id, inp.chunk), L.jsonl(ok), "application/jsonl")
        await self.objects.put(L.error_key(inp.batch_id, inp.chunk), L.jsonl(failed), "application/jsonl")
        b = inp.before
        counts = RequestCounts(total=b.total, completed=b.completed + len(ok), failed=b.failed + len(failed))
        await self.batches.move(inp.tenant, inp.batch_id, "in_progress", request_counts=counts)
        return counts

    @activity.defn(name="batch_write_rest")
    async def write_rest(self, inp: RestInput) -> RequestCounts:
        out: list[OutputLine] = []
        for chunk in range(inp.first, inp.chunks):
            activity.heartbeat(chunk)
            jobs = L.decode_jobs(await self.objects.get(L.prepared_key(inp.batch_id, chunk)))
            out.extend(_not_run(inp.batch_id, job, inp.code) for job in jobs)
        await self.objects.put(L.rest_key(inp.batch_id), L.jsonl(out), "application/jsonl")
        b = inp.before
        return RequestCounts(total=b.total, completed=b.completed, failed=b.failed + len(out))

    @activity.defn(name="batch_mark")
    async def mark(self, inp: MarkInput) -> None:
        fields: dict[str, Any] = {"errors": BatchErrors(data=inp.errors)} if inp.errors else {}
        if inp.counts is not None:
            fields["request_counts"] = inp.counts
        await self.batches.move(inp.tenant, inp.batch_id, inp.status, **fields)

    # ---- finalizing -------------------------------------------------------------------------------
    @activity.defn(name="batch_finalize")
    async def finalize(self, inp: FinalizeInput) -> None:
        """Joins the parts into the output file and the error file (purpose `batch_output`), records
        their ids, then the final status; the parts go after."""
        files = self.rt.files
        assert files is not None
        batch = await self.batches.move(inp.tenant, inp.batch_id, "finalizing", request_counts=inp.counts)
        keys = [L.output_key(inp.batch_id, c) for c in range(inp.chunks)]
        if batch.output_file_id is None and inp.counts.completed:
            made = await files.create(inp.tenant, "batch_output", f"{inp.batch_id}_output.jsonl",
                                      self._joined(keys), max_bytes=1 << 40)
            await self.batches.move(inp.tenant, inp.batch_id, "finalizing", output_file_id=made.id)
        error_keys = [L.validation_errors_key(inp.batch_id), *(L.error_key(inp.batch_id, c) for c in range(inp.chunks)),
                      L.rest_key(inp.batch_id)]
        if batch.error_file_id is None and inp.counts.failed:
            made = await files.create(inp.tenant, "batch_output", f"{inp.batch_id}_error.jsonl",
                                      self._joined(error_keys), max_bytes=1 << 40)
            await self.batches.move(inp.tenant, inp.batch_id, "finalizing", error_file_id=made.id)
        await self.batches.move(inp.tenant, inp.batch_id, inp.status, request_counts=inp.counts)
        for key in (*keys, *error_keys, *(L.prepared_key(inp.batch_id, c) for c in range(inp.chunks))):
            try:
                await self.objects.delete(key)
            except (ObjectNotFound, OSError):
                pass

    async def _joined(self, keys: list[str]) -> AsyncIterator[bytes]:
        for i, key in enumerate(keys):
            if i % 64 == 0:
                activity.heartbeat(i)
            try:
                async for piece in self.objects.stream(key):
                    yield piece
            except ObjectNotFound:
                continue  # a chunk with no line of this kind, or nothing expired / cancelled


def _refused(index: int, exc: APIError) -> Refused:
    return Refused(index=index, status=exc.status, code=exc.code or "refused", message=exc.message, type=exc.type)


def _not_run(batch_id: str, job: LineJob, code: str) -> OutputLine:
    message = L.EXPIRED_MESSAGE if code == BATCH_EXPIRED else L.CANCELLED_MESSAGE
    return L.not_run(batch_id, job.index, job.custom_id, code, message)


def _batch_error(number: int, line: OutputLine) -> BatchError:
    if line.error is not None:
        return BatchError(code=line.error.code, message=line.error.message, line=number + 1)
    body = line.response.body if line.response is not None else {}
    error = body.get("error", {}) if isinstance(body, dict) else {}
    return BatchError(code=error.get("code") or "invalid_request", message=error.get("message") or "",
                      param=error.get("param"), line=number + 1)

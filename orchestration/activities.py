"""Activities: the inference call on the model's GPU queue, and ending a job's event stream."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Union

import msgspec
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from temporalio import activity
from temporalio.exceptions import ApplicationError

from adapters.base import AudioInput, EngineError, InferenceAdapter, StreamPiece, UnsupportedCapability, rejected
from orchestration.cancels import CancelRegistry
from orchestration.continuation import (
    Delivered,
    PrefixEchoStripper,
    completion_continuation_body,
    continuation_body,
    delivered,
)
from orchestration.embeddings import embeddings_body
from orchestration.objectstore import ObjectNotFound, ObjectStore, object_store_from_env, result_key
from orchestration.transcripts import SUFFIX, render
from orchestration.publisher import EventPublisher
from orchestration.version_stats import OutcomeRecorder
from orchestration.offers import withdraw_subject
from orchestration.natsconfig import DEFAULT_JOBS_MAX_AGE_S
from orchestration.streams import client_of, events_ttl, last_event, last_ttl, read_events
from schemas.events import Delta, Finished, Started, is_terminal
from schemas.endpoints import spec_of
from schemas.jobs import (
    COMPLETIONS_ENDPOINT,
    TRANSLATIONS_ENDPOINT,
    InferenceInput,
    InferenceSummary,
    Settlement,
    SettlementRequest,
    TerminalNotice,
)
from schemas.audio import TranscriptionJSON
from schemas.openai import Usage

ENGINE_ERROR = "EngineError"
QUIET_STOP = "quiet-stop"  # cancels a run without ending the job's stream
WITHDRAW_WAIT_S = 0.5
ADAPTER_WAIT_S = 5.0
JOB_CANCELLED = "JobCancelled"
JOB_ENDED = "JobEnded"


def engine_failure(exc: EngineError) -> ApplicationError:
    detail = {"status": exc.status, "type": exc.type, "code": exc.code, "param": exc.param}
    return ApplicationError(exc.message, detail, type=ENGINE_ERROR, non_retryable=not exc.retryable)


TEXT_WORK = ("chat", "completion", "responses")  # work whose output is text events
Outcome = tuple[Union[str, None], Usage, str]  # finish_reason, usage, the stored result's ref ("": none)


@dataclass
class Output:
    """Where an attempt's output goes: the job's events (and, for a pipeline stage, `text`)."""

    publisher: EventPublisher
    stripper: PrefixEchoStripper | None = None  # drops an engine's echo of the delivered prefix
    text: list[str] | None = None


class InferenceActivities:
    def __init__(self, js: JetStreamContext, adapters: Mapping[str, InferenceAdapter],
                 cancels: CancelRegistry | None = None, coalesce_s: float = 0.005,
                 objects: ObjectStore | None = None, events_max_age_s: float = DEFAULT_JOBS_MAX_AGE_S,
                 outcomes: OutcomeRecorder | None = None):
        self._js = js
        self._outcomes = outcomes  # per-version outcomes for the rollout monitor (orchestration.version_stats)
        self._max_age_s = events_max_age_s  # the stream's: a tenant's retention only shortens it
        self._adapters = adapters
        self._cancels = cancels or CancelRegistry()
        self._coalesce_s = coalesce_s
        self._objects = objects or object_store_from_env()
        self._work: dict[str, Callable[[InferenceAdapter, InferenceInput, dict, Output], Awaitable[Outcome]]] = {
            "chat": self._chat, "completion": self._completion, "embedding": self._embed,
            "transcription": self._transcribe, "speech": self._speak, "responses": self._responses}

    @activity.defn(name="inference")
    async def inference(self, inp: InferenceInput) -> InferenceSummary:
        info = activity.info()
        heartbeat = asyncio.ensure_future(heartbeats(info.heartbeat_timeout))
        try:  # a takeover of a dispatched run counts that run as the first attempt
            if inp.withdraw:
                await self._withdraw(inp.job_id)
            return await self.generate(inp, info.attempt + (1 if inp.continuing else 0))
        finally:
            heartbeat.cancel()

    async def _withdraw(self, job_id: str) -> None:
        """Stops a dispatched run of the job wherever it still runs, before taking over from it."""
        try:
            await client_of(self._js).request(withdraw_subject(job_id), b"", timeout=WITHDRAW_WAIT_S)
        except (TimeoutError, NatsError):
            pass  # nobody holds it: its worker is gone

    def adapter_for(self, model: str) -> InferenceAdapter | None:
        return self._adapters.get(model)

    async def adapter_within(self, model: str, seconds: float) -> InferenceAdapter | None:
        """The model's adapter, waiting a moment for one just added to the KV catalog: a proxy may
        resolve an alias to a new version before this worker's catalog watcher has built it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (adapter := self._adapters.get(model)) is None and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return adapter

    async def generate(self, inp: InferenceInput, attempt: int) -> InferenceSummary:
        """One attempt, its outcome counted for its model: an engine failure worth retrying (or any
        unexpected one) is the version's error; a 4xx, a cancel or a job already ended are not counted."""
        if self._outcomes is None:
            return await self._attempt(inp, attempt)
        started, ok = time.monotonic(), None
        try:
            summary = await self._attempt(inp, attempt)
            ok = True
            return summary
        except ApplicationError as exc:
            if exc.type == ENGINE_ERROR:
                ok = exc.non_retryable
            elif exc.type == "NoAdapter":
                ok = False
            raise
        except Exception:
            ok = False
            raise
        finally:
            if ok is not None:
                await self._outcomes.record(inp.model, ok, time.monotonic() - started)

    async def _attempt(self, inp: InferenceInput, attempt: int) -> InferenceSummary:
        """One attempt at the job's output, published as it comes. Cancelled with the message
        `QUIET_STOP`, it stops without ending the job's stream (another attempt takes over)."""
        adapter = await self.adapter_within(inp.model, ADAPTER_WAIT_S)
        if adapter is None:
            raise ApplicationError(f"this worker serves no model {inp.model!r}", type="NoAdapter")
        prior = Delivered()
        if attempt > 1 or inp.stage_index > 0 or inp.continuing:
            events = await read_events(self._js, inp.job_id)
            last_seq = max((e.seq for e in events), default=0)
            events = stage_events(events, inp.stage)
            ended = next((e for e in events if is_terminal(e)), None)
            if isinstance(ended, Finished):  # the last attempt finished but died before reporting
                return InferenceSummary(finish_reason=ended.finish_reason, usage=ended.usage,
                                        last_seq=ended.seq, attempt=attempt, result_ref=ended.result_ref)
            if ended is not None:
                raise ApplicationError("the job already ended", type=JOB_ENDED, non_retryable=True)
            prior = delivered(events)
            prior.last_seq = last_seq
        ttl_s = events_ttl(inp.retention_s, self._max_age_s)
        publisher = EventPublisher(self._js, inp.job_id, attempt, prior.last_seq, self._coalesce_s,
                                   tokens_before=prior.tokens, ttl_s=ttl_s)
        body, stripper = await self._body(inp), None
        if "context_ref" in inp.options:
            body = with_context(body, await self._object(inp.options["context_ref"], "the previous stage's result"))
        resumed = None
        if prior.text and not (prior.reasoning or prior.tool_calls):
            if inp.endpoint == COMPLETIONS_ENDPOINT:  # the delivered text joins the prompt
                resumed = completion_continuation_body(body, prior.text, prior.tokens)
            elif "prefix_continuation" in adapter.capabilities and "messages" in body:  # not a passed-through Responses body
                resumed = continuation_body(body, prior.text, prior.tokens)
                stripper = PrefixEchoStripper(prior.text)
        if prior.text or prior.reasoning or prior.tool_calls or prior.audio:
            if resumed is None:
                await publisher.restarted("the engine cannot continue the delivered output; it starts over")
                prior = Delivered(last_seq=publisher.seq)
                publisher = EventPublisher(self._js, inp.job_id, attempt, publisher.seq, self._coalesce_s, ttl_s=ttl_s)
            else:
                body = resumed
        await publisher.started(resumed_from=prior.last_seq if prior.text else 0, stage=inp.stage)

        cancelled = self._cancels.register(inp.job_id)
        result_ref = ""
        kind = spec_of(inp.endpoint).work
        text = [prior.text] if kind in TEXT_WORK and inp.options.get("store_text") else None
        out = Output(publisher, stripper, text)
        run = asyncio.ensure_future(self._work[kind](adapter, inp, body, out))
        stop = asyncio.ensure_future(cancelled.wait())
        try:
            await asyncio.wait({run, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not run.done():
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
                await publisher.cancelled("cancelled by the client")
                raise ApplicationError("the job was cancelled", type=JOB_CANCELLED, non_retryable=True)
            finish_reason, usage, result_ref = run.result()
            if text is not None:  # a pipeline's text result: the next stage's context, or the job's result
                data = msgspec.json.encode(TranscriptionJSON(text="".join(text)))
                result_ref = await self._objects.put(stage_result_key(inp, "json"), data)
        except asyncio.CancelledError as exc:  # Temporal delivered the cancellation, or a quiet stop
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            if quiet_cancel(exc):
                await publisher.flush()
                await publisher.close()
            else:
                await publisher.cancelled("cancelled by the client")
            raise
        except EngineError as exc:
            await publisher.flush()  # text the engine produced before failing is delivered, not lost
            await publisher.close()
            raise engine_failure(exc) from None
        finally:
            stop.cancel()
            self._cancels.unregister(inp.job_id)
        if prior.tokens:
            usage = Usage(prompt_tokens=max(0, usage.prompt_tokens - prior.tokens),
                          completion_tokens=usage.completion_tokens + prior.tokens,
                          total_tokens=usage.total_tokens)
        if not inp.final:  # a pipeline's earlier stage: the job goes on
            await publisher.close()
            return InferenceSummary(finish_reason=finish_reason, usage=usage, last_seq=publisher.seq,
                                    attempt=attempt, result_ref=result_ref)
        last_seq = await publisher.finish({"finish_reason": finish_reason, "usage": usage,
                                           "model": inp.model, "created": inp.created,
                                           "result_ref": result_ref})
        return InferenceSummary(finish_reason=finish_reason, usage=usage, last_seq=last_seq,
                                attempt=attempt, result_ref=result_ref)

    async def _body(self, inp: InferenceInput) -> dict[str, Any]:
        """The request body, loaded from the object store when it came by reference (claim check)."""
        if not inp.body_ref:
            return inp.body
        return msgspec.json.decode(await self._object(inp.body_ref, "the request body"))

    async def _object(self, ref: str, what: str) -> bytes:
        try:
            return await self._objects.get(ref)
        except ObjectNotFound:
            raise engine_failure(EngineError(f"{what} is no longer in the object store",
                                             status=500, retryable=False, code="body_missing")) from None

    # ---- the work of each kind of endpoint (schemas.endpoints.EndpointSpec.work) ---------------------
    async def _chat(self, adapter: InferenceAdapter, inp: InferenceInput, body: dict, out: Output) -> Outcome:
        return await self._generate(adapter.stream_chat(body), out)

    async def _completion(self, adapter: InferenceAdapter, inp: InferenceInput, body: dict, out: Output) -> Outcome:
        return await self._generate(adapter.stream_completion(body), out)

    async def _responses(self, adapter: InferenceAdapter, inp: InferenceInput, body: dict, out: Output) -> Outcome:
        """The Responses API: a chat body (translated by the proxy), or a Responses body for an engine
        that serves /v1/responses itself (`responses_passthrough`)."""
        if not inp.options.get("responses_passthrough"):
            return await self._generate(adapter.stream_chat(body), out)
        stream = getattr(adapter, "stream_responses", None)
        if stream is None or "responses" not in adapter.capabilities:
            raise UnsupportedCapability("responses")
        return await self._generate(stream(body), out)

    async def _embed(self, adapter: InferenceAdapter, inp: InferenceInput, body: dict, out: Output) -> Outcome:
        """Embeds, writes the response body to the object store and hands on only its reference:
        vectors never enter Temporal's history or the event stream."""
        result = await adapter.embed(body)
        dimensions = inp.options.get("truncate_dimensions")
        try:
            data = embeddings_body(result.vectors, inp.model, result.prompt_tokens,
                                   inp.options.get("encoding_format", "float"), dimensions)
        except ValueError as exc:
            raise rejected(str(exc), param="dimensions") from None
        ref = await self._objects.put(result_key(inp.job_id), data)
        return None, Usage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens), ref

    async def _transcribe(self, adapter: InferenceAdapter, inp: InferenceInput, body: dict,
                          out: Output) -> Outcome:
        """Speech to text; the formatted response body goes to the object store, as embeddings'."""
        task = "translate" if inp.endpoint == TRANSLATIONS_ENDPOINT else "transcribe"
        granularities = tuple(body.get("timestamp_granularities") or ())
        request = AudioInput(audio=await self._object(inp.options["audio_ref"], "the uploaded audio"),
                             filename=inp.options.get("filename", "audio"), task=task,
                             language=body.get("language", ""), prompt=body.get("prompt", ""),
                             temperature=body.get("temperature"), word_timestamps="word" in granularities)
        transcript = await adapter.transcribe(request)
        response_format = body.get("response_format", "json")
        data = render(transcript, response_format, task, granularities)
        ref = await self._objects.put(stage_result_key(inp, SUFFIX[response_format]), data)
        return None, Usage(), ref

    async def _speak(self, adapter: InferenceAdapter, inp: InferenceInput, body: dict, out: Output) -> Outcome:
        """Text to speech: audio goes to the client as it comes, and whole to the object store for
        the job's result."""
        parts: list[bytes] = []
        async for chunk in adapter.speak(body):
            parts.append(chunk)
            await out.publisher.add_audio(chunk)
        ref = await self._objects.put(result_key(inp.job_id, body.get("response_format", "mp3")), b"".join(parts))
        characters = len(body.get("input", ""))
        return "stop", Usage(prompt_tokens=characters, total_tokens=characters), ref

    async def _generate(self, pieces: AsyncIterator[StreamPiece], out: Output) -> Outcome:
        publisher, stripper, text = out.publisher, out.stripper, out.text
        usage = Usage()
        finish_reason: str | None = None
        async for piece in pieces:
            content = piece.content
            if stripper is not None and content:
                content = stripper.feed(content)
            if content or piece.reasoning or (piece.role and not piece.tool_calls):
                await publisher.add_text(content, piece.reasoning, piece.role)
                if text is not None:
                    text.append(content)
            if piece.tool_calls:
                await publisher.add_tool_calls(piece.tool_calls)
            if piece.finish_reason:
                finish_reason = piece.finish_reason
            if piece.usage is not None:
                usage = piece.usage
        if stripper is not None:
            rest = stripper.flush()
            if rest:
                await publisher.add_text(rest)
                if text is not None:
                    text.append(rest)
        return finish_reason, usage, ""

    @activity.defn(name="publish_settlement")
    async def publish_settlement(self, req: SettlementRequest) -> None:
        actual = req.actual_tokens
        if actual is None:
            events = await read_events(self._js, req.job_id)
            delivered_tokens = max((e.total for e in events if isinstance(e, Delta)), default=0)
            actual = delivered_tokens + req.prompt_estimate if delivered_tokens else 0
        body = msgspec.json.encode(Settlement(job_id=req.job_id, admission=req.admission, actual_tokens=actual))
        await self._js.publish(f"sy.settle.{req.job_id}", body, headers={"Nats-Msg-Id": f"settle:{req.job_id}"})

    @activity.defn(name="publish_terminal")
    async def publish_terminal(self, notice: TerminalNotice) -> int:
        """Ends a job's stream unless it already ended. For a cancellation, the running attempt
        usually publishes its own terminal event first; this waits briefly for it."""
        deadline = asyncio.get_running_loop().time() + (1.5 if notice.kind == "cancelled" else 0)
        while True:
            previous = await last_event(self._js, notice.job_id)
            if previous is not None and is_terminal(previous):
                return previous.seq
            if asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.1)
        publisher = EventPublisher(self._js, notice.job_id, 0, previous.seq if previous else 0,
                                   ttl_s=await last_ttl(self._js, notice.job_id) if previous else 0)
        if notice.kind == "cancelled":
            return await publisher.cancelled(notice.error.message if notice.error else "cancelled")
        assert notice.error is not None
        return await publisher.fail(notice.status, notice.error)



def quiet_cancel(exc: asyncio.CancelledError) -> bool:
    """Whether a cancellation must leave the job's stream open: a quiet stop, or an activity cancelled
    for a reason other than the client's cancel (timed out, worker shutdown, not found), after
    which the workflow retries or takes over."""
    if exc.args and exc.args[0] == QUIET_STOP:
        return True
    try:
        details = activity.cancellation_details()
    except RuntimeError:  # not in an activity: a dispatched run
        return False
    return details is not None and not details.cancel_requested


async def heartbeats(timeout) -> None:
    """Heartbeats a running activity, the first only once one is due: a stream that ends within a
    quarter of its heartbeat timeout costs no heartbeat RPC."""
    every = max(0.5, timeout.total_seconds() / 4) if timeout else 2.0
    while True:
        await asyncio.sleep(every)
        activity.heartbeat()


def stage_events(events: list, stage: str) -> list:
    """A pipeline stage's own events: from its first start on (all of them for a plain job)."""
    if not stage:
        return events
    first = next((i for i, e in enumerate(events) if isinstance(e, Started) and e.stage == stage), len(events))
    return events[first:]


def with_context(body: dict[str, Any], context: bytes) -> dict[str, Any]:
    """A pipeline chat stage's body with the previous stage's text where `{context}` stands."""
    text = msgspec.json.decode(context, type=TranscriptionJSON).text
    messages = [{**m, "content": m["content"].replace("{context}", text)} if isinstance(m.get("content"), str)
                else m for m in body.get("messages", [])]
    return {**body, "messages": messages}


def stage_result_key(inp: InferenceInput, suffix: str) -> str:
    """The job's result, or an earlier pipeline stage's (kept beside it: `result.<stage>.json`)."""
    return result_key(inp.job_id, f"{inp.stage}.{suffix}" if inp.stage and not inp.final else suffix)

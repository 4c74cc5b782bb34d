"""Serving a job to one HTTP request, top-down (vLLM's serve context, as an object):

    admit → start (the event feed opens meanwhile) → first batch → stream | collect | audio

`JobRun` owns its feed (closed on every way out) and gives the job up (cancels it) when nobody took
it in time. `serve_endpoint` is what an OpenAI endpoint is: read, prepare, run."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Awaitable, Callable

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from temporalio.api.enums.v1.workflow_pb2 import PENDING_ACTIVITY_STATE_STARTED
from temporalio.client import WorkflowExecutionStatus

from schemas.jobs import ADOPT_SCHEDULE_TO_START_S, NO_CAPACITY
from proxy.http.body import decode_json_object, peek_model, read_body
from proxy.http.errors import envelope_bytes
from proxy.http.sse import CHUNK, DONE_DATA, END, KEEPALIVE, SSEResponse, render
from proxy.jobs.admit import admit_job
from proxy.endpoints.endpoint import Endpoint
from proxy.jobs.prepare import PreparedJob, check_access
from proxy.jobs.relay import EventFeed, first_batch
from proxy.jobs.render import ChunkWriter, CompletionAssembler, terminal_error
from proxy.jobs.store import (accepted_response, cancel_job, goes_direct, prefers_async, release_admission,
                              start_job)
from gatekeeping.auth import Principal
from proxy.runtime import Runtime
from schemas.errors import ServiceUnavailable
from schemas.events import Cancelled, Failed, JobEvent, Restarted, Started
from schemas.openai import ErrorBody

QUEUE_GRACE_S = 5.0  # past the queue deadline, for the job's own no_capacity ending to arrive
_encoder = msgspec.json.Encoder()

Respond = Callable[[Runtime, Any, dict[str, str]], Awaitable[Response]]


async def json_response(rt: Runtime, result: Any, headers: dict[str, str]) -> Response:
    return Response(_encoder.encode(result), media_type="application/json", headers=headers)


async def serve_endpoint(request: Request, endpoint: Endpoint) -> Response | SSEResponse:
    """An OpenAI endpoint: read the body, prepare the job, run it. What can be refused from the key
    and the body's `model` alone is refused before the body is decoded."""
    rt: Runtime = request.app.state.runtime
    principal = request.state.principal
    assert endpoint.prepare is not None, f"{endpoint.path} has a handler of its own"
    check_access(rt, principal, endpoint.path, None)
    data = await read_body(request, rt.settings.max_body_bytes)
    check_access(rt, principal, endpoint.path, peek_model(data))
    job = endpoint.prepare(rt, principal, decode_json_object(data), request.headers.get("idempotency-key"))
    chunks = endpoint.chunk_writer(job.job_id, job.model.id, job.memo.created, job.memo.include_usage)
    return await JobRun(rt, request, job).respond(chunks, endpoint.assembler(chunks),
                                                  endpoint.respond or json_response)


class JobRun:
    """One job for one request. The collaborators that reach Temporal and NATS are parameters so
    its branches are tested against fakes (tests/test_job_run.py)."""

    def __init__(self, rt: Runtime, request: Request | None, job: PreparedJob, *,
                 principal: Principal | None = None,
                 start: Callable[..., Awaitable[bool]] = start_job,
                 open_feed: Callable[..., Awaitable[EventFeed]] = EventFeed.open,
                 cancel: Callable[[Runtime, str], Awaitable[Any]] = cancel_job,
                 moving: Callable[[Runtime, str], Awaitable[bool]] | None = None) -> None:
        self.rt, self.job = rt, job
        self._request = request  # None over the WebSocket
        self._principal = principal
        self.headers = {"x-job-id": job.job_id}
        self.feed: EventFeed | None = None
        self._start, self._open_feed, self._cancel = start, open_feed, cancel
        self._moving = moving or job_is_moving
        # How long past the queue deadline the first event may take: the direct run's adoption, then
        # the job's own no_capacity ending.
        self.queue_grace_s = ADOPT_SCHEDULE_TO_START_S + QUEUE_GRACE_S
        self._first: asyncio.Future[list[JobEvent]] | None = None
        if request is not None:
            request.state.model, request.state.job_id = job.model.id, job.job_id

    # ---- the whole request ------------------------------------------------------------------------
    async def respond(self, chunks: ChunkWriter, assembler: CompletionAssembler,
                      respond: Respond = json_response, *, admitted: bool = False) -> Response | SSEResponse:
        """202 for `Prefer: respond-async`; else an SSE stream or the assembled result."""
        if not admitted:
            await self.admit()
        if prefers_async(self.request):
            return await self.start_in_background()
        await self.start()
        chunks.created = self.job.memo.created  # an idempotent repeat's: the existing job's
        if self.job.stream and not await self.first_within(self.rt.settings.header_wait_s):
            # Held the status line briefly so early failures got their real HTTP status; now commit
            # 200 and keep the client company with keep-alives while the job waits for capacity.
            return SSEResponse(self.late_frames(chunks), self.headers, on_close=self.close)
        batch = await self.opening_batch()
        if self.job.stream:
            return SSEResponse(self.frames(batch, chunks), self.headers, on_close=self.close)
        try:
            return await respond(self.rt, await self.collect(batch, assembler), self.headers)
        except Exception as exc:
            if hasattr(exc, "headers"):
                exc.headers.update(self.headers)
            raise
        finally:
            await self.close()

    # ---- the steps --------------------------------------------------------------------------------
    async def admit(self, keep: Callable[[Runtime, PreparedJob], Awaitable[None]] | None = None) -> None:
        """Through gatekeeping; then `keep` stores what must outlive the request (its reservation is
        given back if that fails)."""
        self.job = await admit_job(self._request, self.rt, self.principal, self.job)
        if keep is not None:
            try:
                await keep(self.rt, self.job)
            except BaseException:
                await release_admission(self.rt, self.job.inp)
                raise

    async def start_in_background(self, prefer_applied: bool = True) -> Response:
        """202 with the job object; the client follows it by id."""
        await self.start_detached()
        return await accepted_response(self.rt, self.job.job_id, self.job.memo.tenant, prefer_applied=prefer_applied)

    async def start_detached(self) -> bool:
        """Starts the job without following it (False: an idempotent repeat of a running one)."""
        job = self.job
        return await self._start(self.rt, job.inp, job.model, job.memo, direct=self._direct())

    async def start(self) -> None:
        """Starts the job while its feed opens (subscribed before anything can be published), then
        waits for the first events in the background."""
        job = self.job
        opening = asyncio.ensure_future(self._open_feed(self.rt.js, job.job_id, model=job.model.id, fresh=True))
        try:
            started = await self._start(self.rt, job.inp, job.model, job.memo, direct=self._direct())
        except BaseException:
            opening.cancel()
            await asyncio.gather(opening, return_exceptions=True)
            if opening.done() and not opening.cancelled() and opening.exception() is None:
                await opening.result().close()
            raise
        try:
            self.feed = await opening
        except Exception:
            raise _events_unavailable() from None
        try:
            if not started:  # an idempotent repeat: the job's events so far are stored
                await self.feed.backfill()
        except Exception:
            await self.close()
            raise _events_unavailable() from None
        self._first = asyncio.ensure_future(self._first_events())

    async def first_within(self, seconds: float) -> bool:
        assert self._first is not None, "start() first"
        done, _ = await asyncio.wait({self._first}, timeout=seconds)
        return bool(done)

    async def opening_batch(self) -> list[JobEvent]:
        """The first events; a 503 `no_capacity` when nobody took the job (which is given up), the
        job's own error when it failed before producing anything. The feed is closed on error."""
        assert self._first is not None
        try:
            batch = await self._first
        except asyncio.TimeoutError:
            await self.close()
            await self.give_up()
            raise ServiceUnavailable(NO_CAPACITY, code="no_capacity",
                                     headers={**self.headers, "retry-after": "1"}) from None
        except BaseException:
            self._first.cancel()
            await self.close()
            raise
        head = next(e for e in batch if not isinstance(e, Started))
        if isinstance(head, (Failed, Cancelled)):
            await self.close()
            raise terminal_error(head, self.headers)
        return batch

    async def frames(self, batch: list[JobEvent], chunks: ChunkWriter) -> AsyncIterator[bytes]:
        feed, keepalive_s = self._feed(), self.rt.settings.keepalive_s
        while True:
            out = b"".join(chunks.frames(e) for e in batch)
            if out:
                yield out
            if feed.ended or any(isinstance(e, Restarted) for e in batch):
                return
            try:
                batch = await feed.next_batch(timeout=keepalive_s)
            except TimeoutError:
                batch = []
                yield KEEPALIVE

    async def late_frames(self, chunks: ChunkWriter) -> AsyncIterator[bytes]:
        """The stream of a job still waiting at the header deadline: keep-alives until its first
        events, then `frames`; in-band `no_capacity` when nobody takes it."""
        first = self._first
        assert first is not None
        try:
            while not first.done():
                yield KEEPALIVE
                await asyncio.wait({first}, timeout=self.rt.settings.keepalive_s)
            batch = first.result()
        except asyncio.TimeoutError:
            await self.give_up()
            error = envelope_bytes(ErrorBody(message=NO_CAPACITY, type="server_error", code="no_capacity"))
            yield render(self._feed().last_seq + 1, [(CHUNK, None, error), (END, None, DONE_DATA)])
            return
        finally:
            if not first.done():
                first.cancel()
        async for out in self.frames(batch, chunks):
            yield out

    async def collect(self, batch: list[JobEvent], assembler: CompletionAssembler) -> Any:
        feed = self._feed()
        while True:
            for event in batch:
                completion = assembler.add(event)
                if completion is not None:
                    return completion
            if feed.ended:
                raise ServiceUnavailable("The job ended without a result; please retry.", code="job_incomplete")
            try:
                batch = await feed.next_batch(timeout=60.0)
            except TimeoutError:
                batch = []

    async def close(self) -> None:
        if self.feed is not None:
            await self.feed.close()

    async def give_up(self) -> None:
        """Cancels a job that did not end itself in time: its workflow still settles and notifies."""
        try:
            await self._cancel(self.rt, self.job.job_id)
        except Exception:
            pass

    # ---- helpers ----------------------------------------------------------------------------------
    @property
    def principal(self) -> Principal:
        return self._principal if self._principal is not None else self.request.state.principal

    @property
    def request(self) -> Request:
        assert self._request is not None, "an HTTP request's run"
        return self._request

    def _direct(self) -> bool:
        if self._request is None:
            return False
        return goes_direct(self._request.headers, self.job.memo.endpoint)

    def _feed(self) -> EventFeed:
        assert self.feed is not None, "start() first"
        return self.feed

    async def _first_events(self) -> list[JobEvent]:
        """A job nobody picks up ends itself at its queue deadline (`no_capacity`); past that deadline
        this keeps waiting only while a worker holds the job (a long prefill, a retry's backoff)."""
        model, feed = self.job.model, self._feed()
        t = model.timeouts
        try:
            return await first_batch(feed, t.schedule_to_start_s + self.queue_grace_s)
        except asyncio.TimeoutError:
            if not await self._moving(self.rt, self.job.job_id):
                raise
        return await first_batch(feed, t.start_to_close_s * model.retry.maximum_attempts)


async def job_is_moving(rt: Runtime, job_id: str) -> bool:
    try:
        desc = await rt.temporal.get_workflow_handle(job_id).describe()
    except Exception:
        return False
    if desc.status != WorkflowExecutionStatus.RUNNING:
        return True  # it ended: its final event is on the way
    return any(pa.state == PENDING_ACTIVITY_STATE_STARTED or pa.attempt > 1
               for pa in desc.raw_description.pending_activities)


def _events_unavailable() -> ServiceUnavailable:
    return ServiceUnavailable("The event stream is unavailable; please retry.", code="events_unavailable")

"""WebSocket at /v1/ws: several jobs in flight on one socket, events tagged with the client's id.

Protocol (docs/websocket.md): authenticate with the subprotocol `bearer.<key>` or a first message
`{"type": "auth", "api_key": ...}` (never in the URL); then `request`, `cancel` and `resume`
messages. Closing the socket cancels nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from proxy.auth import Principal
from proxy.body import decode_json_object
from proxy.chunks import ChunkWriter, terminal_error, writer_for
from proxy.errors import APIError, InvalidRequest
from proxy.jobs import cancel_job, load_job, start_job
from proxy.relay import EventFeed, parse_event_id
from proxy.sse import frame_id, resume_seq
from proxy.gatekeeping import admit_job
from proxy.runtime import Runtime
from proxy.serving_chat import CHAT
from proxy.serving_jobs import ENDPOINTS, PREPARE
from schemas.events import Cancelled, Delta, Failed, Finished, JobEvent, Restarted, Started

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()
MAX_IN_FLIGHT = 32


def _keys(ws: WebSocket):
    runtime = getattr(ws.app.state, "runtime", None)
    return runtime.keystore if runtime is not None and runtime.keystore is not None else ws.app.state.keys


def _principal_from_subprotocols(ws: WebSocket) -> tuple[Principal | None, str | None]:
    for proto in ws.scope.get("subprotocols", []):
        if proto.startswith("bearer."):
            return _keys(ws).verify(proto[len("bearer."):]), proto
    return None, None


class Session:
    def __init__(self, ws: WebSocket, rt: Runtime, principal: Principal):
        self.ws = ws
        self.rt = rt
        self.principal = principal
        self.out: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.tasks: dict[str, asyncio.Task] = {}
        self.jobs: dict[str, str] = {}

    def send(self, message: dict[str, Any]) -> None:
        self.out.put_nowait(_encoder.encode(message))

    def error(self, client_id: str | None, exc: APIError) -> None:
        self.send({"type": "error", "id": client_id, "status": exc.status, "error": exc.body()})

    async def writer(self) -> None:
        while (data := await self.out.get()) is not None:
            await self.ws.send_text(data.decode())

    async def handle(self, msg: dict[str, Any]) -> None:
        kind, client_id = msg.get("type"), msg.get("id")
        if not isinstance(client_id, str) or not client_id or len(client_id) > 128:
            raise InvalidRequest("Every message needs an 'id' (a string of 1 to 128 characters).", param="id")
        if kind == "request":
            if client_id in self.tasks:
                raise InvalidRequest(f"The id '{client_id}' is already in flight.", param="id")
            if len(self.tasks) >= MAX_IN_FLIGHT:
                raise InvalidRequest(f"At most {MAX_IN_FLIGHT} requests in flight per socket.", param="id")
            endpoint = msg.get("endpoint", CHAT)
            if endpoint not in PREPARE:
                raise InvalidRequest(f"Unsupported endpoint; supported: {', '.join(ENDPOINTS)}.", param="endpoint")
            body = msg.get("body")
            if not isinstance(body, dict):
                raise InvalidRequest("'body' must be an object.", param="body")
            chat = PREPARE[endpoint](self.rt, self.principal, body, msg.get("idempotency_key"))
            chat = await admit_job(None, self.rt, self.principal, chat)
            await start_job(self.rt, chat.inp, chat.model, chat.memo)
            self.jobs[client_id] = chat.job_id
            self.send({"type": "accepted", "id": client_id, "job_id": chat.job_id})
            self._follow(client_id, chat.job_id, endpoint, chat.model.id, chat.memo.created, 0)
        elif kind == "resume":
            job = await load_job(self.rt, str(msg.get("job_id", "")), self.principal.tenant)
            self.jobs[client_id] = job.view.id
            self._follow(client_id, job.view.id, job.memo.endpoint, job.memo.model, job.memo.created,
                         parse_event_id(msg.get("after", 0)))
        elif kind == "cancel":
            job_id = self.jobs.get(client_id)
            if job_id is None:
                raise InvalidRequest(f"No request with id '{client_id}' on this socket.", param="id")
            await cancel_job(self.rt, job_id)
        else:
            raise InvalidRequest("'type' must be request, resume or cancel.", param="type")

    def _follow(self, client_id: str, job_id: str, endpoint: str, model: str, created: int, after: int) -> None:
        chunks = writer_for(endpoint, job_id, model, created, True)
        task = asyncio.ensure_future(self._relay(client_id, job_id, chunks, after))
        self.tasks[client_id] = task
        task.add_done_callback(lambda _: self.tasks.pop(client_id, None))

    async def _relay(self, client_id: str, job_id: str, chunks: ChunkWriter, after: int) -> None:
        feed = await EventFeed.open(self.rt.js, job_id, after_seq=resume_seq(after))
        try:
            while True:
                try:
                    batch = await feed.next_batch(timeout=30)
                except TimeoutError:
                    continue
                for event in batch:
                    if frame_id(event.seq) > after:
                        self.send(self._message(client_id, event, chunks))
                if feed.ended:
                    break
            self.send({"type": "done", "id": client_id, "job_id": job_id})
        finally:
            await feed.close()

    @staticmethod
    def _message(client_id: str, event: JobEvent, chunks: ChunkWriter) -> dict[str, Any]:
        base = {"type": "event", "id": client_id, "seq": frame_id(event.seq)}
        if isinstance(event, Delta):
            return {**base, "event": "chunk", "data": msgspec.json.decode(chunks.delta_chunk(event))}
        if isinstance(event, Finished):
            return {**base, "event": "job.succeeded",
                    "data": {"finish_reason": event.finish_reason, "usage": event.usage}}
        if isinstance(event, Started):
            return {**base, "event": "job.running",
                    "data": {"attempt": event.attempt, "resumed_from": frame_id(event.resumed_from)}}
        if isinstance(event, Restarted):
            return {**base, "event": "job.restarted", "data": {"reason": event.reason}}
        if isinstance(event, Cancelled):
            return {**base, "event": "job.cancelled", "data": {"reason": event.reason}}
        assert isinstance(event, Failed)
        return {**base, "event": "job.failed", "data": {"error": terminal_error(event).body()}}


async def websocket_endpoint(ws: WebSocket) -> None:
    rt: Runtime = ws.app.state.runtime
    principal, proto = _principal_from_subprotocols(ws)
    await ws.accept(subprotocol=proto)
    if principal is None:
        try:
            first = _decoder.decode(await asyncio.wait_for(ws.receive_text(), 10))
        except (asyncio.TimeoutError, msgspec.DecodeError, WebSocketDisconnect):
            await ws.close(code=4401, reason="authenticate first")
            return
        key = first.get("api_key") if isinstance(first, dict) and first.get("type") == "auth" else None
        principal = _keys(ws).verify(key) if isinstance(key, str) else None
        if principal is None:
            await ws.send_text(_encoder.encode({"type": "error", "id": None, "status": 401, "error": {
                "message": "Incorrect API key provided.", "type": "invalid_request_error",
                "param": None, "code": "invalid_api_key"}}).decode())
            await ws.close(code=4401, reason="invalid api key")
            return
    session = Session(ws, rt, principal)
    session.send({"type": "ready", "tenant": principal.tenant})
    writer = asyncio.ensure_future(session.writer())
    try:
        while True:
            raw = await ws.receive_text()
            msg = None
            try:
                msg = decode_json_object(raw.encode())
                await session.handle(msg)
            except APIError as exc:
                session.error(msg.get("id") if isinstance(msg, dict) else None, exc)
    except WebSocketDisconnect:
        pass  # the jobs go on; only `cancel` stops them
    finally:
        for task in list(session.tasks.values()):
            task.cancel()
        session.out.put_nowait(None)
        writer.cancel()

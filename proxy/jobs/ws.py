"""WebSocket at /v1/ws: several jobs in flight on one socket, events tagged with the client's id.

Protocol (docs/websocket.md): authenticate with the subprotocol `bearer.<key>` or a first message
`{"type": "auth", "api_key": ...}` (never in the URL); then `request`, `cancel` and `resume`
messages. Closing the socket cancels nothing.

Bounds: at most MAX_IN_FLIGHT relays (requests and resumes) per socket; what waits for the client is
held in an `Outbox` bounded by messages and bytes, and the relays wait for room (events stay in
JetStream meanwhile). A client that leaves one send blocked for `ws_stall_s` is closed with 1013, and
one whose key stops verifying (revoked, expired, tenant gone) with 1008 within KEY_RECHECK_S.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from gatekeeping.auth import Principal
from proxy.http.body import decode_json_object
from proxy.jobs.render import ChunkWriter
from schemas.errors import APIError, InvalidRequest, NotFound
from proxy.jobs.store import cancel_job, load_job
from proxy.jobs.relay import EventFeed, parse_event_id
from proxy.http.sse import frame_id, resume_seq
from proxy.jobs.run import JobRun
from proxy.runtime import Runtime
from proxy.endpoints.registry import JSON_ENDPOINTS, creatable, endpoint_of
from proxy.jobs.api import lifecycle
from schemas.jobs import CHAT_ENDPOINT
from proxy.http.telemetry import WEBSOCKETS_CLOSED
from schemas.events import Delta, JobEvent

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()
MAX_IN_FLIGHT = 32
OUTBOX_MESSAGES = 256
OUTBOX_BYTES = 1024 * 1024
KEY_RECHECK_S = 0.25
CLOSE_GRACE_S = 10.0  # how long a closing frame may wait behind data the client has not read


def _keys(ws: WebSocket):
    runtime = getattr(ws.app.state, "runtime", None)
    return runtime.keystore if runtime is not None and runtime.keystore is not None else ws.app.state.keys


def _principal_from_subprotocols(ws: WebSocket) -> tuple[Principal | None, str | None, str | None]:
    for proto in ws.scope.get("subprotocols", []):
        if proto.startswith("bearer."):
            key = proto[len("bearer."):]
            return _keys(ws).verify(key), proto, key
    return None, None, None


class Outbox:
    """Encoded messages waiting for the socket, at most `max_messages` and `max_bytes` (one larger
    message is let through alone): `put` waits for room."""

    def __init__(self, max_messages: int, max_bytes: int):
        self._items: deque[bytes] = deque()
        self._bytes = 0
        self._max_messages, self._max_bytes = max_messages, max_bytes
        self._changed = asyncio.Condition()

    def _room_for(self, size: int) -> bool:
        return not self._items or (len(self._items) < self._max_messages and self._bytes + size <= self._max_bytes)

    async def put(self, data: bytes) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._room_for(len(data)))
            self._items.append(data)
            self._bytes += len(data)
            self._changed.notify_all()

    async def get(self) -> bytes:
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._items))
            data = self._items.popleft()
            self._bytes -= len(data)
            self._changed.notify_all()
            return data


class Session:
    def __init__(self, ws: WebSocket, rt: Runtime, principal: Principal, key: str):
        self.ws = ws
        self.rt = rt
        self.principal = principal
        self.key = key  # re-verified every KEY_RECHECK_S; memory only, never logged
        self.out = Outbox(OUTBOX_MESSAGES, OUTBOX_BYTES)
        self.tasks: dict[str, asyncio.Task] = {}
        self.jobs: dict[str, str] = {}
        self.sending_since: float | None = None

    async def send(self, message: dict[str, Any]) -> None:
        await self.out.put(_encoder.encode(message))

    async def error(self, client_id: str | None, exc: APIError) -> None:
        await self.send({"type": "error", "id": client_id, "status": exc.status, "error": exc.body()})

    async def writer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await self.out.get()
            self.sending_since = loop.time()
            await self.ws.send_text(data.decode())  # waits while the client's TCP window is full
            self.sending_since = None

    async def reader(self) -> None:
        """Handles the client's messages one at a time; returns when the client disconnects."""
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            msg = None
            try:
                msg = decode_json_object(message.get("bytes") or (message.get("text") or "").encode())
                await self.handle(msg)
            except APIError as exc:
                await self.error(msg.get("id") if isinstance(msg, dict) else None, exc)

    async def watch(self, stall_s: float) -> tuple[int, str]:
        """Returns (close code, reason) once the key no longer verifies or a send has waited
        `stall_s` for a client that does not read."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(KEY_RECHECK_S)
            principal = _keys(self.ws).verify(self.key)
            if principal is None:
                return 1008, "api key revoked"
            self.principal = principal
            if self.sending_since is not None and loop.time() - self.sending_since > stall_s:
                return 1013, f"not reading for {stall_s:g} s; resume by job_id"

    def _free(self, client_id: str) -> None:
        if client_id in self.tasks:
            raise InvalidRequest(f"The id '{client_id}' is already in flight.", param="id")
        if len(self.tasks) >= MAX_IN_FLIGHT:
            raise InvalidRequest(f"At most {MAX_IN_FLIGHT} requests in flight per socket.", param="id")

    async def handle(self, msg: dict[str, Any]) -> None:
        kind, client_id = msg.get("type"), msg.get("id")
        if not isinstance(client_id, str) or not client_id or len(client_id) > 128:
            raise InvalidRequest("Every message needs an 'id' (a string of 1 to 128 characters).", param="id")
        if kind == "request":
            self._free(client_id)
            endpoint = creatable(msg.get("endpoint", CHAT_ENDPOINT))
            body = msg.get("body")
            if not isinstance(body, dict):
                raise InvalidRequest("'body' must be an object.", param="body")
            assert endpoint.prepare is not None
            run = JobRun(self.rt, None, endpoint.prepare(self.rt, self.principal, body, msg.get("idempotency_key")),
                         principal=self.principal)
            await run.admit(endpoint.keep)
            await run.start_detached()
            prepared = run.job
            self.jobs[client_id] = prepared.job_id
            await self.send({"type": "accepted", "id": client_id, "job_id": prepared.job_id})
            self._follow(client_id, prepared.job_id, endpoint.path, prepared.model.id, prepared.memo.created, 0)
        elif kind == "resume":
            self._free(client_id)
            job = await load_job(self.rt, str(msg.get("job_id", "")), self.principal.tenant)
            if not self.principal.sees_job(job.memo.endpoint, job.memo.model):  # as if it did not exist
                raise NotFound(f"No job found with id '{job.view.id}'.", code="job_not_found")
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
        chunks = endpoint_of(endpoint).chunk_writer(job_id, model, created, True)
        task = asyncio.ensure_future(self._relay(client_id, job_id, chunks, after))
        self.tasks[client_id] = task
        task.add_done_callback(lambda t: self.tasks.pop(client_id) if self.tasks.get(client_id) is t else None)

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
                        await self.send(self._message(client_id, event, chunks))
                if feed.ended:
                    break
            await self.send({"type": "done", "id": client_id, "job_id": job_id})
        finally:
            await feed.close()

    @staticmethod
    def _message(client_id: str, event: JobEvent, chunks: ChunkWriter) -> dict[str, Any]:
        base = {"type": "event", "id": client_id, "seq": frame_id(event.seq)}
        if isinstance(event, Delta):
            return {**base, "event": "chunk", "data": msgspec.json.decode(chunks.delta_chunk(event))}
        name, data = lifecycle(event)
        return {**base, "event": name, "data": data}


async def websocket_endpoint(ws: WebSocket) -> None:
    rt: Runtime = ws.app.state.runtime
    principal, proto, key = _principal_from_subprotocols(ws)
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
    if not any(principal.allows_endpoint(e) for e in JSON_ENDPOINTS):
        await ws.send_text(_encoder.encode({"type": "error", "id": None, "status": 403, "error": {
            "message": "This API key may not call any endpoint served over /v1/ws.",
            "type": "invalid_request_error", "param": None, "code": "forbidden"}}).decode())
        await ws.close(code=4403, reason="key not scoped for /v1/ws")
        return
    assert key is not None
    session = Session(ws, rt, principal, key)
    await session.send({"type": "ready", "tenant": principal.tenant})
    watch = asyncio.ensure_future(session.watch(rt.settings.ws_stall_s))
    parts = [asyncio.ensure_future(session.reader()), asyncio.ensure_future(session.writer()), watch]
    try:  # until the client leaves, the socket fails, or `watch` says why it must close
        await asyncio.wait(parts, return_when=asyncio.FIRST_COMPLETED)
    finally:  # the jobs go on; only `cancel` stops them
        relays = list(session.tasks.values())
        for task in (*parts, *relays):
            task.cancel()
        await asyncio.gather(*parts, *relays, return_exceptions=True)
    if watch.done() and not watch.cancelled() and watch.exception() is None:
        code, reason = watch.result()
        WEBSOCKETS_CLOSED.labels("revoked" if code == 1008 else "stalled").inc()
        with contextlib.suppress(Exception):  # the client may be gone, or never read again
            await asyncio.wait_for(ws.close(code=code, reason=reason), CLOSE_GRACE_S)

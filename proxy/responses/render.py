"""Job events → the Responses API: typed stream events numbered from 0, or one Response object.

`ResponseBuilder` is a state machine over the job's events from its first one: the same events give
the same stream events with the same sequence numbers, so a stream resumed after N (on any replica,
after any crash) replays the job's events and writes only those numbered past N."""

from __future__ import annotations

from typing import Any

import msgspec

from proxy.jobs.render import ChunkWriter, CompletionAssembler
from schemas.events import Cancelled, Delta, Failed, Finished, JobEvent, Restarted
from schemas.openai import ErrorBody
from schemas.responses import (
    ArgumentsDelta,
    ArgumentsDone,
    Completed,
    ContentPartAdded,
    ContentPartDone,
    Created,
    ErrorEvent,
    FailedEvent,
    Incomplete,
    IncompleteDetails,
    InProgress,
    OutputFunctionCall,
    OutputItem,
    OutputItemAdded,
    OutputItemDone,
    OutputMessage,
    OutputText,
    OutputTextDelta,
    OutputTextDone,
    Response,
    ResponseError,
    ResponseUsage,
    StreamEvent,
    error_of,
)

_encoder = msgspec.json.Encoder()
INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


class _Item:
    """One output item while it is built: a message's text or a function call's arguments."""

    def __init__(self, kind: str, item_id: str, call_id: str = "", name: str = ""):
        self.kind, self.id, self.call_id, self.name = kind, item_id, call_id, name
        self.parts: list[str] = []
        self.status = "in_progress"

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def view(self) -> OutputItem:
        if self.kind == "message":
            content = [OutputText(text=self.text)] if self.status != "in_progress" or self.parts else []
            return OutputMessage(id=self.id, status=self.status, content=content)
        return OutputFunctionCall(id=self.id, call_id=self.call_id, name=self.name, arguments=self.text,
                                  status=self.status)


class ResponseBuilder:
    def __init__(self, shell: Response):
        self.shell = shell  # the response's settings; status and output come from the events
        self.seq = -1
        self.items: list[_Item] = []
        self.message: _Item | None = None  # the open message item
        self.calls: dict[int, _Item] = {}  # open function calls by tool-call index
        self.generation = 0  # a restart starts the output over with new item ids
        self.opened = False
        self.final: Response | None = None

    # ---- snapshots ----------------------------------------------------------------------------------
    def response(self, status: str, **extra: Any) -> Response:
        return msgspec.structs.replace(self.shell, status=status, output=[i.view() for i in self.items], **extra)

    def _n(self) -> int:
        self.seq += 1
        return self.seq

    def _item_id(self, prefix: str) -> str:
        base = self.shell.id.removeprefix("resp_")
        gen = f"{self.generation}_" if self.generation else ""
        return f"{prefix}_{base}_{gen}{len(self.items)}"

    # ---- events -------------------------------------------------------------------------------------
    def events(self, event: JobEvent) -> list[StreamEvent]:
        if self.final is not None:
            return []
        out: list[StreamEvent] = []
        if not self.opened:
            self.opened = True
            out += [Created(sequence_number=self._n(), response=self.response("in_progress")),
                    InProgress(sequence_number=self._n(), response=self.response("in_progress"))]
        if isinstance(event, Delta):
            if event.content:
                out += self._text(event.content)
            for call in event.tool_calls or ():
                out += self._tool_call(call)
        elif isinstance(event, Finished):
            out += self._finish(event)
        elif isinstance(event, (Failed, Cancelled)):
            out += self._close_all("incomplete")
            out.append(self._failed(event))
        elif isinstance(event, Restarted):
            out.append(ErrorEvent(sequence_number=self._n(), code="stream_restarted",
                                  message=f"The generation restarted ({event.reason}); its output starts over."))
            self.items, self.message, self.calls = [], None, {}
            self.generation += 1
        return out

    def fail(self, error: ErrorBody) -> list[StreamEvent]:
        """The job ended without a terminal event of its own (nobody took it)."""
        return self.events(Failed(seq=0, attempt=0, status=503, error=error))

    def _text(self, text: str) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        if self.message is None:
            self.message = item = _Item("message", self._item_id("msg"))
            index = len(self.items)
            self.items.append(item)
            out += [OutputItemAdded(sequence_number=self._n(), output_index=index, item=item.view()),
                    ContentPartAdded(sequence_number=self._n(), item_id=item.id, output_index=index,
                                     content_index=0, part=OutputText(text=""))]
        item = self.message
        item.parts.append(text)
        out.append(OutputTextDelta(sequence_number=self._n(), item_id=item.id, output_index=self.items.index(item),
                                   content_index=0, delta=text))
        return out

    def _tool_call(self, delta: dict[str, Any]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        index = int(delta.get("index", 0))
        fn = delta.get("function") or {}
        call = self.calls.get(index)
        if call is None:
            out += self._close_message("completed")
            call = _Item("call", self._item_id("fc"), delta.get("id") or "", fn.get("name") or "")
            if not call.call_id:
                call.call_id = "call_" + call.id.removeprefix("fc_")
            self.calls[index] = call
            self.items.append(call)
            out.append(OutputItemAdded(sequence_number=self._n(), output_index=len(self.items) - 1, item=call.view()))
        elif fn.get("name"):
            call.name += fn["name"]
        if fn.get("arguments"):
            call.parts.append(fn["arguments"])
            out.append(ArgumentsDelta(sequence_number=self._n(), item_id=call.id,
                                      output_index=self.items.index(call), delta=fn["arguments"]))
        return out

    def _close_message(self, status: str) -> list[StreamEvent]:
        item, self.message = self.message, None
        if item is None:
            return []
        item.status = status
        index, part = self.items.index(item), OutputText(text=item.text)
        return [OutputTextDone(sequence_number=self._n(), item_id=item.id, output_index=index, content_index=0,
                               text=item.text),
                ContentPartDone(sequence_number=self._n(), item_id=item.id, output_index=index, content_index=0,
                                part=part),
                OutputItemDone(sequence_number=self._n(), output_index=index, item=item.view())]

    def _close_all(self, status: str) -> list[StreamEvent]:
        out = self._close_message(status)
        for call in self.calls.values():
            call.status = status
            index = self.items.index(call)
            out += [ArgumentsDone(sequence_number=self._n(), item_id=call.id, output_index=index,
                                  arguments=call.text, name=call.name),
                    OutputItemDone(sequence_number=self._n(), output_index=index, item=call.view())]
        self.calls = {}
        return out

    def _finish(self, event: Finished) -> list[StreamEvent]:
        reason = INCOMPLETE_REASONS.get(event.finish_reason or "")
        out = self._close_all("incomplete" if reason else "completed")
        u = event.usage
        usage = ResponseUsage(input_tokens=u.prompt_tokens, output_tokens=u.completion_tokens,
                              total_tokens=u.total_tokens or u.prompt_tokens + u.completion_tokens)
        if reason:
            self.final = self.response("incomplete", usage=usage, incomplete_details=IncompleteDetails(reason))
            out.append(Incomplete(sequence_number=self._n(), response=self.final))
        else:
            self.final = self.response("completed", usage=usage)
            out.append(Completed(sequence_number=self._n(), response=self.final))
        return out

    def _failed(self, event: Failed | Cancelled) -> FailedEvent:
        if isinstance(event, Cancelled):
            self.final = self.response("cancelled")
        else:
            error = error_of(event.error)
            self.final = self.response("failed", error=ResponseError(code=error.code, message=error.message))
        return FailedEvent(sequence_number=self._n(), response=self.final)


def sse_frames(events: list[StreamEvent], after: int) -> bytes:
    """Typed SSE frames (`id:` = `event:`'s sequence number) for the events numbered past `after`."""
    out = []
    for ev in events:
        if ev.sequence_number > after:
            name = type(ev).__struct_config__.tag
            out.append(b"id: %d\nevent: %s\ndata: %s\n\n" % (ev.sequence_number, str(name).encode(),
                                                              _encoder.encode(ev)))
    return b"".join(out)


def default_shell(job_id: str, model: str, created: int) -> Response:
    return Response(id=job_id, created_at=created, model=model)


class ResponsesWriter(ChunkWriter):
    """The Responses stream of a job; `after_id` is the sequence number a resumed stream starts after.
    `shell` (the response's settings) is set before the first frame."""

    def __init__(self, job_id: str, model: str, created: int, include_usage: bool, after_id: int = -1):
        super().__init__(job_id, model, created, include_usage, after_id)
        self.builder = ResponseBuilder(default_shell(job_id, model, created))

    @property
    def shell(self) -> Response:
        return self.builder.shell

    @shell.setter
    def shell(self, value: Response) -> None:
        self.builder.shell = value

    def frames(self, event: JobEvent) -> bytes:
        return sse_frames(self.builder.events(event), self.after_id)


class ResponseAssembler(CompletionAssembler):
    """A job's events as the Response object (completed, incomplete, failed or cancelled)."""

    def __init__(self, chunks: ChunkWriter):
        super().__init__(chunks)
        shell = chunks.shell if isinstance(chunks, ResponsesWriter) else default_shell(
            chunks.job_id, chunks.model, chunks.created)
        self.builder = ResponseBuilder(shell)

    def add(self, event: JobEvent) -> Response | None:  # type: ignore[override]
        self.builder.events(event)
        return self.builder.final

"""Responses that outlive their requests: `background: true`, and any stream resumed with
`retrieve(id, stream=True, starting_after=N)` (also a dropped foreground one), after a worker is
killed mid-stream and after the proxy restarts; cancel; failures in the stream."""

from __future__ import annotations

import httpx
import openai

from tests.conftest import Stack
from tests.eventually import eventually
from tests.fakes.vllm import REPLY
from tests.test_responses import PASSTHROUGH, TRANSLATED, said


def dumped(events: list) -> list[dict]:
    return [e.model_dump() for e in events]


def take(stream, n: int) -> list:
    """The first `n` events of an SDK stream; the connection is then dropped."""
    out = []
    with stream:
        for event in stream:
            out.append(event)
            if len(out) == n:
                break
    return out


def deltas(events: list) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def assert_exactly_the_rest(client: openai.OpenAI, response_id: str, head: list) -> list:
    """Resuming after the last event of `head` gives the rest: together they are the whole stream as
    a full replay renders it, numbered 0, 1, 2 ... with no gap and no repeat."""
    rest = list(client.responses.retrieve(response_id, stream=True, starting_after=head[-1].sequence_number))
    whole = head + rest
    assert [e.sequence_number for e in whole] == list(range(len(whole)))
    assert dumped(whole) == dumped(list(client.responses.retrieve(response_id, stream=True)))
    return rest


def test_background_returns_at_once_and_resumes_after_any_sequence_number(client: openai.OpenAI):
    r = client.responses.create(model=TRANSLATED, input=said("slow") + ";delay=0.1;repeat=2", background=True)
    assert r.status in ("queued", "in_progress") and r.background and r.output == []
    head = take(client.responses.retrieve(r.id, stream=True), 6)
    rest = assert_exactly_the_rest(client, r.id, head)
    final = rest[-1].response
    assert rest[-1].type == "response.completed" and final.output_text == " ".join([REPLY] * 2)
    assert deltas(head + rest) == final.output_text
    again = client.responses.retrieve(r.id)
    assert again.status == "completed" and again.output_text == final.output_text and again.background


def test_a_dropped_foreground_stream_resumes(client: openai.OpenAI):
    head = take(client.responses.create(model=PASSTHROUGH, input=said("slow") + ";delay=0.1", stream=True), 5)
    response_id = head[0].response.id
    rest = assert_exactly_the_rest(client, response_id, head)
    assert deltas(head + rest) == REPLY == rest[-1].response.output_text


def test_worker_killed_mid_stream_the_text_goes_on_once(stack: Stack, client: openai.OpenAI, http: httpx.Client):
    ask = dict(model="durable", input="Count from 1 to 60, separated by commas.", max_output_tokens=160,
               temperature=0)
    events, before_crash = [], ""
    client = client.with_options(timeout=180)  # a fresh worker starts on a busy machine
    for event in client.responses.create(**ask, stream=True, background=True):
        events.append(event)
        if event.type == "response.output_text.delta" and not before_crash and len(deltas(events)) >= 12:
            before_crash = deltas(events)
            stack.restart_worker(kill=True)  # SIGKILL, then a fresh worker
    final = events[-1].response
    text = deltas(events)
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert text == final.output_text and text.startswith(before_crash) and len(text) > len(before_crash) + 10
    assert text.count(before_crash) == 1
    assert http.get(f"/v1/jobs/{final.id}").json()["attempts"] == 2  # it was retried after the kill
    assert client.responses.create(**ask).output_text == text  # greedy: as an uninterrupted run
    at = next(i for i, e in enumerate(events) if e.type == "response.output_text.delta" and deltas(events[:i + 1]) == before_crash)
    assert_exactly_the_rest(client, final.id, events[:at + 1])


def test_resume_after_the_proxy_restarts(stack: Stack, client: openai.OpenAI):
    r = client.responses.create(model=TRANSLATED, input=said("slow") + ";delay=0.2;repeat=3", background=True)
    head = take(client.responses.retrieve(r.id, stream=True), 5)
    stack.restart_proxy()
    rest = assert_exactly_the_rest(client, r.id, head)
    assert rest[-1].response.output_text == " ".join([REPLY] * 3) == deltas(head + rest)


def test_cancel_ends_it_cancelled(client: openai.OpenAI):
    r = client.responses.create(model=TRANSLATED, input=said("slow") + ";repeat=20", background=True)
    eventually(lambda: client.responses.retrieve(r.id).output, what="the first output")
    cancelled = client.responses.cancel(r.id)
    assert cancelled.status == "cancelled" and len(cancelled.output_text) < len(REPLY) * 20
    assert client.responses.retrieve(r.id).status == "cancelled"
    assert client.responses.cancel(r.id).status == "cancelled"  # idempotent
    events = list(client.responses.retrieve(r.id, stream=True))
    assert events[-1].type == "response.failed" and events[-1].response.status == "cancelled"


def test_a_failure_mid_stream_is_response_failed(client: openai.OpenAI):
    events = list(client.responses.create(model=PASSTHROUGH, input=said("error"), stream=True))
    assert deltas(events) == " ".join(REPLY.split(" ")[:3])
    assert events[-1].type == "response.failed"
    assert "mid-stream" in events[-1].response.error.message
    assert client.responses.retrieve(events[0].response.id).status == "failed"


def test_an_engine_refusal_is_the_engines_status(client: openai.OpenAI):
    try:
        client.responses.create(model=TRANSLATED, input=said("bad-request"))
    except openai.BadRequestError as exc:
        assert "maximum context length" in exc.message
    else:
        raise AssertionError("a 400 from the engine must reach the client")

"""The Responses API (/v1/responses) judged by the official openai SDK on the real stack: translated
to chat completions (llama.cpp and the fake vLLM's chat) and passed through to an engine that
serves /v1/responses itself (the fake vLLM's). Resume, crashes and cancel: test_responses_resume.py."""

from __future__ import annotations

import uuid

import httpx
import msgspec
import openai
import pytest

from proxy.responses.render import ResponseBuilder, default_shell
from schemas.events import Delta, Finished, Restarted, Started
from schemas.openai import Usage
from tests.conftest import MODEL, OTHER_KEY, Stack
from tests.eventually import eventually
from tests.fakes.vllm import REPLY

TOOLS = [{"type": "function", "name": "get_weather", "description": "The weather in a city.",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
TRANSLATED, PASSTHROUGH = "fake-vllm", "fake-vllm-responses"
TEXT_ORDER = ["response.created", "response.in_progress", "response.output_item.added",
              "response.content_part.added", "response.output_text.delta", "response.output_text.done",
              "response.content_part.done", "response.output_item.done", "response.completed"]


def said(name: str) -> str:
    return f"scenario={name};nonce={uuid.uuid4().hex}"


def collapse(types: list[str]) -> list[str]:
    """Event types with runs of the same type shown once (the deltas)."""
    return [t for i, t in enumerate(types) if i == 0 or types[i - 1] != t]


@pytest.fixture
def other(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.proxy_url + "/v1", api_key=OTHER_KEY, max_retries=0, timeout=60)


# ---- create -----------------------------------------------------------------------------------------

def test_non_stream_create_on_the_real_model(client: openai.OpenAI):
    raw = client.responses.with_raw_response.create(model=MODEL, input="What is two plus two?",
                                                    instructions="Answer in one short sentence.",
                                                    max_output_tokens=24, temperature=0)
    r = raw.parse()
    assert r.id.startswith("resp_") and r.id == raw.headers["x-job-id"]
    assert r.object == "response" and r.model == MODEL and r.status in ("completed", "incomplete")
    assert r.output_text.strip() and r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.instructions == "Answer in one short sentence." and r.max_output_tokens == 24
    u = r.usage
    assert u is not None and u.input_tokens > 0 and 0 < u.output_tokens <= 24
    assert u.total_tokens == u.input_tokens + u.output_tokens


def test_max_output_tokens_reached_is_incomplete(client: openai.OpenAI):
    r = client.responses.create(model=MODEL, input="Write a long story about the sea.", max_output_tokens=4)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 4 and r.output[0].status == "incomplete" and r.output_text


@pytest.mark.parametrize("model", [TRANSLATED, PASSTHROUGH])
def test_stream_events_in_order_with_increasing_sequence_numbers(client: openai.OpenAI, model: str):
    events = list(client.responses.create(model=model, input=said("ok"), stream=True))
    assert collapse([e.type for e in events]) == TEXT_ORDER
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == REPLY
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == REPLY and done.item_id == final.output[0].id
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    assert final.status == "completed" and final.usage.output_tokens > 0


def test_passthrough_sends_the_responses_body_to_the_engine(client: openai.OpenAI, stack: Stack):
    r = client.responses.create(model=PASSTHROUGH, input=said("ok"), instructions="Be brief.", temperature=0.5)
    assert r.output_text == REPLY and r.status == "completed" and r.usage.input_tokens == 11
    body = stack.fake.responses_bodies[-1]
    assert body["model"] == "fake-model" and body["stream"] is True and body["store"] is False
    assert body["instructions"] == "Be brief." and body["temperature"] == 0.5
    assert body["input"][-1]["role"] == "user" and "previous_response_id" not in body


def test_translated_request_is_a_chat_body(client: openai.OpenAI, stack: Stack):
    text = said("ok")
    client.responses.create(model=TRANSLATED, input=text, instructions="Be brief.", max_output_tokens=50,
                            top_p=0.9, text={"format": {"type": "json_schema", "name": "answer",
                                                        "schema": {"type": "object"}}})
    body = next(b for b in reversed(stack.fake.bodies) if b["messages"][-1]["content"] == text)
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
    assert body["max_tokens"] == 50 and body["top_p"] == 0.9
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "answer",
                                                                             "schema": {"type": "object"}}}


# ---- conversations and tools ------------------------------------------------------------------------

@pytest.mark.parametrize("model", [TRANSLATED, PASSTHROUGH])
def test_previous_response_id_continues_the_conversation(client: openai.OpenAI, stack: Stack, model: str):
    first_text = said("ok")
    first = client.responses.create(model=model, input=first_text)
    second_text = said("ok")
    second = client.responses.create(model=model, input=second_text, previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.output_text == REPLY
    third = client.responses.create(model=model, input=said("ok"), previous_response_id=second.id)
    if model == TRANSLATED:
        sent = next(b for b in reversed(stack.fake.bodies) if len(b["messages"]) == 5)["messages"]
        assert [(m["role"], m["content"]) for m in sent[:4]] == [
            ("user", first_text), ("assistant", REPLY), ("user", second_text), ("assistant", REPLY)]
    else:
        sent = stack.fake.responses_bodies[-1]["input"]
        assert [i["type"] for i in sent] == ["message"] * 5
        assert sent[0]["content"][0]["text"] == first_text and sent[1]["content"][0]["text"] == REPLY
    assert third.status == "completed"


@pytest.mark.parametrize("model", [TRANSLATED, PASSTHROUGH])
def test_function_call_round_trip(client: openai.OpenAI, stack: Stack, model: str):
    events = list(client.responses.create(model=model, input=said("tools"), tools=TOOLS, stream=True))
    types = collapse([e.type for e in events])
    assert types == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.function_call_arguments.delta", "response.function_call_arguments.done",
                     "response.output_item.done", "response.completed"]
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    call = events[-1].response.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and call.arguments == args == '{"city": "Seoul"}'
    assert call.status == "completed" and call.call_id
    first = events[-1].response
    assert client.responses.retrieve(first.id).output[0].call_id == call.call_id

    answer = client.responses.create(model=model, previous_response_id=first.id, tools=TOOLS,
                                     input=[{"type": "function_call_output", "call_id": call.call_id,
                                             "output": "sunny, 21 C"}])
    assert answer.status == "completed" and answer.output_text == REPLY
    if model == TRANSLATED:
        sent = next(b for b in reversed(stack.fake.bodies) if b["messages"][-1]["role"] == "tool")
        assert sent["messages"][-2]["tool_calls"][0]["id"] == call.call_id
        assert sent["messages"][-2]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": args}
        assert sent["messages"][-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny, 21 C"}
        assert sent["tools"][0] == {"type": "function", "function": {k: v for k, v in TOOLS[0].items() if k != "type"}}
    else:
        sent = stack.fake.responses_bodies[-1]
        assert [i["type"] for i in sent["input"]] == ["message", "function_call", "function_call_output"]
        assert sent["tools"] == TOOLS


# ---- the other routes -------------------------------------------------------------------------------

def test_input_items_lists_the_request_items(client: openai.OpenAI):
    r = client.responses.create(model=TRANSLATED, input=[
        {"role": "user", "content": "first"}, {"role": "assistant", "content": "an answer"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": said("ok")}]}])
    items = client.responses.input_items.list(r.id)
    assert [i.role for i in items.data] == ["user", "assistant", "user"][::-1]
    assert items.data[-1].content[0].text == "first" and all(i.id for i in items.data)
    asc = client.responses.input_items.list(r.id, order="asc", limit=1)
    assert [i.content[0].text for i in asc.data] == ["first"] and asc.has_more
    rest = client.responses.input_items.list(r.id, order="asc", after=asc.data[0].id)
    assert [i.role for i in rest.data] == ["assistant", "user"] and not rest.has_more


def test_a_response_made_through_the_jobs_api_is_a_whole_response(client: openai.OpenAI, http):
    """POST /v1/jobs with the Responses endpoint stores the same record POST /v1/responses does."""
    text = said("ok")
    r = http.post("/v1/jobs", json={"endpoint": "/v1/responses", "metadata": {"via": "jobs"},
                                    "body": {"model": TRANSLATED, "input": text, "instructions": "Be brief."}})
    assert r.status_code == 202, r.text
    response_id = r.json()["id"]
    assert response_id.startswith("resp_")
    done = eventually(lambda: (x := client.responses.retrieve(response_id)).status == "completed" and x,
                      60, what="the response completing")
    assert done.output_text == REPLY and done.instructions == "Be brief."
    [item] = client.responses.input_items.list(response_id).data
    assert item.content[0].text == text


def test_delete_then_every_route_answers_404(client: openai.OpenAI):
    r = client.responses.create(model=TRANSLATED, input=said("ok"))
    client.responses.delete(r.id)
    for call in (lambda: client.responses.retrieve(r.id), lambda: client.responses.input_items.list(r.id),
                 lambda: client.responses.cancel(r.id), lambda: client.responses.delete(r.id),
                 lambda: client.responses.create(model=TRANSLATED, input="x", previous_response_id=r.id)):
        with pytest.raises(openai.NotFoundError):
            call()


def test_store_false_is_not_retrievable(client: openai.OpenAI):
    r = client.responses.create(model=TRANSLATED, input=said("ok"), store=False)
    assert r.output_text == REPLY and r.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_another_tenant_gets_404(client: openai.OpenAI, other: openai.OpenAI):
    r = client.responses.create(model=TRANSLATED, input=said("ok"))
    for call in (lambda: other.responses.retrieve(r.id), lambda: other.responses.input_items.list(r.id),
                 lambda: other.responses.cancel(r.id), lambda: other.responses.delete(r.id),
                 lambda: other.responses.retrieve(r.id, stream=True)):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.NotFoundError) as exc:
        other.responses.create(model=TRANSLATED, input="x", previous_response_id=r.id)
    assert exc.value.body["param"] == "previous_response_id"
    assert client.responses.retrieve(r.id).output_text == REPLY  # still there for its owner


@pytest.mark.parametrize("body, param", [
    ({"model": TRANSLATED}, "input"),
    ({"model": TRANSLATED, "input": []}, "input"),
    ({"model": TRANSLATED, "input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
    ({"model": TRANSLATED, "input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"model": TRANSLATED, "input": "hi", "max_output_tokens": "many"}, "max_output_tokens"),
    ({"model": MODEL, "input": "hi", "max_output_tokens": 100000}, "max_output_tokens"),
    ({"model": TRANSLATED, "input": "hi", "background": True, "store": False}, "store"),
    ({"model": TRANSLATED, "input": "hi", "frobnicate": 1}, "frobnicate"),
    ({"model": "no-such-model", "input": "hi"}, "model"),
])
def test_bad_input_is_a_4xx_naming_the_param(http: httpx.Client, body: dict, param: str):
    r = http.post("/v1/responses", json=body)
    assert r.status_code in (400, 404), r.text
    assert r.json()["error"]["param"] == param, r.text


def test_bad_input_through_the_sdk(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model=TRANSLATED, input="hi", temperature="hot")  # type: ignore[arg-type]
    assert exc.value.body["param"] == "temperature"


def test_openai_npm_client_on_responses(stack: Stack):
    from tests.test_js_client import JS, _counts, _node_test

    assert (JS / "node_modules" / "openai" / "package.json").exists(), "run `make install` (npm ci in tests/js)"
    tap = _node_test("responses.test.js", {"SWITCHYARD_BASE_URL": stack.proxy_url + "/v1",
                                           "SWITCHYARD_KEY": stack.key, "SWITCHYARD_RESPONSES_MODEL": TRANSLATED})
    assert _counts(tap) == (2, 0), tap


# ---- the renderer, without the stack ----------------------------------------------------------------

def _job_events() -> list:
    usage = Usage(prompt_tokens=5, completion_tokens=3, total_tokens=8)
    return [Started(seq=1, attempt=1), Delta(seq=2, attempt=1, content="Hello"),
            Delta(seq=3, attempt=1, content=" there", tool_calls=None),
            Delta(seq=4, attempt=1, tool_calls=[{"index": 0, "id": "call_9", "function": {"name": "f", "arguments": "{}"}}]),
            Finished(seq=5, attempt=1, finish_reason="tool_calls", usage=usage, model="m", created=1)]


def test_a_replay_renders_the_same_numbers_and_ids():
    def render() -> list:
        b = ResponseBuilder(default_shell("resp_abc", "m", 1))
        return [ev for e in _job_events() for ev in b.events(e)]

    first, again = render(), render()
    assert first == again
    assert [e.sequence_number for e in first] == list(range(len(first)))
    final = msgspec.to_builtins(first[-1].response)
    assert [i["type"] for i in final["output"]] == ["message", "function_call"]
    assert final["output"][0]["content"][0]["text"] == "Hello there" and final["output"][1]["call_id"] == "call_9"
    assert final["usage"]["total_tokens"] == 8 and final["status"] == "completed"


def test_a_restart_is_an_error_event_and_the_output_starts_over():
    usage = Usage(prompt_tokens=5, completion_tokens=1, total_tokens=6)
    b = ResponseBuilder(default_shell("resp_abc", "m", 1))
    job = [Started(seq=1, attempt=1), Delta(seq=2, attempt=1, content="lost"),
           Restarted(seq=3, attempt=2, reason="the engine cannot continue"), Started(seq=4, attempt=2),
           Delta(seq=5, attempt=2, content="kept"),
           Finished(seq=6, attempt=2, finish_reason="stop", usage=usage, model="m", created=1)]
    events = [msgspec.to_builtins(ev) for e in job for ev in b.events(e)]
    error = next(e for e in events if e["type"] == "error")
    assert error["code"] == "stream_restarted"
    final = events[-1]["response"]
    assert [i["content"][0]["text"] for i in final["output"]] == ["kept"]
    first_item = next(e for e in events if e["type"] == "response.output_item.added")["item"]["id"]
    assert final["output"][0]["id"] != first_item  # the new output's items have ids of their own

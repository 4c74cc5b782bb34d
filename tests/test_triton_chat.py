"""Chat and completions through the whole durable path on the real Triton, with a real language model:
SmolLM2-135M-Instruct as the decoupled `smollm` model of compose/triton (generate_stream), judged by
the OpenAI SDK. The same weights run on the suite's llama-server (`MODEL`), so greedy output through
Triton can be compared with greedy output through the OpenAI-protocol engine."""

from __future__ import annotations

import httpx
import openai

from tests.conftest import MODEL, Stack
from tests.jobclient import assert_resumed_once, stream_through_a_worker_kill

TRITON_LM = "smollm2-triton"
CHAT = "/v1/chat/completions"
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def test_sdk_streams_chat_from_a_real_model_on_triton(client: openai.OpenAI):
    raw = client.chat.completions.with_raw_response.create(
        model=TRITON_LM, stream=True, max_tokens=48, temperature=0, stream_options={"include_usage": True},
        messages=[SYSTEM, {"role": "user", "content": "What is the capital of France?"}])
    chunks = list(raw.parse())
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) >= 3  # streamed piece by piece, as Triton's events came
    text = "".join(deltas)
    assert "Paris" in text
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    usage = chunks[-1].usage  # the model's token counts, from its prompt_tokens / completion_tokens outputs
    assert usage is not None and usage.prompt_tokens > 15 and 3 <= usage.completion_tokens <= 48
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_greedy_text_through_triton_equals_the_openai_engine(client: openai.OpenAI):
    messages = [SYSTEM, {"role": "user", "content": "Name three colours of the rainbow."}]
    via_triton = client.chat.completions.create(model=TRITON_LM, max_tokens=40, temperature=0, messages=messages)
    via_llama = client.chat.completions.create(model=MODEL, max_tokens=40, temperature=0, messages=messages)
    assert via_triton.choices[0].message.content.strip()
    # The catalog's ChatML template renders what the model's own template renders for llama-server.
    assert via_triton.choices[0].message.content == via_llama.choices[0].message.content
    assert via_triton.usage.prompt_tokens == via_llama.usage.prompt_tokens


def test_completion_cut_by_max_tokens_reports_length(client: openai.OpenAI):
    out = client.completions.create(model=TRITON_LM, prompt="Once upon a time", max_tokens=5, temperature=0)
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 5 and out.choices[0].text.strip()


def test_a_prompt_over_the_context_is_a_400_in_openai_envelope(stack: Stack):
    long = "word " * 3000  # over the model's 2048-token slot, under the catalog's limit: the engine refuses
    r = httpx.post(stack.proxy_url + CHAT, headers={"authorization": f"Bearer {stack.key}"}, timeout=60,
                   json={"model": TRITON_LM, "max_tokens": 8, "messages": [{"role": "user", "content": long}]})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and "context" in error["message"]


def test_worker_killed_mid_triton_stream_goes_on_from_the_delivered_text(stack: Stack):
    body = {"model": TRITON_LM, "stream": True, "max_tokens": 160, "temperature": 0,
            "messages": [SYSTEM, {"role": "user", "content": "Count from 1 to 60, separated by commas."}]}
    headers = {"authorization": f"Bearer {stack.key}"}
    job_id, before_crash, text = stream_through_a_worker_kill(stack, CHAT, body)
    assert text.startswith(before_crash) and len(text) > len(before_crash) + 10
    # The second attempt sends the delivered text as an open assistant turn (continue_final_message):
    # greedy decoding continues it exactly as an uninterrupted run does.
    baseline = httpx.post(stack.proxy_url + CHAT, headers=headers, json={**body, "stream": False},
                          timeout=120).json()
    assert text == baseline["choices"][0]["message"]["content"]
    with httpx.Client(base_url=stack.proxy_url, headers=headers) as http:
        assert_resumed_once(http, job_id)

"""POST /v1/embeddings judged by the official SDK against the real stack: a llama-server started with
`--embeddings --pooling mean`. Vectors travel by the object store, never through Temporal's history."""

from __future__ import annotations

import base64
import math
import struct
import time
from pathlib import Path

import httpx
import msgspec
import openai
import pytest

from schemas.jobs import InferenceSummary
from tests.conftest import MODEL, Stack
from tests.jobclient import wait_result

EMBED = "smollm2-135m-embed"
MRL = "smollm2-135m-embed-mrl"  # the same engine; `dimensions` by truncation
DIMS = 576


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_default_base64_and_float_give_identical_vectors(client: openai.OpenAI):
    texts = ["The cat sat on the mat.", "Temporal keeps the job's state."]
    default = client.embeddings.create(model=EMBED, input=texts)  # the SDK asks for base64 and decodes
    floats = client.embeddings.create(model=EMBED, input=texts, encoding_format="float")
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    assert [d.index for d in floats.data] == [0, 1] and all(d.object == "embedding" for d in floats.data)
    assert all(len(d.embedding) == DIMS for d in floats.data)
    assert floats.object == "list" and floats.model == EMBED
    assert floats.usage.prompt_tokens > 0 and floats.usage.total_tokens == floats.usage.prompt_tokens
    assert default.usage.prompt_tokens == floats.usage.prompt_tokens


def test_base64_is_little_endian_float32(http: httpx.Client):
    as_b64 = http.post("/v1/embeddings", json={"model": EMBED, "input": "hello", "encoding_format": "base64"})
    as_float = http.post("/v1/embeddings", json={"model": EMBED, "input": "hello"})
    assert as_b64.status_code == as_float.status_code == 200
    raw = base64.b64decode(as_b64.json()["data"][0]["embedding"])
    assert len(raw) == 4 * DIMS
    assert list(struct.unpack(f"<{DIMS}f", raw)) == as_float.json()["data"][0]["embedding"]


def test_paraphrases_are_closer_than_unrelated_sentences(client: openai.OpenAI):
    a, b, c = (d.embedding for d in client.embeddings.create(model=EMBED, input=[
        "The weather is lovely today.", "It is a beautiful sunny day.",
        "Quarterly tax filings are due next week."]).data)
    assert cosine(a, b) > cosine(a, c)


def test_every_input_form(client: openai.OpenAI):
    one = client.embeddings.create(model=EMBED, input="hello world").data
    many = client.embeddings.create(model=EMBED, input=["hello world", "goodbye"]).data
    ids = client.embeddings.create(model=EMBED, input=[504, 3458, 282]).data
    id_lists = client.embeddings.create(model=EMBED, input=[[504, 3458, 282], [282, 504]]).data
    assert (len(one), len(many), len(ids), len(id_lists)) == (1, 2, 1, 2)
    assert cosine(one[0].embedding, many[0].embedding) > 0.999  # in order
    assert cosine(ids[0].embedding, id_lists[0].embedding) > 0.999
    assert cosine(many[0].embedding, many[1].embedding) < 0.999


def test_dimensions_where_the_model_supports_it(client: openai.OpenAI, http: httpx.Client):
    full = client.embeddings.create(model=MRL, input="hello", encoding_format="float").data[0].embedding
    short = client.embeddings.create(model=MRL, input="hello", dimensions=64).data[0].embedding
    assert len(short) == 64
    assert math.isclose(math.sqrt(sum(x * x for x in short)), 1.0, rel_tol=1e-5)
    norm = math.sqrt(sum(x * x for x in full[:64]))
    assert all(math.isclose(s, f / norm, rel_tol=1e-5, abs_tol=1e-6) for s, f in zip(short, full))
    with pytest.raises(openai.BadRequestError) as info:  # a model without it: 400 naming the field
        client.embeddings.create(model=EMBED, input="hello", dimensions=64)
    assert info.value.body["param"] == "dimensions"
    r = http.post("/v1/embeddings", json={"model": MRL, "input": "hello", "dimensions": DIMS + 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"


@pytest.mark.parametrize("body, param", [
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": ["a", ""]}, "input"),
    ({"input": ["a", 1]}, "input"),
    ({"input": [[1, 2], []]}, "input"),
    ({"input": {"text": "a"}}, "input"),
    ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "a", "dimensions": 0}, "dimensions"),
    ({}, "input"),
])
def test_invalid_requests_name_the_field(http: httpx.Client, body: dict, param: str):
    r = http.post("/v1/embeddings", json={"model": EMBED, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_a_model_without_embeddings_is_refused_before_any_job(client: openai.OpenAI, http: httpx.Client):
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input="hello")
    assert (info.value.code, info.value.body["param"]) == ("unsupported_capability", "model")
    r = http.post("/v1/embeddings", json={"model": MODEL, "input": "hello"})
    assert "x-job-id" not in r.headers
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="hello")


async def test_vectors_never_enter_temporal_history(stack: Stack, client: openai.OpenAI, temporal):
    raw = client.embeddings.with_raw_response.create(model=EMBED, input=["a"] * 64, encoding_format="float")
    body = raw.parse()
    job_id = raw.headers["x-job-id"]
    assert job_id.startswith("embd-") and len(body.data) == 64
    handle = temporal.get_workflow_handle(job_id, result_type=InferenceSummary)
    summary = await handle.result()
    assert summary.result_ref == f"{job_id}/result.json" and summary.usage.prompt_tokens > 0
    history = await handle.fetch_history()
    size = len(history.to_json())
    assert size < 20_000  # 64 × 576 floats would be ~800 kB of JSON
    stored = Path(stack.env["SWITCHYARD_OBJECT_DIR"]) / summary.result_ref
    assert msgspec.json.decode(stored.read_bytes())["data"][0]["embedding"] == body.data[0].embedding


def test_jobs_api_and_prefer_respond_async(http: httpx.Client):
    body = {"model": EMBED, "input": ["one", "two"], "encoding_format": "base64"}
    sync = http.post("/v1/embeddings", json=body)
    r = http.post("/v1/embeddings", json=body, headers={"prefer": "respond-async"})
    assert r.status_code == 202 and r.headers["preference-applied"] == "respond-async"
    assert r.json()["endpoint"] == "/v1/embeddings"
    assert wait_result(http, r.json()["id"]).json() == sync.json()

    r = http.post("/v1/jobs", json={"endpoint": "/v1/embeddings", "body": body, "metadata": {"k": "v"}})
    assert r.status_code == 202
    job_id = r.json()["id"]
    assert wait_result(http, job_id).json() == sync.json()
    job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["usage"]["prompt_tokens"] > 0
    with http.stream("GET", f"/v1/jobs/{job_id}/events") as events:
        text = events.read().decode()
    assert "event: job.succeeded" in text


def test_proxied_embeddings_equal_the_engines_own(stack: Stack, client: openai.OpenAI):
    """The durable path returns the engine's vectors unchanged (the latency it adds is printed with -s;
    timing goals live in benchmarks/, not in asserts)."""
    direct = openai.OpenAI(base_url=stack.env["EMBED_ENGINE_URL"], api_key="none", max_retries=0)
    times: dict[str, list[float]] = {"proxy": [], "direct": []}
    for i in range(5):
        text = f"a short sentence number {i}"
        t = time.perf_counter()
        proxied = client.embeddings.create(model=EMBED, input=text, encoding_format="float")
        times["proxy"].append(time.perf_counter() - t)
        t = time.perf_counter()
        own = direct.embeddings.create(model=EMBED, input=text, encoding_format="float")
        times["direct"].append(time.perf_counter() - t)
        assert len(proxied.data[0].embedding) == len(own.data[0].embedding)
        assert cosine(proxied.data[0].embedding, own.data[0].embedding) > 0.9999
    median = {k: sorted(v)[2] * 1000 for k, v in times.items()}
    print(f"\nembedding latency (median of 5): proxy {median['proxy']:.1f} ms, direct {median['direct']:.1f} ms")

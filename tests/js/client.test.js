// The official openai npm package against a running proxy: SWITCHYARD_BASE_URL (…/v1), SWITCHYARD_KEY,
// SWITCHYARD_CHAT_MODEL and SWITCHYARD_EMBED_MODEL come from tests/test_js_client.py.
import { test } from "node:test";
import assert from "node:assert/strict";
import OpenAI, { APIError, AuthenticationError, NotFoundError } from "openai";

const baseURL = process.env.SWITCHYARD_BASE_URL;
const chatModel = process.env.SWITCHYARD_CHAT_MODEL;
const client = new OpenAI({ baseURL, apiKey: process.env.SWITCHYARD_KEY, maxRetries: 0, timeout: 120_000 });
const messages = [{ role: "user", content: "Say hello in five words." }];

test("stream with include_usage: deltas, a finish reason, then one usage chunk", async () => {
  const { data: stream, response } = await client.chat.completions
    .create({ model: chatModel, messages, max_tokens: 16, stream: true, stream_options: { include_usage: true } })
    .withResponse();
  const job = response.headers.get("x-job-id");
  assert.match(job, /^chatcmpl-/);
  let text = "", finish = null, usage = null, usageChunks = 0;
  for await (const chunk of stream) {
    assert.equal(chunk.object, "chat.completion.chunk");
    assert.equal(chunk.id, job);
    if (chunk.usage) { usage = chunk.usage; usageChunks += 1; assert.deepEqual(chunk.choices, []); continue; }
    text += chunk.choices[0].delta.content ?? "";
    finish = chunk.choices[0].finish_reason ?? finish;
  }
  assert.ok(text.length > 0);
  assert.ok(["stop", "length"].includes(finish));
  assert.equal(usageChunks, 1);
  assert.ok(usage.completion_tokens > 0);
  assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
  // The same answer, assembled by the proxy from the job's events.
  const result = await client.get(`/jobs/${job}/result`);
  assert.equal(result.choices[0].message.content, text);
});

test("non-stream: a chat.completion", async () => {
  const completion = await client.chat.completions.create({ model: chatModel, messages, max_tokens: 8 });
  assert.equal(completion.object, "chat.completion");
  assert.equal(completion.choices[0].message.role, "assistant");
  assert.ok(completion.choices[0].message.content.length > 0);
  assert.ok(completion.usage.completion_tokens > 0 && completion.usage.completion_tokens <= 8);
});

test("embeddings: the SDK asks for base64 and decodes float vectors", async () => {
  const out = await client.embeddings.create({ model: process.env.SWITCHYARD_EMBED_MODEL, input: ["hello", "world"] });
  assert.equal(out.data.length, 2);
  for (const [i, item] of out.data.entries()) {
    assert.equal(item.index, i);
    assert.equal(item.embedding.length, Number(process.env.SWITCHYARD_EMBED_DIMENSIONS));
    assert.ok(item.embedding.every(Number.isFinite));
  }
  assert.notDeepEqual(out.data[0].embedding, out.data[1].embedding);
  assert.ok(out.usage.prompt_tokens > 0);
});

test("an unknown model is a NotFoundError (404, model_not_found)", async () => {
  await assert.rejects(client.chat.completions.create({ model: "no-such-model", messages }), (err) => {
    assert.ok(err instanceof NotFoundError && err instanceof APIError);
    assert.equal(err.status, 404);
    assert.equal(err.code, "model_not_found");
    assert.equal(err.param, "model");
    assert.ok(err.requestID);
    return true;
  });
});

test("a bad key is an AuthenticationError (401, invalid_api_key)", async () => {
  const bad = new OpenAI({ baseURL, apiKey: "sk-not-a-key", maxRetries: 0 });
  await assert.rejects(bad.models.list(), (err) => {
    assert.ok(err instanceof AuthenticationError);
    assert.equal(err.status, 401);
    assert.equal(err.code, "invalid_api_key");
    return true;
  });
});

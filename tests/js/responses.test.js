// The official openai npm package on the Responses API: SWITCHYARD_BASE_URL (…/v1), SWITCHYARD_KEY and
// SWITCHYARD_RESPONSES_MODEL come from tests/test_responses.py.
import { test } from "node:test";
import assert from "node:assert/strict";
import OpenAI, { NotFoundError } from "openai";

const client = new OpenAI({ baseURL: process.env.SWITCHYARD_BASE_URL, apiKey: process.env.SWITCHYARD_KEY,
                            maxRetries: 0, timeout: 120_000 });
const model = process.env.SWITCHYARD_RESPONSES_MODEL;
const input = () => `scenario=ok;nonce=${Math.random().toString(16).slice(2)}`;

test("stream: typed events numbered from 0, deltas joining into output_text", async () => {
  const stream = await client.responses.create({ model, input: input(), stream: true });
  const events = [];
  for await (const event of stream) events.push(event);
  assert.deepEqual(events.map((e) => e.sequence_number), events.map((_, i) => i));
  assert.equal(events[0].type, "response.created");
  const last = events.at(-1);
  assert.equal(last.type, "response.completed");
  const text = events.filter((e) => e.type === "response.output_text.delta").map((e) => e.delta).join("");
  assert.equal(text, last.response.output_text ?? last.response.output[0].content[0].text);
});

test("background, resume after N, chaining, delete then 404", async () => {
  const queued = await client.responses.create({ model, input: input(), background: true });
  assert.ok(["queued", "in_progress"].includes(queued.status));
  const rest = [];
  for await (const event of await client.responses.retrieve(queued.id, { stream: true, starting_after: 2 })) {
    rest.push(event);
  }
  assert.equal(rest[0].sequence_number, 3);
  assert.equal(rest.at(-1).type, "response.completed");
  const next = await client.responses.create({ model, input: input(), previous_response_id: queued.id });
  assert.equal(next.status, "completed");
  assert.ok(next.output_text.length > 0);
  await client.responses.delete(queued.id);
  await assert.rejects(client.responses.retrieve(queued.id), NotFoundError);
});

// Smoke test with the official Node `openai` SDK: a plain, a streamed and a tool-calling request.
// Run by tests/test_node_sdk.py with BASE_URL, API_KEY and MODEL set; exits non-zero on any failure.
import assert from "node:assert/strict";
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: process.env.API_KEY, maxRetries: 0 });
const model = process.env.MODEL;
const question = [{ role: "user", content: "What is the capital of France?" }];

const plain = await client.chat.completions.create({ model, messages: question, temperature: 0, max_tokens: 16 });
assert.equal(plain.object, "chat.completion");
assert.match(plain.choices[0].message.content, /Paris/);
assert.ok(plain.usage.total_tokens > plain.usage.prompt_tokens);

const stream = await client.chat.completions.create({
  model, messages: question, temperature: 0, max_tokens: 16, stream: true, stream_options: { include_usage: true },
});
let text = "";
let finish = null;
let usage = null;
for await (const chunk of stream) {
  if (chunk.usage) usage = chunk.usage;
  for (const choice of chunk.choices) {
    text += choice.delta.content ?? "";
    finish = choice.finish_reason ?? finish;
  }
}
assert.equal(text, plain.choices[0].message.content);
assert.equal(finish, plain.choices[0].finish_reason);
assert.equal(usage.completion_tokens, plain.usage.completion_tokens);

const tools = [{
  type: "function",
  function: {
    name: "get_weather",
    description: "Current weather for a city",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
}];
const called = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: "What is the weather in Paris?" }],
  tools,
  tool_choice: { type: "function", function: { name: "get_weather" } },
  temperature: 0,
  max_tokens: 40,
});
const call = called.choices[0].message.tool_calls[0];
assert.equal(called.choices[0].finish_reason, "tool_calls");
assert.equal(call.type, "function");
assert.equal(call.function.name, "get_weather");
assert.equal(typeof JSON.parse(call.function.arguments).city, "string");

console.log(JSON.stringify({ plain: plain.choices[0].message.content, streamed: text, tool_call: call.function }));

// Against a running gateway (tests/e2e/test_research_sdk.py starts it and sets the env): the documented example,
// both paginations, errors with their body.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { APIError, LLMResearchClient } from '../src/index.js';

const env = process.env;
const live = Boolean(env.LLMLAB_GATEWAY_URL && env.LLMLAB_API_KEY);
const suffix = Math.random().toString(16).slice(2, 10);

test('the documented TypeScript example', { skip: !live && 'no gateway (LLMLAB_GATEWAY_URL)' }, async () => {
  const client = new LLMResearchClient({
    apiKey: env.LLMLAB_API_KEY,
    baseUrl: env.LLMLAB_GATEWAY_URL,
  });

  // Create an experiment
  const experiment = await client.experiments.create({
    name: `My Experiment ${suffix}`,
    description: 'Testing GPT-4 on math problems',
    config: {
      modelIds: [env.LLMLAB_TEST_MODEL_ID],
      datasetIds: [env.LLMLAB_TEST_DATASET_ID],
      promptTemplateIds: [env.LLMLAB_TEST_TEMPLATE_ID],
      parameters: { temperature: 0.7, maxTokens: 8 },
      numSamples: 2,
    },
  });

  // Start and run
  await experiment.start();
  const run = await experiment.createRun({
    configOverrides: { parameters: { temperature: 0.5 } },
  });
  assert.equal(run.status, 'pending');
  assert.deepEqual(run.config.parameters, { temperature: 0.5, maxTokens: 8 });
  await run.waitForCompletion({ timeout: 600, pollInterval: 0.5 });
  assert.equal(run.status, 'completed');
  assert.equal(run.progress.completed, 2);

  // Get metrics
  const metrics = await experiment.getMetrics();
  console.log(`Accuracy: ${metrics.accuracy}`);
  assert.equal(typeof metrics.accuracy, 'number');
  assert.ok(metrics.accuracy >= 0 && metrics.accuracy <= 1);
  assert.equal(metrics.aggregate('accuracy').count, 1);
});

test('pagination both ways and errors as exceptions', { skip: !live && 'no gateway' }, async () => {
  const client = new LLMResearchClient({ apiKey: env.LLMLAB_API_KEY, baseUrl: env.LLMLAB_GATEWAY_URL });
  const ownerId = crypto.randomUUID();
  const made = [];
  for (let i = 0; i < 3; i += 1) made.push(await client.experiments.create({ name: `ts ${i}`, ownerId, tags: ['ts'] }));
  const byOffset = [];
  for await (const e of client.experiments.iterate({ pageSize: 2, ownerId, tags: ['ts'] })) byOffset.push(e.id);
  const byCursor = [];
  for await (const e of client.experiments.iterateCursor({ pageSize: 2, ownerId })) byCursor.push(e.id);
  const newestFirst = made.map((e) => e.id).reverse();
  assert.deepEqual(byOffset, newestFirst);
  assert.deepEqual(byCursor, newestFirst);

  await assert.rejects(client.experiments.create({ name: 'ts 0', ownerId }), (err) => {
    assert.ok(err instanceof APIError);
    assert.equal(err.status, 409);
    assert.equal(err.existingId, made[0].id);
    assert.ok(err.requestId);
    return true;
  });
  await assert.rejects(client.experiments.create({ name: 'x', config: { parameters: { temperature: 5 } } }), (err) => {
    assert.equal(err.status, 400);
    assert.equal(err.fields['config.parameters.temperature'], 'Temperature must be between 0 and 2');
    return true;
  });
  const t = await client.prompts.create({ name: 'ts', template: 'Hi {{userName}}' });
  assert.equal(await client.prompts.render(t.id, { userName: 'Ada' }), 'Hi Ada');
});

test('a 429 is retried after its Retry-After, then thrown with its body', { skip: !live && 'no gateway' }, async () => {
  const res = await fetch(`${env.LLMLAB_GATEWAY_URL}/v1/auth/api-keys`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${env.LLMLAB_API_KEY}` },
    body: JSON.stringify({ name: 'ts limited', rate_limit: { requests_per_minute: 1 } }),
  });
  const { api_key: apiKey } = await res.json();
  const waits = [];
  const client = new LLMResearchClient({
    apiKey, baseUrl: env.LLMLAB_GATEWAY_URL, maxRetries: 2, sleep: async (ms) => { waits.push(ms); },
  });
  await client.models.list({ limit: 1 });
  await assert.rejects(client.models.list({ limit: 1 }), (err) => {
    assert.equal(err.status, 429);
    assert.equal(err.error, 'rate_limit_exceeded');
    assert.ok(err.retryAfter > 0 && err.body.reset_at && err.requestId);
    assert.equal(waits.length, 2);
    assert.ok(Math.abs(waits[1] - Number(err.headers['retry-after']) * 1000) <= 1000);  // the same window
    return true;
  });
});

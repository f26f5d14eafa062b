// Runs without a gateway: key mapping and the 429 wait.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { camelKeys, retryDelayMs, snakeKeys } from '../src/index.js';

test('request keys go snake_case, user maps keep their keys', () => {
  assert.deepEqual(snakeKeys({ configOverrides: { parameters: { maxTokens: 8 } }, metadata: { myKey: 1 },
    variables: { userName: 'x' } }),
  { config_overrides: { parameters: { max_tokens: 8 } }, metadata: { myKey: 1 }, variables: { userName: 'x' } });
});

test('response keys come back camelCase, metric names unchanged', () => {
  assert.deepEqual(camelKeys({ page_info: { end_cursor: 'c' }, aggregated_metrics: { latency_p50_ms: { mean: 1 } } }),
    { pageInfo: { endCursor: 'c' }, aggregatedMetrics: { latency_p50_ms: { mean: 1 } } });
});

test('Retry-After decides the wait', () => {
  assert.equal(retryDelayMs(new Headers({ 'retry-after': '7' }), {}, 0), 7000);
  assert.equal(retryDelayMs(new Headers(), { retry_after: 2 }, 0), 2000);
  assert.equal(retryDelayMs(new Headers(), null, 2), 2000);
});

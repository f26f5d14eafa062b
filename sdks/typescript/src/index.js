// @llm-research-lab/sdk: the llmlab research API from JavaScript/TypeScript (docs/research.md). Plain ES modules on
// the platform's built-in fetch; the types are in index.d.ts. Request fields are written in camelCase and sent in the
// API's snake_case; responses come back in camelCase. The keys of user-defined maps (metadata, schema, template
// variables and their default values, metric maps) are passed through unchanged.

const OPAQUE = new Set(['metadata', 'schema', 'variables', 'default_values', 'defaultValues', 'metrics',
  'aggregated_metrics', 'aggregatedMetrics']);

export const toSnake = (s) => s.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
export const toCamel = (s) => s.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase());

function convert(value, keyFn, opaque = false) {
  if (Array.isArray(value)) return value.map((v) => convert(v, keyFn, opaque));
  if (value === null || typeof value !== 'object') return value;
  const out = {};
  for (const [k, v] of Object.entries(value)) {
    const key = opaque ? k : keyFn(k);
    out[key] = convert(v, keyFn, !opaque && OPAQUE.has(k));
  }
  return out;
}

export const snakeKeys = (v) => convert(v, toSnake);
export const camelKeys = (v) => convert(v, toCamel);

export class LLMResearchError extends Error {}

/** An error response: status, error (e.g. "validation_error"), message, requestId and the whole body. */
export class APIError extends LLMResearchError {
  constructor(status, body, headers) {
    const b = body && typeof body === 'object' ? body : { message: String(body ?? '') };
    super(`${status} ${b.error ?? ''}: ${b.message ?? `HTTP ${status}`}${b.request_id ? ` (${b.request_id})` : ''}`);
    this.name = 'APIError';
    this.status = status;
    this.body = b;
    this.headers = headers ?? {};
    this.error = b.error ?? '';
    this.requestId = b.request_id ?? null;
    this.details = b.details ?? null;
  }

  /** details.fields of a validation error: field name -> problem. */
  get fields() { return (this.details && this.details.fields) || {}; }
  get existingId() { return this.body.existing_id ?? null; }
  get requiredPermission() { return this.body.required_permission ?? null; }
  get retryAfter() {
    const v = this.body.retry_after ?? this.headers['retry-after'];
    return v === undefined || v === null ? null : Number(v);
  }
}

export class RunFailedError extends LLMResearchError {
  constructor(run) { super(`run ${run.id} failed: ${run.error}`); this.run = run; }
}

export class WaitTimeoutError extends LLMResearchError {}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const MAX_RETRY_WAIT_MS = 300_000;

/** Milliseconds before retrying a 429: Retry-After (seconds or an HTTP date), the body's retry_after, or backoff. */
export function retryDelayMs(headers, body, attempt) {
  const raw = headers.get ? headers.get('retry-after') : headers['retry-after'];
  if (raw) {
    const secs = Number(raw);
    if (Number.isFinite(secs)) return Math.min(MAX_RETRY_WAIT_MS, Math.max(0, secs * 1000));
    const when = Date.parse(raw);
    if (Number.isFinite(when)) return Math.min(MAX_RETRY_WAIT_MS, Math.max(0, when - Date.now()));
  }
  if (body && Number.isFinite(Number(body.retry_after))) return Math.min(MAX_RETRY_WAIT_MS, Number(body.retry_after) * 1000);
  return Math.min(MAX_RETRY_WAIT_MS, 500 * 2 ** attempt);
}

class Transport {
  constructor({ apiKey, accessToken, baseUrl, maxRetries = 3, fetch: fetchImpl, sleep: sleepImpl }) {
    this.baseUrl = (baseUrl ?? 'http://127.0.0.1:8080').replace(/\/+$/, '');
    this.maxRetries = maxRetries;
    this.fetch = fetchImpl ?? globalThis.fetch.bind(globalThis);
    this.sleep = sleepImpl ?? sleep;
    this.headers = { accept: 'application/json' };
    if (apiKey) this.headers['x-api-key'] = apiKey;
    if (accessToken) this.headers.authorization = `Bearer ${accessToken}`;
  }

  url(path, query) {
    const u = new URL(path.startsWith('http') ? path : this.baseUrl + path);
    for (const [k, v] of Object.entries(query ?? {})) {
      if (v === undefined || v === null) continue;
      u.searchParams.set(toSnake(k), Array.isArray(v) ? v.join(',') : String(v));
    }
    return u.toString();
  }

  async request(method, path, { body, query } = {}) {
    const init = { method, headers: { ...this.headers } };
    if (body !== undefined) {
      init.headers['content-type'] = 'application/json';
      init.body = JSON.stringify(snakeKeys(body));
    }
    const url = this.url(path, query);
    for (let attempt = 0; ; attempt += 1) {
      const res = await this.fetch(url, init);
      const text = await res.text();
      let parsed = null;
      try { parsed = text ? JSON.parse(text) : null; } catch { parsed = { message: text.slice(0, 500) }; }
      if (res.status === 429 && attempt < this.maxRetries) {
        await this.sleep(retryDelayMs(res.headers, parsed, attempt));
        continue;
      }
      if (res.status >= 400) throw new APIError(res.status, parsed, Object.fromEntries(res.headers.entries()));
      return parsed === null ? null : camelKeys(parsed);
    }
  }

  async putBytes(url, data, contentType) {
    const res = await this.fetch(url, { method: 'PUT', headers: { 'content-type': contentType }, body: data });
    const parsed = await res.json().catch(() => null);
    if (res.status >= 400) throw new APIError(res.status, parsed, Object.fromEntries(res.headers.entries()));
    return camelKeys(parsed);
  }
}

export class Run {
  constructor(client, data) { this._client = client; Object.assign(this, data); }

  _path() { return `/experiments/${this.experimentId}/runs/${this.id}`; }

  async refresh() { Object.assign(this, await this._client._t.request('GET', this._path())); return this; }

  get done() { return this.status === 'completed' || this.status === 'failed'; }

  /** Poll until completed or failed; RunFailedError when failed (unless raiseOnFailure is false). */
  async waitForCompletion({ timeout = 3600, pollInterval = 1, raiseOnFailure = true } = {}) {
    const deadline = Date.now() + timeout * 1000;
    while (!(await this.refresh()).done) {
      if (Date.now() >= deadline) throw new WaitTimeoutError(`run ${this.id} is still ${this.status} after ${timeout} s`);
      await sleep(Math.min(pollInterval * 1000, Math.max(0, deadline - Date.now())));
    }
    if (this.status === 'failed' && raiseOnFailure) throw new RunFailedError(this);
    return this;
  }

  async complete() { return new Run(this._client, await this._client._t.request('POST', `${this._path()}/complete`, { body: {} })); }

  async fail(error) { return new Run(this._client, await this._client._t.request('POST', `${this._path()}/fail`, { body: { error } })); }
}

/** GET /experiments/{id}/metrics; each aggregated metric's mean is also a property (metrics.accuracy). */
export class ExperimentMetrics {
  constructor(data) {
    Object.assign(this, data);
    for (const [name, agg] of Object.entries(this.aggregatedMetrics ?? {})) {
      for (const key of new Set([name, toCamel(name)])) {
        if (!(key in this)) Object.defineProperty(this, key, { value: agg.mean, enumerable: false });
      }
    }
  }

  aggregate(name) { return this.aggregatedMetrics[name]; }
}

export class Experiment {
  constructor(client, data) { this._client = client; Object.assign(this, data); }

  async refresh() { Object.assign(this, await this._client._t.request('GET', `/experiments/${this.id}`)); return this; }

  async update(fields) {
    Object.assign(this, await this._client._t.request('PUT', `/experiments/${this.id}`, { body: fields }));
    return this;
  }

  async delete() { await this._client._t.request('DELETE', `/experiments/${this.id}`); }

  /** POST /experiments/{id}/start: `running`, or an APIError 422 naming what is missing. */
  async start() {
    const r = await this._client._t.request('POST', `/experiments/${this.id}/start`, { body: {} });
    this.status = r.status;
    this.startedAt = r.startedAt;
    return this;
  }

  async createRun({ configOverrides } = {}) {
    const body = configOverrides === undefined ? {} : { configOverrides };
    return new Run(this._client, await this._client._t.request('POST', `/experiments/${this.id}/runs`, { body }));
  }

  async getRun(runId) {
    return new Run(this._client, await this._client._t.request('GET', `/experiments/${this.id}/runs/${runId}`));
  }

  async* runs({ pageSize = 20 } = {}) {
    for await (const item of this._client._offsetPages(`/experiments/${this.id}/runs`, pageSize, {})) {
      yield new Run(this._client, item);
    }
  }

  async getMetrics() {
    return new ExperimentMetrics(await this._client._t.request('GET', `/experiments/${this.id}/metrics`));
  }
}

class Experiments {
  constructor(client) { this._c = client; }

  async create(body) { return new Experiment(this._c, await this._c._t.request('POST', '/experiments', { body })); }

  async get(id) { return new Experiment(this._c, await this._c._t.request('GET', `/experiments/${id}`)); }

  async update(id, fields) {
    return new Experiment(this._c, await this._c._t.request('PUT', `/experiments/${id}`, { body: fields }));
  }

  async delete(id) { await this._c._t.request('DELETE', `/experiments/${id}`); }

  /** One page as the API answers it: offset (pagination, links) or cursor (`after`: pageInfo). */
  async list(query = {}) {
    const page = await this._c._t.request('GET', '/experiments', { query });
    return { ...page, data: page.data.map((x) => new Experiment(this._c, x)) };
  }

  /** Every matching experiment, newest first, following offset pages (links.next). */
  async* iterate({ pageSize = 20, ...filters } = {}) {
    for await (const item of this._c._offsetPages('/experiments', pageSize, filters)) yield new Experiment(this._c, item);
  }

  /** Every matching experiment, newest first, following cursors (pageInfo.endCursor). */
  async* iterateCursor({ pageSize = 20, ...filters } = {}) {
    let after;
    for (;;) {
      const page = await this.list({ ...filters, limit: pageSize, after });
      yield* page.data;
      if (!page.pageInfo?.hasNextPage || !page.pageInfo.endCursor) return;
      after = page.pageInfo.endCursor;
    }
  }
}

class Simple {
  constructor(client, path) { this._c = client; this._path = path; }

  async create(body) { return this._c._t.request('POST', this._path, { body }); }

  async get(id) { return this._c._t.request('GET', `${this._path}/${id}`); }

  async list(query = {}) { return this._c._t.request('GET', this._path, { query }); }

  async* iterate({ pageSize = 20, ...filters } = {}) { yield* this._c._offsetPages(this._path, pageSize, filters); }
}

class Datasets extends Simple {
  constructor(client) { super(client, '/datasets'); }

  /** Get a signed upload URL and PUT the file to it; the upload's report (sizeBytes, rowCount). */
  async upload(datasetId, data, { filename = 'data.jsonl', contentType = 'application/jsonl' } = {}) {
    const slot = await this._c._t.request('POST', `/datasets/${datasetId}/upload`, { body: { filename, contentType } });
    return this._c._t.putBytes(slot.uploadUrl, data, contentType);
  }

  async downloadUrl(datasetId) { return this._c._t.request('GET', `/datasets/${datasetId}/download`); }

  async createVersion(datasetId, body) { return this._c._t.request('POST', `/datasets/${datasetId}/versions`, { body }); }
}

class Prompts extends Simple {
  constructor(client) { super(client, '/prompts'); }

  async render(id, variables = {}) {
    return (await this._c._t.request('POST', `/prompts/${id}/render`, { body: { variables } })).rendered;
  }
}

class Models extends Simple {
  constructor(client) { super(client, '/models'); }

  async update(id, fields) { return this._c._t.request('PUT', `/models/${id}`, { body: fields }); }
}

export class LLMResearchClient {
  /** apiKey is sent as X-API-Key, accessToken (a JWT) as a Bearer token; a 429 is retried up to maxRetries times
   * after the Retry-After the API gives. */
  constructor(options = {}) {
    this._t = new Transport(options);
    this.experiments = new Experiments(this);
    this.models = new Models(this);
    this.datasets = new Datasets(this);
    this.prompts = new Prompts(this);
    this.evaluations = new Simple(this, '/evaluations');
  }

  async* _offsetPages(path, pageSize, filters) {
    let page = await this._t.request('GET', path, { query: { ...filters, limit: pageSize, offset: 0 } });
    for (;;) {
      yield* page.data;
      const next = page.links?.next;
      if (!next) return;
      page = await this._t.request('GET', next);
    }
  }
}

export default LLMResearchClient;

// Types of @llm-research-lab/sdk (src/index.js). Fields are camelCase; the SDK maps them to the API's snake_case.

export interface ClientOptions {
  apiKey?: string;
  accessToken?: string;
  baseUrl?: string;
  /** Retries of a 429 after its Retry-After (default 3). */
  maxRetries?: number;
  fetch?: typeof fetch;
  sleep?: (ms: number) => Promise<void>;
}

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export interface Parameters {
  temperature?: number;
  topP?: number;
  topK?: number;
  maxTokens?: number;
  frequencyPenalty?: number;
  presencePenalty?: number;
}

export type MetricName = 'accuracy' | 'exact_match' | 'bleu' | 'rouge' | 'latency' | 'tokens_per_second'
  | 'total_tokens' | 'cost_usd';

export interface ExperimentConfig {
  modelIds?: string[];
  datasetIds?: string[];
  promptTemplateIds?: string[];
  parameters?: Parameters;
  evaluationMetrics?: MetricName[];
  numSamples?: number;
  randomSeed?: number;
  answerField?: string;
  [key: string]: unknown;
}

export interface CreateExperiment {
  name: string;
  description?: string;
  hypothesis?: string;
  ownerId?: string;
  collaborators?: string[];
  tags?: string[];
  config?: ExperimentConfig;
  metadata?: Record<string, Json>;
}

export interface ExperimentData {
  id: string;
  name: string;
  description: string;
  hypothesis: string;
  ownerId: string;
  collaborators: string[];
  tags: string[];
  status: 'draft' | 'running' | 'completed' | 'failed';
  config: ExperimentConfig;
  createdAt: string;
  updatedAt: string;
  archivedAt: string | null;
  metadata: Record<string, Json>;
  startedAt?: string;
}

export interface RunProgress { total: number; completed: number; failed: number }

export interface RunData {
  id: string;
  experimentId: string;
  status: 'pending' | 'running' | 'completed' | 'failed';
  config: ExperimentConfig;
  startedAt: string;
  completedAt: string | null;
  error: string | null;
  progress: RunProgress;
  outputs: Record<string, unknown> | null;
}

export interface MetricAggregate { mean: number; std: number; min: number; max: number; count: number }

export interface OffsetPagination { total: number; limit: number; offset: number; hasMore: boolean }
export interface PageLinks { self: string; next: string | null; first: string; last: string }
export interface PageInfo { hasNextPage: boolean; hasPreviousPage: boolean; startCursor: string; endCursor: string }

export interface Page<T> {
  data: T[];
  pagination?: OffsetPagination;
  links?: PageLinks;
  pageInfo?: PageInfo;
}

export interface ListExperiments {
  limit?: number;
  offset?: number;
  after?: string;
  status?: ExperimentData['status'];
  ownerId?: string;
  tags?: string[];
}

export declare class LLMResearchError extends Error {}

export declare class APIError extends LLMResearchError {
  readonly status: number;
  readonly body: Record<string, any>;
  readonly headers: Record<string, string>;
  readonly error: string;
  readonly requestId: string | null;
  readonly details: Record<string, any> | null;
  readonly fields: Record<string, string>;
  readonly existingId: string | null;
  readonly requiredPermission: string | null;
  readonly retryAfter: number | null;
}

export declare class RunFailedError extends LLMResearchError { readonly run: Run }
export declare class WaitTimeoutError extends LLMResearchError {}

export declare class Run implements RunData {
  id: string;
  experimentId: string;
  status: RunData['status'];
  config: ExperimentConfig;
  startedAt: string;
  completedAt: string | null;
  error: string | null;
  progress: RunProgress;
  outputs: Record<string, unknown> | null;
  readonly done: boolean;
  refresh(): Promise<Run>;
  waitForCompletion(options?: { timeout?: number; pollInterval?: number; raiseOnFailure?: boolean }): Promise<Run>;
  complete(): Promise<Run>;
  fail(error: string): Promise<Run>;
}

export declare class ExperimentMetrics {
  experimentId: string;
  aggregatedMetrics: Record<string, MetricAggregate>;
  runs: { runId: string; metrics: Record<string, number> }[];
  /** Each aggregated metric's mean, by its API name and its camelCase name (metrics.accuracy). */
  readonly [metric: string]: unknown;
  aggregate(name: string): MetricAggregate;
  readonly accuracy?: number;
}

export declare class Experiment implements ExperimentData {
  id: string;
  name: string;
  description: string;
  hypothesis: string;
  ownerId: string;
  collaborators: string[];
  tags: string[];
  status: ExperimentData['status'];
  config: ExperimentConfig;
  createdAt: string;
  updatedAt: string;
  archivedAt: string | null;
  metadata: Record<string, Json>;
  startedAt?: string;
  refresh(): Promise<Experiment>;
  update(fields: Partial<CreateExperiment>): Promise<Experiment>;
  delete(): Promise<void>;
  start(): Promise<Experiment>;
  createRun(options?: { configOverrides?: Partial<ExperimentConfig> }): Promise<Run>;
  getRun(runId: string): Promise<Run>;
  runs(options?: { pageSize?: number }): AsyncGenerator<Run>;
  getMetrics(): Promise<ExperimentMetrics>;
}

declare class Experiments {
  create(body: CreateExperiment): Promise<Experiment>;
  get(id: string): Promise<Experiment>;
  update(id: string, fields: Partial<CreateExperiment>): Promise<Experiment>;
  delete(id: string): Promise<void>;
  list(query?: ListExperiments): Promise<Page<Experiment>>;
  iterate(options?: Omit<ListExperiments, 'limit' | 'offset' | 'after'> & { pageSize?: number }): AsyncGenerator<Experiment>;
  iterateCursor(options?: Omit<ListExperiments, 'limit' | 'offset' | 'after'> & { pageSize?: number }): AsyncGenerator<Experiment>;
}

declare class Resource<T = Record<string, any>> {
  create(body: Record<string, unknown>): Promise<T>;
  get(id: string): Promise<T>;
  list(query?: { limit?: number; offset?: number; [key: string]: unknown }): Promise<Page<T>>;
  iterate(options?: { pageSize?: number; [key: string]: unknown }): AsyncGenerator<T>;
}

export interface PromptTemplate {
  id: string; name: string; description: string; template: string; variables: string[];
  defaultValues: Record<string, Json>; tags: string[]; metadata: Record<string, Json>; createdAt: string; updatedAt: string;
}

export interface Dataset {
  id: string; name: string; description: string; format: string; schema: Record<string, Json> | null; tags: string[];
  metadata: Record<string, Json>; sizeBytes: number | null; rowCount: number | null; createdAt: string; updatedAt: string;
}

export interface Evaluation {
  id: string; experimentId: string; runId: string; metrics: Record<string, number>; metadata: Record<string, Json>;
  createdAt: string;
}

declare class Datasets extends Resource<Dataset> {
  upload(datasetId: string, data: Uint8Array | string, options?: { filename?: string; contentType?: string }):
    Promise<{ target: string; targetId: string; filename: string; contentType: string; sizeBytes: number; rowCount: number | null }>;
  downloadUrl(datasetId: string): Promise<{ downloadUrl: string; expiresAt: string }>;
  createVersion(datasetId: string, body: { version: string; description?: string; changelog?: string }): Promise<Record<string, any>>;
}

declare class Prompts extends Resource<PromptTemplate> {
  render(id: string, variables?: Record<string, Json>): Promise<string>;
}

declare class Models extends Resource<Record<string, any>> {
  update(id: string, fields: Record<string, unknown>): Promise<Record<string, any>>;
}

export declare class LLMResearchClient {
  constructor(options?: ClientOptions);
  readonly experiments: Experiments;
  readonly models: Models;
  readonly datasets: Datasets;
  readonly prompts: Prompts;
  readonly evaluations: Resource<Evaluation>;
}

export declare function retryDelayMs(headers: Headers | Record<string, string>, body: unknown, attempt: number): number;
export declare function snakeKeys<T>(value: T): unknown;
export declare function camelKeys<T>(value: T): unknown;
export declare function toSnake(s: string): string;
export declare function toCamel(s: string): string;
export default LLMResearchClient;

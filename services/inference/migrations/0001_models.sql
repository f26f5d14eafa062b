-- The one model registry behind every family's model shape (API_MAP "Decisions"): the lab family (seeds 000, 002)
-- and the serving/native families (003, 004) address a model by its slug `id`, the research family (001) by `uuid`.
CREATE TABLE models (
    id               text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9._/-]{0,127}$'),
    uuid             uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    name             text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 255),
    provider         text NOT NULL DEFAULT 'local' CHECK (provider <> ''),
    base_model       text NOT NULL DEFAULT '',
    -- canonical lower-case status; each family renders its own spelling ("active", "AVAILABLE", ...)
    status           text NOT NULL DEFAULT 'available'
                     CHECK (status IN ('available', 'loading', 'unavailable', 'deprecated')),
    description      text NOT NULL DEFAULT '',
    model_size       text NOT NULL DEFAULT '',               -- parameter count as people write it: "135M", "7B"
    size_class       text NOT NULL DEFAULT 'small'           -- seed 003's `size` filter
                     CHECK (size_class IN ('small', 'medium', 'large', 'xl')),
    parameter_count  bigint CHECK (parameter_count > 0),
    capabilities     text[] NOT NULL DEFAULT '{text-generation}',
    languages        text[] NOT NULL DEFAULT '{}',
    category         text NOT NULL DEFAULT 'text-generation'
                     CHECK (category IN ('text-generation', 'chat', 'embedding')),
    owned_by         text NOT NULL DEFAULT 'llmlab',
    -- blended USD per token (seed 000) and the split prices (seed 003 `pricing`)
    cost_per_token         double precision NOT NULL DEFAULT 0 CHECK (cost_per_token >= 0),
    input_cost_per_token   double precision NOT NULL DEFAULT 0 CHECK (input_cost_per_token >= 0),
    output_cost_per_token  double precision NOT NULL DEFAULT 0 CHECK (output_cost_per_token >= 0),
    max_tokens       integer NOT NULL DEFAULT 2048 CHECK (max_tokens > 0),
    context_window   integer NOT NULL DEFAULT 2048 CHECK (context_window > 0),
    -- seed 001: provider's identifier, version label and free-form config
    model_identifier text NOT NULL DEFAULT '',
    version          text NOT NULL DEFAULT '',
    config           jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(config) = 'object'),
    -- seed 002: default generation parameters (null when none)
    parameters       jsonb CHECK (parameters IS NULL OR jsonb_typeof(parameters) = 'object'),
    -- seed 004: weight format ("onnx", "gguf", "remote") and stored precision
    format           text NOT NULL DEFAULT 'onnx',
    quantization     text,
    -- how generation reaches the model. backend_config holds no secret: triton {url, model_name};
    -- openai {base_url, api_key_env (the NAME of the environment variable holding the key), model}
    backend          text NOT NULL DEFAULT 'onnx' CHECK (backend IN ('onnx', 'triton', 'openai')),
    backend_config   jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(backend_config) = 'object'),
    -- the import manifest (llmlab-model.json) of a local artifact; null for remote models
    artifact         jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX models_provider_idx ON models (provider);
CREATE INDEX models_created_idx ON models (created_at, id);

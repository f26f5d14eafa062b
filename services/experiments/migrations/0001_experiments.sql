-- One store for the lab view (numeric id, seed 000) and the research view (UUID, seed 001).
CREATE TABLE experiments (
    id               integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uuid             uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    name             text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 255),
    description      text NOT NULL DEFAULT '',
    type             text NOT NULL DEFAULT 'single' CHECK (type IN ('single', 'batch')),
    status           text NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'running', 'completed', 'failed')),
    model            text NOT NULL,
    prompt           text NOT NULL,
    parameters       jsonb NOT NULL DEFAULT '{}',
    parameter_ranges jsonb,
    response_count   integer NOT NULL DEFAULT 1 CHECK (response_count BETWEEN 1 AND 100),
    tags             text[] NOT NULL DEFAULT '{}',
    favorited        boolean NOT NULL DEFAULT false,
    archived         boolean NOT NULL DEFAULT false,
    owner_id         text,
    config           jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX experiments_created_at_idx ON experiments (created_at DESC, id DESC);
CREATE INDEX experiments_status_idx ON experiments (status);
CREATE INDEX experiments_model_idx ON experiments (model);
CREATE INDEX experiments_tags_idx ON experiments USING gin (tags);

-- Generated responses of an experiment; quality is filled in when the metrics service scores them.
CREATE TABLE responses (
    id                integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    experiment_id     integer NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    content           text NOT NULL,
    model             text NOT NULL DEFAULT '',
    parameters        jsonb NOT NULL DEFAULT '{}',
    quality_metrics   jsonb,
    overall_quality   double precision,
    response_time_ms  integer NOT NULL DEFAULT 0 CHECK (response_time_ms >= 0),
    prompt_tokens     integer NOT NULL DEFAULT 0,
    token_count       integer NOT NULL DEFAULT 0,
    cost              double precision NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX responses_experiment_idx ON responses (experiment_id, id);

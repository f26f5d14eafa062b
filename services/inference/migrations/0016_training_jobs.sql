-- Training jobs (docs/training.md): one record behind both families, the lab's `/api/training` (numeric `id`,
-- upper-case statuses) and OpenAI's `/v1/fine_tuning/jobs` ("ftjob-..." `public_id`, lower-case statuses).
-- `status` is canonical lower case; each family renders its own spelling.
CREATE TABLE training_jobs (
    id               serial PRIMARY KEY,
    public_id        text NOT NULL UNIQUE,
    family           text NOT NULL DEFAULT 'lab' CHECK (family IN ('lab', 'openai')),
    owner_id         text NOT NULL DEFAULT '',
    model_id         text NOT NULL,
    job_name         text NOT NULL CHECK (char_length(job_name) BETWEEN 1 AND 255),
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'validating_files', 'queued', 'running', 'paused', 'succeeded',
                                       'failed', 'cancelled')),
    epochs           integer NOT NULL CHECK (epochs BETWEEN 1 AND 50),
    learning_rate    double precision NOT NULL CHECK (learning_rate > 0 AND learning_rate <= 1),
    batch_size       integer NOT NULL CHECK (batch_size BETWEEN 1 AND 256),
    lora_r           integer NOT NULL CHECK (lora_r BETWEEN 1 AND 256),
    lora_alpha       integer NOT NULL CHECK (lora_alpha BETWEEN 1 AND 1024),
    lora_dropout     double precision NOT NULL CHECK (lora_dropout >= 0 AND lora_dropout < 1),
    seed             integer NOT NULL,
    max_length       integer NOT NULL DEFAULT 256 CHECK (max_length BETWEEN 16 AND 8192),
    suffix           text,
    training_file    text,                       -- files service id; null: the built-in instruction set
    validation_file  text,
    -- the validated examples as the trainer reads them (JSONL of {"messages": [...]}), staged at creation
    training_data    text NOT NULL,
    validation_data  text,
    progress         double precision NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    current_epoch    integer NOT NULL DEFAULT 0,
    current_loss     double precision,
    step             integer NOT NULL DEFAULT 0,
    total_steps      integer,
    trained_tokens   bigint,
    logs             text NOT NULL DEFAULT '',
    metrics          jsonb NOT NULL DEFAULT '[]',   -- the loss curve: [{step, epoch, train_loss, valid_loss}]
    error            jsonb,                         -- {code, message, param} when failed
    fine_tuned_model text,                          -- the registered model's id once succeeded
    result_files     text[] NOT NULL DEFAULT '{}',  -- files service ids: the metrics CSV
    attempt          integer NOT NULL DEFAULT 0,    -- bumped by each worker that takes the job
    worker           text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    completed_at     timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX training_jobs_created_idx ON training_jobs (created_at DESC, id DESC);

-- What happened to a job, in order: OpenAI's `GET .../events` and the lab's `logs`.
CREATE TABLE training_job_events (
    id         bigserial PRIMARY KEY,
    job_id     integer NOT NULL REFERENCES training_jobs (id) ON DELETE CASCADE,
    level      text NOT NULL DEFAULT 'info' CHECK (level IN ('info', 'warn', 'error')),
    type       text NOT NULL DEFAULT 'message' CHECK (type IN ('message', 'metrics')),
    message    text NOT NULL,
    data       jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX training_job_events_job_idx ON training_job_events (job_id, id);

-- Fine-tuned models are named as OpenAI names them, `ft:<base>:<suffix>:<job id>`: model slugs may hold ':'.
ALTER TABLE models DROP CONSTRAINT models_id_check;
ALTER TABLE models ADD CONSTRAINT models_id_check CHECK (id ~ '^[a-z0-9][a-z0-9._/:-]{0,127}$');

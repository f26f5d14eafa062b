-- The analytics read model (docs/analytics.md): built only from the event streams, never from another service's
-- tables. Facts are keyed by their source ids (upserts); rollups are sums that each fact adds to once, in the same
-- transaction that records the event id in processed_events, so a redelivered event changes nothing.

-- Every stream message applied, by stream and message id (the at-least-once dedupe).
CREATE TABLE processed_events (
    stream   text NOT NULL,
    event_id text NOT NULL,
    PRIMARY KEY (stream, event_id)
);

-- One lab response: the halves of response.created (parameters, cost, time) and response.scored (metrics).
-- `counted` is what this response has added to the quality rollups so far (NULL: nothing), so that a re-score
-- replaces its contribution instead of adding a second one.
CREATE TABLE responses (
    response_id       bigint PRIMARY KEY,
    experiment_id     bigint,
    experiment_type   text NOT NULL DEFAULT 'single',
    model             text NOT NULL DEFAULT '',
    principal         text NOT NULL DEFAULT '',
    parameters        jsonb,
    cost              double precision,
    response_time_ms  double precision,
    created_at        timestamptz,
    metrics           jsonb,
    counted           jsonb
);

-- Experiments as their experiment.* events describe them.
CREATE TABLE experiments (
    experiment_id bigint PRIMARY KEY,
    name          text NOT NULL DEFAULT '',
    type          text NOT NULL DEFAULT 'single',
    model         text NOT NULL DEFAULT '',
    principal     text NOT NULL DEFAULT '',
    status        text NOT NULL DEFAULT 'draft',
    created_at    timestamptz,
    updated_at    timestamptz
);
CREATE INDEX experiments_created_idx ON experiments (created_at);

-- The dashboard's recent activity: one row per experiment or batch event.
CREATE TABLE activity (
    stream        text NOT NULL,
    event_id      text NOT NULL,
    type          text NOT NULL,
    experiment_id bigint NOT NULL,
    name          text NOT NULL DEFAULT '',
    model         text NOT NULL DEFAULT '',
    experiment_type text NOT NULL DEFAULT 'single',
    quality       double precision,
    at            timestamptz NOT NULL,
    PRIMARY KEY (stream, event_id)
);
CREATE INDEX activity_at_idx ON activity (at DESC);

-- Per UTC day x model x experiment type: generations, failures, cost, time, scored count and quality sums.
CREATE TABLE daily_model (
    day             date NOT NULL,
    model           text NOT NULL,
    experiment_type text NOT NULL,
    responses       bigint NOT NULL DEFAULT 0,
    failures        bigint NOT NULL DEFAULT 0,
    cost            double precision NOT NULL DEFAULT 0,
    time_ms         double precision NOT NULL DEFAULT 0,
    scored          bigint NOT NULL DEFAULT 0,
    quality_sum     double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (day, model, experiment_type)
);

-- Which experiments had responses on a day (experiment counts are distinct counts over this).
CREATE TABLE daily_experiments (
    day             date NOT NULL,
    model           text NOT NULL,
    experiment_type text NOT NULL,
    experiment_id   bigint NOT NULL,
    PRIMARY KEY (day, model, experiment_type, experiment_id)
);

-- Per day x model x experiment type x parameter bucket (docs/analytics.md "Parameter buckets").
CREATE TABLE daily_combos (
    day               date NOT NULL,
    model             text NOT NULL,
    experiment_type   text NOT NULL,
    temperature       double precision NOT NULL,
    top_p             double precision NOT NULL,
    max_tokens        integer NOT NULL,
    frequency_penalty double precision NOT NULL,
    presence_penalty  double precision NOT NULL,
    responses         bigint NOT NULL DEFAULT 0,
    cost              double precision NOT NULL DEFAULT 0,
    time_ms           double precision NOT NULL DEFAULT 0,
    scored            bigint NOT NULL DEFAULT 0,
    quality_sum       double precision NOT NULL DEFAULT 0,
    quality_sq        double precision NOT NULL DEFAULT 0,
    creativity_sum    double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (day, model, experiment_type, temperature, top_p, max_tokens, frequency_penalty, presence_penalty)
);

-- Experiments per parameter bucket (based_on_experiments is a distinct count over this).
CREATE TABLE combo_experiments (
    model             text NOT NULL,
    temperature       double precision NOT NULL,
    top_p             double precision NOT NULL,
    max_tokens        integer NOT NULL,
    frequency_penalty double precision NOT NULL,
    presence_penalty  double precision NOT NULL,
    experiment_id     bigint NOT NULL,
    PRIMARY KEY (model, temperature, top_p, max_tokens, frequency_penalty, presence_penalty, experiment_id)
);

-- Sufficient statistics of Pearson's r per day x model x experiment type x (x, y) pair of a parameter or metric
-- with a metric: n, sums, sums of squares and of products. r and its p-value follow exactly from the sums, and
-- sums merge across days and models.
CREATE TABLE daily_pairs (
    day             date NOT NULL,
    model           text NOT NULL,
    experiment_type text NOT NULL,
    x               text NOT NULL,
    y               text NOT NULL,
    n               bigint NOT NULL DEFAULT 0,
    sx              double precision NOT NULL DEFAULT 0,
    sy              double precision NOT NULL DEFAULT 0,
    sxx             double precision NOT NULL DEFAULT 0,
    syy             double precision NOT NULL DEFAULT 0,
    sxy             double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (day, model, experiment_type, x, y)
);

-- The usage ledger (usage.recorded, every API family): per UTC hour x user x API key x model.
CREATE TABLE usage_hourly (
    hour              timestamptz NOT NULL,
    user_id           text NOT NULL,
    key_id            text NOT NULL,
    model             text NOT NULL,
    requests          bigint NOT NULL DEFAULT 0,
    prompt_tokens     bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    cost              double precision NOT NULL DEFAULT 0,
    latency_ms        double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, user_id, key_id, model)
);
CREATE INDEX usage_hourly_user_idx ON usage_hourly (user_id, hour);

-- Latency histogram of the same buckets in log-spaced bins (a mergeable sketch, docs/analytics.md "Percentiles").
CREATE TABLE usage_latency (
    hour    timestamptz NOT NULL,
    user_id text NOT NULL,
    model   text NOT NULL,
    bin     integer NOT NULL,
    count   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, user_id, model, bin)
);

-- Minutes in which a generation failed with a server-side error (uptime of /api/system/stats).
CREATE TABLE failure_minutes (
    minute timestamptz PRIMARY KEY,
    failures bigint NOT NULL DEFAULT 0
);

-- Training/fine-tuning jobs and evaluations by their latest state (/api/statistics).
CREATE TABLE jobs (
    kind       text NOT NULL,
    job_id     text NOT NULL,
    status     text NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (kind, job_id)
);

-- OpenAI batches (docs/batches.md): one row per batch, one row per input line. A line's result is written once
-- (`result IS NULL` guards the UPDATE), so a chunk re-run after a worker died cannot write a line twice, and the
-- request counts move in the same statement as the result they count.
CREATE TABLE batches (
    id                 text PRIMARY KEY,
    owner_id           text NOT NULL,
    principal          text NOT NULL DEFAULT '',   -- the creator's x-llmlab-principal: its lines run (and bill) as it
    endpoint           text NOT NULL,
    input_file_id      text NOT NULL,
    completion_window  text NOT NULL DEFAULT '24h',
    status             text NOT NULL DEFAULT 'validating'
                       CHECK (status IN ('validating', 'failed', 'in_progress', 'finalizing', 'completed',
                                         'expired', 'cancelling', 'cancelled')),
    metadata           jsonb NOT NULL DEFAULT '{}',
    errors             jsonb,                      -- {object: "list", data: [{code, message, param, line}]}
    output_file_id     text,
    error_file_id      text,
    total              integer NOT NULL DEFAULT 0,
    completed          integer NOT NULL DEFAULT 0,
    failed             integer NOT NULL DEFAULT 0,
    chunks             integer NOT NULL DEFAULT 0,  -- work units queued for the workers
    attempt            integer NOT NULL DEFAULT 0,  -- fencing of the validating and finalizing phases
    lease_until        timestamptz,                 -- a finalizer's claim on the batch
    sealed             boolean NOT NULL DEFAULT false,  -- set by the finalizer: no line result is written after
    created_at         timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL,
    in_progress_at     timestamptz,
    finalizing_at      timestamptz,
    completed_at       timestamptz,
    failed_at          timestamptz,
    expired_at         timestamptz,
    cancelling_at      timestamptz,
    cancelled_at       timestamptz
);
CREATE INDEX batches_owner_created ON batches (owner_id, created_at DESC, id DESC);
CREATE INDEX batches_open ON batches (status) WHERE status IN ('validating', 'in_progress', 'finalizing',
                                                               'cancelling');

CREATE TABLE batch_lines (
    batch_id     text NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    line_index   integer NOT NULL,                  -- 0-based position among the file's non-blank lines
    chunk        integer NOT NULL,
    custom_id    text,
    request      jsonb,                             -- the line's body; null when the line itself is invalid
    -- null until the line has run; then its output or error line (without the request id prefix)
    outcome      text CHECK (outcome IN ('completed', 'failed')),
    result       jsonb,
    started_at   timestamptz,                       -- renewed while a worker runs the line (cancel waits for it)
    finished_at  timestamptz,
    PRIMARY KEY (batch_id, line_index)
);
CREATE INDEX batch_lines_chunk ON batch_lines (batch_id, chunk) WHERE outcome IS NULL;

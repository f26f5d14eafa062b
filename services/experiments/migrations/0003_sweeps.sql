-- Parameter sweeps (batch experiments, docs/sweeps.md): a sweep is an experiment of type 'batch' plus this row; its
-- responses are ordinary responses keyed by (experiment, combination, iteration), written at most once.
ALTER TABLE experiments DROP CONSTRAINT experiments_status_check;
ALTER TABLE experiments ADD CONSTRAINT experiments_status_check
    CHECK (status IN ('draft', 'queued', 'running', 'completed', 'failed', 'cancelled'));

ALTER TABLE responses
    ADD COLUMN sweep_combination integer,
    ADD COLUMN sweep_iteration   integer,
    ADD COLUMN seed              bigint;

-- The idempotency key of a sweep's responses: a redelivered or duplicated work item inserts nothing twice.
CREATE UNIQUE INDEX responses_sweep_key ON responses (experiment_id, sweep_combination, sweep_iteration)
    WHERE sweep_combination IS NOT NULL;

CREATE TABLE sweeps (
    experiment_id             integer PRIMARY KEY REFERENCES experiments (id) ON DELETE CASCADE,
    status                    text NOT NULL DEFAULT 'queued'
                              CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    priority                  text NOT NULL CHECK (priority IN ('low', 'normal', 'high')),
    grid                      jsonb NOT NULL,          -- the request's parameter_grid, as given
    combinations              jsonb NOT NULL,          -- every combination's full parameters, in grid order
    responses_per_combination integer NOT NULL CHECK (responses_per_combination BETWEEN 1 AND 100),
    seed                      bigint,                  -- base of the per-response seeds (default: the id)
    owner_id                  text NOT NULL DEFAULT '',
    estimated_cost            double precision NOT NULL DEFAULT 0,
    estimated_seconds         double precision NOT NULL DEFAULT 0,
    enqueued                  boolean NOT NULL DEFAULT false,  -- its work items are on the queue
    current_combination       integer,
    dead_lettered             integer NOT NULL DEFAULT 0,
    error                     text,
    created_at                timestamptz NOT NULL DEFAULT now(),
    started_at                timestamptz,
    completed_at              timestamptz
);

CREATE INDEX sweeps_active_idx ON sweeps (created_at) WHERE status IN ('queued', 'running');
CREATE INDEX sweeps_created_idx ON sweeps (created_at DESC, experiment_id DESC);

-- The research view of the experiments store (docs/research.md): what seed-001-style clients read and write beside the
-- lab columns, the runs of an experiment with the generations the platform executed for them, and prompt templates.
ALTER TABLE experiments
    ALTER COLUMN model SET DEFAULT '',
    ALTER COLUMN prompt SET DEFAULT '',
    ADD COLUMN hypothesis    text NOT NULL DEFAULT '',
    ADD COLUMN collaborators text[] NOT NULL DEFAULT '{}',
    ADD COLUMN metadata      jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN archived_at   timestamptz,
    ADD COLUMN started_at    timestamptz;

-- archived_at follows the lab's `archived` flag whichever view writes it.
CREATE FUNCTION experiments_archived_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.archived AND NEW.archived_at IS NULL THEN
        NEW.archived_at := now();
    ELSIF NOT NEW.archived THEN
        NEW.archived_at := NULL;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER experiments_archived_at BEFORE INSERT OR UPDATE OF archived ON experiments
    FOR EACH ROW EXECUTE FUNCTION experiments_archived_at();

CREATE INDEX experiments_owner_name_idx ON experiments (owner_id, name);

CREATE TABLE experiment_runs (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    experiment_id integer NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    status        text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    config        jsonb NOT NULL,
    principal     text NOT NULL DEFAULT '',     -- whose datasets and models the worker reads (x-llmlab-principal)
    executed      boolean NOT NULL DEFAULT true, -- false: created with executed=false (a run executed elsewhere)
    attempt       integer NOT NULL DEFAULT 0,
    total         integer NOT NULL DEFAULT 0,
    done          integer NOT NULL DEFAULT 0,
    failed        integer NOT NULL DEFAULT 0,
    outputs       jsonb,
    error         text,
    started_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    heartbeat_at  timestamptz
);
CREATE INDEX experiment_runs_experiment_idx ON experiment_runs (experiment_id, started_at DESC, id DESC);
CREATE INDEX experiment_runs_pending_idx ON experiment_runs (status) WHERE status IN ('pending', 'running');

-- One generation of a run: stored once per key, so a run resumed after its worker died never generates twice.
CREATE TABLE experiment_run_outputs (
    run_id        uuid NOT NULL REFERENCES experiment_runs (id) ON DELETE CASCADE,
    sample_key    text NOT NULL,          -- "<model>/<template>/<row index>"
    model_id      text NOT NULL,
    template_id   text NOT NULL,
    row_index     integer NOT NULL,
    prompt        text NOT NULL,
    output        text NOT NULL DEFAULT '',
    reference     text,
    latency_ms    double precision NOT NULL DEFAULT 0,
    prompt_tokens integer NOT NULL DEFAULT 0,
    completion_tokens integer NOT NULL DEFAULT 0,
    cost_usd      double precision NOT NULL DEFAULT 0,
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, sample_key)
);

CREATE TABLE prompt_templates (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq            bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    owner_id       text,
    name           text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 255),
    description    text NOT NULL DEFAULT '',
    template       text NOT NULL,
    variables      text[] NOT NULL DEFAULT '{}',
    default_values jsonb NOT NULL DEFAULT '{}',
    tags           text[] NOT NULL DEFAULT '{}',
    metadata       jsonb NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX prompt_templates_created_idx ON prompt_templates (created_at DESC, seq DESC);

-- Evaluations of research experiment runs (POST /evaluations, docs/research.md "Evaluations"): the metrics of one run,
-- keyed by the experiments service's UUIDs (checked through its API when written; never joined across schemas).
CREATE TABLE run_evaluations (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq           bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    experiment_id uuid NOT NULL,
    run_id        uuid NOT NULL,
    metrics       jsonb NOT NULL,
    metadata      jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX run_evaluations_experiment_idx ON run_evaluations (experiment_id, run_id, seq);

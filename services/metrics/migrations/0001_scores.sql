-- Stored quality scores of lab responses (ScoringService.ScoreResponse with a subject), keyed by the lab response
-- id; the subject's experiment, type, model and creation time are copied here so that reads never call back.
CREATE TABLE response_scores (
    response_id            integer PRIMARY KEY CHECK (response_id > 0),
    experiment_id          integer NOT NULL,
    experiment_type        text NOT NULL DEFAULT 'single',
    model                  text NOT NULL DEFAULT '',
    response_created_at    timestamptz NOT NULL,
    overall_quality        double precision NOT NULL,
    coherence              double precision NOT NULL,
    completeness           double precision NOT NULL,
    readability            double precision NOT NULL,
    creativity             double precision NOT NULL,
    specificity            double precision NOT NULL,
    length_appropriateness double precision NOT NULL,
    perplexity             double precision,
    mean_logprob           double precision,
    detailed_analysis      json NOT NULL,  -- json, not jsonb: factors keep their documented order
    scorer_version         text NOT NULL,
    calculated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX response_scores_created_idx ON response_scores (response_created_at);
CREATE INDEX response_scores_experiment_idx ON response_scores (experiment_id);

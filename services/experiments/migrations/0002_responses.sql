-- Generated responses as the lab's core loop stores them: the outcome of each generation (a failed
-- one is kept, marked, so that success_rate counts it), why it stopped, its perplexity under the model that wrote
-- it and the text measurements comparisons show.
ALTER TABLE responses
    ADD COLUMN status        text NOT NULL DEFAULT 'completed' CHECK (status IN ('completed', 'failed')),
    ADD COLUMN error         jsonb,
    ADD COLUMN finish_reason text NOT NULL DEFAULT '',
    ADD COLUMN perplexity    double precision,
    ADD COLUMN mean_logprob  double precision,
    ADD COLUMN text_stats    jsonb,
    ADD COLUMN run_id        uuid;

CREATE INDEX responses_created_idx ON responses (created_at DESC, id DESC) WHERE status = 'completed';
CREATE INDEX responses_quality_idx ON responses (overall_quality DESC NULLS LAST, id DESC) WHERE status = 'completed';
CREATE INDEX responses_run_idx ON responses (run_id);

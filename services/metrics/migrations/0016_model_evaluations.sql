-- Model evaluations (POST /api/models/{id}/evaluate, docs/training.md "Evaluation"): one row per run over an
-- evaluation set; perplexity is null when the model's backend gave no prompt logprobs.
CREATE TABLE model_evaluations (
    id                  serial PRIMARY KEY,
    model_id            text NOT NULL,
    eval_name           text NOT NULL CHECK (char_length(eval_name) BETWEEN 1 AND 255),
    dataset             text,                   -- files service id of the set; null: the built-in held-out set
    examples            integer NOT NULL CHECK (examples > 0),
    perplexity          double precision CHECK (perplexity > 0),
    bleu_score          double precision NOT NULL CHECK (bleu_score BETWEEN 0 AND 1),
    rouge_score         double precision NOT NULL CHECK (rouge_score BETWEEN 0 AND 1),
    response_diversity  double precision NOT NULL CHECK (response_diversity BETWEEN 0 AND 1),
    avg_response_length double precision NOT NULL CHECK (avg_response_length >= 0),
    created_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX model_evaluations_created_idx ON model_evaluations (created_at DESC, id DESC);
CREATE INDEX model_evaluations_model_idx ON model_evaluations (model_id, created_at DESC);

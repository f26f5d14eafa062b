-- All-time totals beside the daily rollups, for the answers that have no period (optimisation, correlations): they
-- read a few hundred rows instead of summing every day (docs/analytics.md "Bench"). Same sums, same projection.
CREATE TABLE combo_totals (
    model             text NOT NULL,
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
    experiments       bigint NOT NULL DEFAULT 0,  -- distinct experiments: +1 per new combo_experiments row
    PRIMARY KEY (model, temperature, top_p, max_tokens, frequency_penalty, presence_penalty)
);

CREATE TABLE pair_totals (
    model text NOT NULL,
    x     text NOT NULL,
    y     text NOT NULL,
    n     bigint NOT NULL DEFAULT 0,
    sx    double precision NOT NULL DEFAULT 0,
    sy    double precision NOT NULL DEFAULT 0,
    sxx   double precision NOT NULL DEFAULT 0,
    syy   double precision NOT NULL DEFAULT 0,
    sxy   double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (model, x, y)
);

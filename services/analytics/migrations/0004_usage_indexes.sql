-- /v1/usage reads one user's latency bins over a date range: without this index it scanned every user's bins
-- (bench/analytics.py: p95 107 ms -> see docs/analytics.md "Bench").
CREATE INDEX usage_latency_user_idx ON usage_latency (user_id, hour);
-- GET /api/models/{id}/stats sums one model's usage over all time.
CREATE INDEX usage_hourly_model_idx ON usage_hourly (model);

-- Webhook endpoints and their delivery log (docs/analytics.md "Webhooks"). A delivery row is the durable job: the
-- scheduler enqueues due rows on the `webhook-deliveries` stream, a worker attempts them and reschedules failures.
CREATE TABLE webhooks (
    id         text PRIMARY KEY,
    user_id    text NOT NULL,
    url        text NOT NULL,
    events     text[] NOT NULL,
    secret     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
);
CREATE INDEX webhooks_user_idx ON webhooks (user_id) WHERE deleted_at IS NULL;

CREATE TABLE webhook_deliveries (
    id               text PRIMARY KEY,
    webhook_id       text NOT NULL REFERENCES webhooks (id),
    event_id         text NOT NULL,
    event_type       text NOT NULL,
    payload          text NOT NULL,  -- the exact body sent on every attempt (the signature covers these bytes)
    status           text NOT NULL DEFAULT 'pending',
    attempts         integer NOT NULL DEFAULT 0,
    last_status_code integer,
    last_error       text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    enqueued_at      timestamptz,
    delivered_at     timestamptz,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_log_idx ON webhook_deliveries (webhook_id, created_at DESC);

-- Quotas crossed, one row per user, month and limit: usage.limit.reached is emitted once.
CREATE TABLE limit_crossings (
    user_id    text NOT NULL,
    month      date NOT NULL,
    limit_name text NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, month, limit_name)
);

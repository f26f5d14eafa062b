-- Export jobs run on workers from a Redis Streams queue (docs/files.md "Export jobs"): each claim of a job is an
-- attempt; only the current attempt may report progress or complete it, and its result blob is named after it.
ALTER TABLE exports DROP CONSTRAINT exports_status_check;
ALTER TABLE exports ADD CONSTRAINT exports_status_check
    CHECK (status IN ('running', 'completed', 'failed', 'cancelled'));
ALTER TABLE exports ALTER COLUMN blob_key DROP NOT NULL;   -- set by the attempt that completes the job
ALTER TABLE exports ADD COLUMN attempt integer NOT NULL DEFAULT 0;
ALTER TABLE exports ADD COLUMN worker text;                -- the queue consumer holding the current attempt
ALTER TABLE exports ADD COLUMN completed_at timestamptz;

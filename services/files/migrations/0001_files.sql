-- The files service's schema: OpenAI files, datasets and their versions, signed transfer slots, exports.
-- Bytes live in the blob store (blobstore.py); rows name them by key.

CREATE TABLE secrets (
    name text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE files (
    seq bigserial UNIQUE,
    id text PRIMARY KEY,                       -- "file-<hex>"
    owner_id text NOT NULL,
    filename text NOT NULL,
    purpose text NOT NULL,
    content_type text NOT NULL,
    bytes bigint NOT NULL,
    status text NOT NULL,
    status_details text,
    blob_key text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX files_owner ON files (owner_id, seq);

CREATE TABLE datasets (
    id uuid PRIMARY KEY,
    owner_id text NOT NULL,
    name text NOT NULL,
    description text NOT NULL DEFAULT '',
    format text NOT NULL,
    schema jsonb,
    tags text[] NOT NULL DEFAULT '{}',
    metadata jsonb NOT NULL DEFAULT '{}',
    -- The current file; all null until the first accepted upload.
    blob_key text,
    filename text,
    content_type text,
    size_bytes bigint,
    row_count bigint,
    sha256 text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX datasets_owner ON datasets (owner_id, created_at DESC);

-- A version names the blob the dataset had when it was taken. Blobs are never rewritten (every upload writes a new
-- key), so the snapshot is immutable without copying bytes.
CREATE TABLE dataset_versions (
    id uuid PRIMARY KEY,
    dataset_id uuid NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
    version text NOT NULL,
    description text NOT NULL DEFAULT '',
    changelog text NOT NULL DEFAULT '',
    blob_key text NOT NULL,
    filename text NOT NULL,
    content_type text NOT NULL,
    size_bytes bigint NOT NULL,
    row_count bigint,
    sha256 text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (dataset_id, version)
);

-- What a signed URL's token opens: an upload slot (a dataset's next file) or a stored object to download.
CREATE TABLE transfers (
    token text PRIMARY KEY,
    direction text NOT NULL CHECK (direction IN ('upload', 'download')),
    target text NOT NULL,                      -- 'dataset', 'dataset_version', 'export'
    target_id text NOT NULL,
    blob_key text,                             -- downloads: the object served
    filename text NOT NULL,
    content_type text NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at timestamptz,                       -- uploads: a slot is used once
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX transfers_expiry ON transfers (expires_at);

-- An export is a job: rendered at once when small, in the background when large (docs/files.md "Export jobs").
CREATE TABLE exports (
    id uuid PRIMARY KEY,
    owner_id text NOT NULL,
    kind text NOT NULL,                        -- 'experiment', 'batch', 'report'
    format text NOT NULL,
    blob_key text NOT NULL,
    filename text NOT NULL,
    content_type text NOT NULL,
    token text NOT NULL,                       -- the download transfer that serves it
    status text NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    progress integer NOT NULL DEFAULT 0,
    size_bytes bigint,
    record jsonb,                              -- the reproducibility record written into the file
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX exports_running ON exports (updated_at) WHERE status = 'running';

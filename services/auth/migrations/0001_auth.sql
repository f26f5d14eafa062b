-- Generated secrets (HS256 key, HMAC key) shared by every replica when the settings give none.
CREATE TABLE secrets (
    name        text PRIMARY KEY,
    value       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Users log in with a password (argon2id hash); the first admin comes from the settings.
CREATE TABLE users (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    username       text NOT NULL CHECK (char_length(username) BETWEEN 1 AND 255),
    password_hash  text NOT NULL,
    permissions    text[] NOT NULL DEFAULT '{}',
    tier           text NOT NULL DEFAULT 'free',
    disabled       boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_username_idx ON users (lower(username));

-- API keys: only an HMAC digest of the secret is stored. 0 in a limit means the owner's tier decides.
CREATE TABLE api_keys (
    id                   text PRIMARY KEY,
    user_id              uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name                 text NOT NULL DEFAULT '',
    secret_digest        text NOT NULL UNIQUE,
    permissions          text[] NOT NULL,
    requests_per_minute  integer NOT NULL DEFAULT 0 CHECK (requests_per_minute >= 0),
    tokens_per_minute    integer NOT NULL DEFAULT 0 CHECK (tokens_per_minute >= 0),
    tokens_per_month     bigint NOT NULL DEFAULT 0 CHECK (tokens_per_month >= 0),
    created_at           timestamptz NOT NULL DEFAULT now(),
    expires_at           timestamptz,
    revoked_at           timestamptz
);
CREATE INDEX api_keys_user_idx ON api_keys (user_id, created_at DESC);

-- Refresh tokens rotate: each is used once; presenting a used one revokes its whole family.
CREATE TABLE refresh_tokens (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    family_id      uuid NOT NULL,
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_digest   text NOT NULL UNIQUE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    used_at        timestamptz,
    revoked_at     timestamptz
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);

-- riskhost API keys (`--keys-source postgres`): only the SHA-256 of each
-- token is stored, never the token. `riskhost key new --postgres` inserts a
-- row, `riskhost key revoke` sets `revoked_at`; a running server notices
-- within --keys-cache-ttl-ms.
-- `__SCHEMA__` is replaced by the configured schema (--postgres-schema).

CREATE TABLE __SCHEMA__.api_keys (
    id              text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    sha256          text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    scopes          text[] NOT NULL
                    CHECK (cardinality(scopes) > 0 AND scopes <@ ARRAY['score', 'admin']::text[]),
    rate_per_minute integer CHECK (rate_per_minute > 0),
    burst           integer CHECK (burst > 0),
    description     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz
);

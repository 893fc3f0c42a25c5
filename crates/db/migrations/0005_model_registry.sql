-- The shared model registry (`--model-store postgres`): every version by
-- digest, each model's active pointer with its revision, the append-only
-- audit log of changes, and the replicas' heartbeats.
-- `__SCHEMA__` is replaced by the configured schema (--postgres-schema).

CREATE TABLE __SCHEMA__.model_versions (
    digest       text PRIMARY KEY CHECK (digest ~ '^sha256:[0-9a-f]{64}$'),
    name         text NOT NULL,
    version      text NOT NULL,
    -- What the component's info() says (name, version, parameters, data).
    info         jsonb NOT NULL,
    component    bytea NOT NULL,
    size_bytes   bigint NOT NULL CHECK (size_bytes = octet_length(component)),
    -- The publisher's detached signature (`.sig` text), if any.
    signature    text,
    uploaded_by  text NOT NULL,
    uploaded_via text NOT NULL,
    -- Where the bytes came from: `api:NAME`, `file:PATH`, or
    -- `oci:REGISTRY/REPO@sha256:…` for a deploy from an OCI registry.
    source       text NOT NULL,
    uploaded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX model_versions_by_name ON __SCHEMA__.model_versions (name);

-- One row per model ever known; `digest` NULL once it is deleted. The
-- revision only grows, also across deletes and re-uploads.
CREATE TABLE __SCHEMA__.model_active (
    name       text PRIMARY KEY,
    digest     text REFERENCES __SCHEMA__.model_versions (digest),
    revision   bigint NOT NULL CHECK (revision > 0),
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE __SCHEMA__.model_audit (
    id       bigserial PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    key_id   text NOT NULL,
    action   text NOT NULL CHECK (action IN ('upload', 'activate', 'rollback', 'delete', 'purge')),
    name     text NOT NULL,
    digest   text,
    revision bigint,
    replica  text NOT NULL
);
CREATE INDEX model_audit_by_name ON __SCHEMA__.model_audit (name, id);

CREATE FUNCTION __SCHEMA__.model_audit_is_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the model audit log is append-only';
END;
$$;
CREATE TRIGGER model_audit_append_only
    BEFORE UPDATE OR DELETE ON __SCHEMA__.model_audit
    FOR EACH ROW EXECUTE FUNCTION __SCHEMA__.model_audit_is_append_only();

CREATE TABLE __SCHEMA__.fleet_replicas (
    id         text PRIMARY KEY,
    started_at timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL,
    -- {"NAME": {"revision": N, "digest": "sha256:…"}}: what it serves.
    models     jsonb NOT NULL DEFAULT '{}'
);

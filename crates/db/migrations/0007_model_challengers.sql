-- Challengers shared by a fleet (`--model-store postgres`): one row per
-- model that has one. Every replica applies the table on the registry's
-- notification or poll; each keeps its own evidence.
-- `__SCHEMA__` is replaced by the configured schema (--postgres-schema).

CREATE TABLE __SCHEMA__.model_challengers (
    name          text PRIMARY KEY,
    digest        text NOT NULL REFERENCES __SCHEMA__.model_versions (digest) ON DELETE CASCADE,
    sample        double precision NOT NULL CHECK (sample > 0 AND sample <= 1),
    tolerance_abs double precision NOT NULL CHECK (tolerance_abs >= 0),
    tolerance_rel double precision NOT NULL CHECK (tolerance_rel >= 0),
    set_by        text NOT NULL,
    set_at        timestamptz NOT NULL DEFAULT clock_timestamp()
);

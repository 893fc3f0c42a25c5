-- riskhost market data: instruments, daily closes, stored portfolios, and the
-- data version that identifies the prices in cache keys.
-- `__SCHEMA__` is replaced by the configured schema (--postgres-schema).

CREATE TABLE __SCHEMA__.instruments (
    id          text PRIMARY KEY
                CHECK (id ~ '^[A-Za-z0-9._:/-]{1,64}$'),
    name        text,
    asset_class text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Observations only: gaps are forward-filled by the host, exactly as the
-- embedded source does, so both serve identical windows.
CREATE TABLE __SCHEMA__.prices (
    instrument text NOT NULL REFERENCES __SCHEMA__.instruments (id) ON DELETE CASCADE,
    date       date NOT NULL,
    -- NaN compares greater than Infinity in PostgreSQL, so this also rejects NaN.
    close      double precision NOT NULL CHECK (close > 0 AND close < 'Infinity'),
    PRIMARY KEY (instrument, date)
);
-- The trading calendar (distinct dates) is read by a loose index scan on it.
CREATE INDEX prices_date_idx ON __SCHEMA__.prices (date);

CREATE TABLE __SCHEMA__.portfolios (
    id         text PRIMARY KEY
               CHECK (id ~ '^[A-Za-z0-9._:/-]{1,64}$'),
    name       text,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE __SCHEMA__.positions (
    portfolio_id text NOT NULL REFERENCES __SCHEMA__.portfolios (id) ON DELETE CASCADE,
    instrument   text NOT NULL REFERENCES __SCHEMA__.instruments (id),
    quantity     double precision NOT NULL
                 CHECK (quantity <> 0 AND quantity > '-Infinity' AND quantity < 'Infinity'),
    PRIMARY KEY (portfolio_id, instrument)
);

-- One row. `epoch` is random per database, so two databases never share a
-- version; `version` grows by one with every statement that changes prices
-- or instruments. Cache keys carry `epoch.version`.
CREATE TABLE __SCHEMA__.data_version (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch      text NOT NULL,
    version    bigint NOT NULL,
    updated_at timestamptz NOT NULL
);
INSERT INTO __SCHEMA__.data_version
VALUES (true, substr(md5(random()::text || clock_timestamp()::text), 1, 12), 1, clock_timestamp());

-- Bumps only when a statement really changed rows (the transition table is
-- not empty), so re-seeding identical data keeps the version and the cache.
CREATE FUNCTION __SCHEMA__.bump_data_version_if_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM changed) THEN
        UPDATE __SCHEMA__.data_version SET version = version + 1, updated_at = clock_timestamp();
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION __SCHEMA__.bump_data_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE __SCHEMA__.data_version SET version = version + 1, updated_at = clock_timestamp();
    RETURN NULL;
END
$$;

-- Statement-level with transition tables: one bump per statement, however
-- many rows a bulk load writes. PostgreSQL allows one event per trigger with
-- transition tables, hence three of them per table (and one for TRUNCATE).
CREATE TRIGGER prices_inserted AFTER INSERT ON __SCHEMA__.prices
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION __SCHEMA__.bump_data_version_if_changed();
CREATE TRIGGER prices_updated AFTER UPDATE ON __SCHEMA__.prices
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION __SCHEMA__.bump_data_version_if_changed();
CREATE TRIGGER prices_deleted AFTER DELETE ON __SCHEMA__.prices
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION __SCHEMA__.bump_data_version_if_changed();
CREATE TRIGGER prices_truncated AFTER TRUNCATE ON __SCHEMA__.prices
    FOR EACH STATEMENT EXECUTE FUNCTION __SCHEMA__.bump_data_version();

-- Which instruments exist decides unknown-instrument errors, so it is part of
-- the version too.
CREATE TRIGGER instruments_inserted AFTER INSERT ON __SCHEMA__.instruments
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION __SCHEMA__.bump_data_version_if_changed();
CREATE TRIGGER instruments_deleted AFTER DELETE ON __SCHEMA__.instruments
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION __SCHEMA__.bump_data_version_if_changed();
CREATE TRIGGER instruments_truncated AFTER TRUNCATE ON __SCHEMA__.instruments
    FOR EACH STATEMENT EXECUTE FUNCTION __SCHEMA__.bump_data_version();

-- What changed in the prices, by data version: replay (docs/replay.md)
-- names the instruments and dates restated since a score was computed,
-- instead of only counting versions. One row per statement and instrument
-- (a bulk load of a year of closes for 50 instruments is 50 rows); a
-- restatement of a single close keeps the old and the new close.
-- `__SCHEMA__` is replaced by the configured schema (--postgres-schema).

CREATE TABLE __SCHEMA__.data_changes (
    -- The data version the statement produced (`data_version.version`).
    version    bigint NOT NULL,
    -- NULL for a TRUNCATE, which changes every instrument.
    instrument text,
    change     text NOT NULL CHECK (change IN ('restated', 'inserted', 'deleted', 'truncated')),
    first_date date,
    last_date  date,
    closes     bigint NOT NULL,
    -- Set when one close was restated.
    old_close  double precision,
    new_close  double precision,
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX data_changes_version_idx ON __SCHEMA__.data_changes (version);

-- Each runs after the trigger of the same event that bumps the version
-- (triggers of one event fire in name order, and `prices_updated` sorts
-- before `prices_updated_logged`), so it reads the version it produced.
CREATE FUNCTION __SCHEMA__.log_restated_closes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO __SCHEMA__.data_changes
        (version, instrument, change, first_date, last_date, closes, old_close, new_close)
    SELECT (SELECT version FROM __SCHEMA__.data_version), n.instrument, 'restated',
           min(n.date), max(n.date), count(*),
           CASE WHEN count(*) = 1 THEN min(o.close) END,
           CASE WHEN count(*) = 1 THEN min(n.close) END
    FROM new_rows n JOIN old_rows o USING (instrument, date)
    WHERE n.close IS DISTINCT FROM o.close
    GROUP BY n.instrument;
    RETURN NULL;
END
$$;

-- Inserts and deletes alike: `changed` is the NEW or the OLD table.
CREATE FUNCTION __SCHEMA__.log_inserted_or_deleted_closes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO __SCHEMA__.data_changes (version, instrument, change, first_date, last_date, closes)
    SELECT (SELECT version FROM __SCHEMA__.data_version), instrument,
           CASE TG_OP WHEN 'INSERT' THEN 'inserted' ELSE 'deleted' END,
           min(date), max(date), count(*)
    FROM changed GROUP BY instrument;
    RETURN NULL;
END
$$;

CREATE FUNCTION __SCHEMA__.log_truncated_closes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO __SCHEMA__.data_changes (version, instrument, change, closes)
    SELECT version, NULL, 'truncated', 0 FROM __SCHEMA__.data_version;
    RETURN NULL;
END
$$;

CREATE TRIGGER prices_updated_logged AFTER UPDATE ON __SCHEMA__.prices
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION __SCHEMA__.log_restated_closes();
CREATE TRIGGER prices_inserted_logged AFTER INSERT ON __SCHEMA__.prices
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION __SCHEMA__.log_inserted_or_deleted_closes();
CREATE TRIGGER prices_deleted_logged AFTER DELETE ON __SCHEMA__.prices
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION __SCHEMA__.log_inserted_or_deleted_closes();
CREATE TRIGGER prices_truncated_logged AFTER TRUNCATE ON __SCHEMA__.prices
    FOR EACH STATEMENT EXECUTE FUNCTION __SCHEMA__.log_truncated_closes();

-- An update of an instrument is a change of the market data too: its id
-- decides unknown-instrument errors, and its descriptive columns are data a
-- score may depend on. 0001 bumped the version on inserts, deletes and
-- truncates only, so an UPDATE left cached scores under a stale snapshot.
-- The version moves only when a row really differs (`updated_at` aside), so
-- re-seeding identical rows keeps the cache.

CREATE FUNCTION __SCHEMA__.bump_data_version_if_instruments_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT id, name, asset_class FROM new_rows
        EXCEPT
        SELECT id, name, asset_class FROM old_rows
    ) THEN
        UPDATE __SCHEMA__.data_version SET version = version + 1, updated_at = clock_timestamp();
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER instruments_updated AFTER UPDATE ON __SCHEMA__.instruments
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION __SCHEMA__.bump_data_version_if_instruments_changed();

-- Every change of an API key is announced, so every replica drops that key
-- from its cache at once (a revocation takes effect fleet-wide within about
-- one notification round trip, not --keys-cache-ttl-ms). The payload is the
-- key's id; a TRUNCATE announces an empty payload, meaning every key.
--
-- The channel is `<schema>.api_keys`, exactly `riskhost_db::channel_name(pool,
-- "api_keys")`: TG_TABLE_SCHEMA is the schema's name unquoted, as the
-- settings hold it. PostgreSQL refuses channel names over 63 bytes; such a
-- schema gets no notifications (riskhost says so at start-up and relies on
-- the cache TTL) rather than failing the write.
-- `__SCHEMA__` is replaced by the configured schema (--postgres-schema).

CREATE FUNCTION __SCHEMA__.notify_api_key_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    channel text := TG_TABLE_SCHEMA || '.api_keys';
BEGIN
    IF octet_length(channel) > 63 THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify(channel, '');
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify(channel, OLD.id);
    ELSE
        PERFORM pg_notify(channel, NEW.id);
        IF TG_OP = 'UPDATE' AND OLD.id <> NEW.id THEN
            PERFORM pg_notify(channel, OLD.id);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_notify AFTER INSERT OR UPDATE OR DELETE ON __SCHEMA__.api_keys
    FOR EACH ROW EXECUTE FUNCTION __SCHEMA__.notify_api_key_change();

CREATE TRIGGER api_keys_truncate_notify AFTER TRUNCATE ON __SCHEMA__.api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION __SCHEMA__.notify_api_key_change();

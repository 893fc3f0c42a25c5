//! API keys in PostgreSQL (`--keys-source postgres`): the `api_keys` table
//! of `--postgres-schema` (migration `0002_api_keys.sql`), read through a
//! short in-process cache so a request does not cost a query. Misses are
//! cached too, so a flood of one unknown id costs one query per TTL.
//!
//! Every replica hears about changes: migration `0004_api_key_notify.sql`
//! makes every insert, update and delete of a key `pg_notify` its id on
//! the channel `<schema>.api_keys`, and [`PostgresKeys`] listens on it
//! ([`riskhost_db::listen`], a dedicated connection that reconnects by
//! itself) and drops that id from its cache; after each (re)connection,
//! when notifications may have been missed, it drops the whole cache. So a
//! revocation takes effect on every replica within about one notification
//! round trip, and within `--keys-cache-ttl-ms` while the listener is
//! down. A lookup that raced with a notification is answered but not
//! cached (the `invalidations` counter), so a stale row never outlives the
//! notice that should have removed it. Lookups hold at
//! most a quarter of the pool's connections at once, so a flood of new
//! unknown ids (which the per-address failure budget also throttles) can
//! never starve the market-data queries sharing the pool.
//!
//! Keys from configuration (`--admin-token`, `--api-key`) are consulted
//! first, so an operator keeps a way in while the database is down.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::keys::{self, ApiKey, RateOverride, Scope, StaticKeys};
use super::{KeyError, KeySource};
use riskhost_db::{DbError, Notice, PgPool};

/// Keys from the `api_keys` table, cached, behind the configured ones.
pub struct PostgresKeys {
    pool: PgPool,
    configured: StaticKeys,
    cache: moka::sync::Cache<String, Option<Arc<ApiKey>>>,
    /// Notices applied so far: a lookup caches its row only if none
    /// arrived while it queried.
    invalidations: Arc<AtomicU64>,
    select: String,
    /// Connections key lookups may hold at once.
    lookups: tokio::sync::Semaphore,
    /// Applies the change notifications; aborted on drop, which closes
    /// the listener's channel and so ends the listener too.
    listener: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for PostgresKeys {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
    }
}

/// The share of the pool key lookups may hold: a quarter, at least one.
pub(crate) fn lookup_connections(pool_size: usize) -> usize {
    (pool_size / 4).max(1)
}

impl PostgresKeys {
    /// `pool`'s schema must be migrated (the server does at start-up).
    pub fn new(pool: PgPool, configured: StaticKeys, ttl: Duration) -> PostgresKeys {
        let select = format!(
            "SELECT sha256, scopes, rate_per_minute, burst FROM {}.api_keys
             WHERE id = $1 AND revoked_at IS NULL",
            pool.schema()
        );
        let lookups = tokio::sync::Semaphore::new(lookup_connections(pool.settings().pool_size));
        let cache = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(ttl.max(Duration::from_millis(1)))
            .build();
        let invalidations = Arc::new(AtomicU64::new(0));
        let listener = match riskhost_db::channel_name(&pool, "api_keys")
            .and_then(|channel| riskhost_db::listen(&pool, "riskhost-keys", vec![channel]))
        {
            Ok(notices) => Some(tokio::spawn(apply_notices(
                notices,
                cache.clone(),
                invalidations.clone(),
            ))),
            Err(e) => {
                tracing::warn!(
                    "cannot listen for API key changes ({e}): a revocation takes effect within --keys-cache-ttl-ms ({} ms)",
                    ttl.as_millis()
                );
                None
            }
        };
        PostgresKeys {
            pool,
            lookups,
            configured,
            cache,
            invalidations,
            select,
            listener,
        }
    }

    async fn fetch(&self, id: &str) -> Result<Option<Arc<ApiKey>>, DbError> {
        let sql = self.select.clone();
        let owned = id.to_owned();
        let row = self
            .pool
            .run("api_key", move |client| {
                Box::pin(async move {
                    let statement = client.prepare_cached(&sql).await?;
                    client.query_opt(&statement, &[&owned]).await
                })
            })
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let bad = |e: String| DbError::Invalid(format!("api_keys row `{id}`: {e}"));
        let sha: String = row.try_get(0).map_err(|e| bad(e.to_string()))?;
        let scopes: Vec<String> = row.try_get(1).map_err(|e| bad(e.to_string()))?;
        let rate: Option<i32> = row.try_get(2).map_err(|e| bad(e.to_string()))?;
        let burst: Option<i32> = row.try_get(3).map_err(|e| bad(e.to_string()))?;
        let positive = |n: Option<i32>| n.and_then(|n| u32::try_from(n).ok()).filter(|n| *n > 0);
        let digest: [u8; 32] = hex::decode(&sha)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("sha256 is not 64 hex digits".into()))?;
        Ok(Some(Arc::new(ApiKey {
            id: id.to_owned(),
            digest,
            scope: Scope::widest(scopes.iter().map(String::as_str)).map_err(bad)?,
            rate: RateOverride {
                per_minute: positive(rate),
                burst: positive(burst),
            },
        })))
    }
}

#[async_trait::async_trait]
impl KeySource for PostgresKeys {
    async fn get(&self, id: &str) -> Result<Option<Arc<ApiKey>>, KeyError> {
        if let Some(key) = self.configured.get(id).await? {
            return Ok(Some(key));
        }
        if let Some(cached) = self.cache.get(id) {
            return Ok(cached);
        }
        let _connection = self
            .lookups
            .acquire()
            .await
            .map_err(|_| KeyError::Unavailable("the key store is shutting down".into()))?;
        // Another lookup of the same id may have finished while this waited.
        if let Some(cached) = self.cache.get(id) {
            return Ok(cached);
        }
        let before = self.invalidations.load(Ordering::Acquire);
        match self.fetch(id).await {
            Ok(key) => {
                // A notice during the query may concern this very row, which
                // the query may have read before the change: answer it, but
                // let the next lookup read again.
                // (Insert, then check: a notice counted after the check
                // invalidates after this insert.)
                self.cache.insert(id.to_owned(), key.clone());
                if self.invalidations.load(Ordering::Acquire) != before {
                    self.cache.invalidate(id);
                }
                Ok(key)
            }
            // A broken row is no key; the log says why.
            Err(DbError::Invalid(message)) => {
                tracing::warn!(key_id = %id, "{message}");
                Ok(None)
            }
            Err(e) => Err(KeyError::Unavailable(e.to_string())),
        }
    }

    fn describe(&self) -> String {
        format!(
            "PostgreSQL table {}.api_keys (cached) and {}",
            self.pool.schema(),
            self.configured.describe()
        )
    }
}

/// Applies the listener's notices to the cache until the listener ends.
async fn apply_notices(
    mut notices: tokio::sync::mpsc::Receiver<Notice>,
    cache: moka::sync::Cache<String, Option<Arc<ApiKey>>>,
    invalidations: Arc<AtomicU64>,
) {
    while let Some(notice) = notices.recv().await {
        invalidations.fetch_add(1, Ordering::AcqRel);
        match notice {
            // Changes while the listener was away were not notified.
            Notice::Resync => cache.invalidate_all(),
            // An empty payload (a TRUNCATE) concerns every key.
            Notice::Notify { payload, .. } if payload.is_empty() => cache.invalidate_all(),
            Notice::Notify { payload, .. } => cache.invalidate(&payload),
        }
        metrics::counter!("riskhost_keys_cache_invalidations_total").increment(1);
    }
}

/// Inserts a key (its hash only). Fails if the id exists.
pub async fn insert(pool: &PgPool, key: &ApiKey, description: &str) -> Result<(), DbError> {
    let sql = format!(
        "INSERT INTO {}.api_keys (id, sha256, scopes, rate_per_minute, burst, description)
         VALUES ($1, $2, $3, $4, $5, NULLIF($6, ''))",
        pool.schema()
    );
    let (id, sha) = (key.id.clone(), hex::encode(key.digest));
    let scopes = vec![key.scope.as_str().to_owned()];
    let signed = |n: Option<u32>| n.and_then(|n| i32::try_from(n).ok());
    let (rate, burst) = (signed(key.rate.per_minute), signed(key.rate.burst));
    let description = description.to_owned();
    pool.run("insert_api_key", move |client| {
        Box::pin(async move {
            client
                .execute(&sql, &[&id, &sha, &scopes, &rate, &burst, &description])
                .await
        })
    })
    .await
    .map(|_| ())
}

/// Revokes a key; whether there was an unrevoked key with that id.
pub async fn revoke(pool: &PgPool, id: &str) -> Result<bool, DbError> {
    keys::check_id(id).map_err(DbError::Invalid)?;
    let sql = format!(
        "UPDATE {}.api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
        pool.schema()
    );
    let id = id.to_owned();
    let n = pool
        .run("revoke_api_key", move |client| {
            Box::pin(async move { client.execute(&sql, &[&id]).await })
        })
        .await?;
    Ok(n > 0)
}

/// Every key: id, scopes, created, revoked (never a hash).
pub async fn list(pool: &PgPool) -> Result<Vec<(String, String, String, String)>, DbError> {
    let sql = format!(
        "SELECT id, array_to_string(scopes, '+'), created_at::text, COALESCE(revoked_at::text, '')
         FROM {}.api_keys ORDER BY id",
        pool.schema()
    );
    let rows = pool
        .run("list_api_keys", move |client| {
            Box::pin(async move { client.query(&sql, &[]).await })
        })
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(|e| DbError::Invalid(e.to_string()))
}

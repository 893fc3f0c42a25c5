//! [`PgPool`]: the PostgreSQL connection pool every PostgreSQL user of
//! riskhost shares (the market source, API keys, `riskhost db`), and the
//! migrations in `crates/db/migrations/` that create riskhost's tables.
//!
//! Every failure to reach the database is [`DbError::Unavailable`], bounded
//! in time by the pool's wait and connect timeouts and the statement
//! timeout; a connection that broke is dropped by the pool, which
//! reconnects on demand once the database is back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures::future::BoxFuture;
use tokio_postgres::NoTls;

use crate::DbError;

/// The migrations, in order; `__SCHEMA__` stands for the quoted schema.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "market data",
        include_str!("../migrations/0001_market_data.sql"),
    ),
    (
        2,
        "api keys",
        include_str!("../migrations/0002_api_keys.sql"),
    ),
    (
        3,
        "instrument updates move the data version",
        include_str!("../migrations/0003_instrument_updates.sql"),
    ),
    (
        4,
        "api key changes notify every replica",
        include_str!("../migrations/0004_api_key_notify.sql"),
    ),
    (
        5,
        "the shared model registry",
        include_str!("../migrations/0005_model_registry.sql"),
    ),
    (
        6,
        "risk runs on NATS JetStream",
        include_str!("../migrations/0006_runs.sql"),
    ),
    (
        7,
        "challengers shared by a fleet",
        include_str!("../migrations/0007_model_challengers.sql"),
    ),
    (
        8,
        "a log of what changed in the prices, for replay",
        include_str!("../migrations/0008_data_changes.sql"),
    ),
];

/// Connection and pool settings.
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// `postgres://user:password@host:port/database` or key=value form.
    pub url: String,
    /// Schema of riskhost's tables; `[a-z_][a-z0-9_]*`, at most 63 bytes.
    pub schema: String,
    pub pool_size: usize,
    /// How long a query waits for a pooled connection.
    pub wait_timeout: Duration,
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
    /// Server-side limit of one statement (`statement_timeout`).
    pub statement_timeout: Duration,
}

/// Checks a schema name; it is interpolated into SQL, so the rule is strict.
pub(crate) fn validate_schema(schema: &str) -> Result<(), DbError> {
    let mut chars = schema.chars();
    let ok = schema.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(DbError::Invalid(format!(
            "invalid PostgreSQL schema {schema:?}: use 1-63 characters of [a-z0-9_], not starting with a digit"
        )))
    }
}

/// A pool with metrics and error translation; named in metric labels.
#[derive(Clone)]
pub struct PgPool {
    pool: Pool,
    name: &'static str,
    /// Where it connects, without credentials, for messages.
    target: String,
    settings: Arc<PgSettings>,
}

impl std::fmt::Debug for PgPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPool")
            .field("name", &self.name)
            .field("target", &self.target)
            .finish()
    }
}

impl PgPool {
    /// Builds the pool; connects lazily (the first query opens a connection).
    pub fn new(name: &'static str, settings: PgSettings) -> Result<PgPool, DbError> {
        validate_schema(&settings.schema)?;
        let config = client_config(&settings, "riskhost")?;
        let target = describe_target(&config);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // A closed connection is dropped at checkout; a live one is
                // reused without a round trip.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(settings.wait_timeout))
            .create_timeout(Some(settings.connect_timeout))
            .recycle_timeout(Some(settings.connect_timeout))
            .build()
            .map_err(|e| DbError::Invalid(format!("cannot build the PostgreSQL pool: {e}")))?;
        Ok(PgPool {
            pool,
            name,
            target,
            settings: Arc::new(settings),
        })
    }

    /// Where it connects, without credentials, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn settings(&self) -> &PgSettings {
        &self.settings
    }

    /// The quoted schema, ready to interpolate.
    pub fn schema(&self) -> String {
        format!("\"{}\"", self.settings.schema)
    }

    /// Samples the pool's gauges every `every` for as long as the process runs.
    pub fn spawn_metrics(&self, every: Duration) {
        let (pool, name) = (self.pool.clone(), self.name);
        tokio::spawn(async move {
            loop {
                let s = pool.status();
                metrics::gauge!("riskhost_db_pool_size", "pool" => name).set(s.size as f64);
                metrics::gauge!("riskhost_db_pool_max_size", "pool" => name).set(s.max_size as f64);
                metrics::gauge!("riskhost_db_pool_idle", "pool" => name).set(s.available as f64);
                metrics::gauge!("riskhost_db_pool_in_use", "pool" => name)
                    .set(s.size.saturating_sub(s.available) as f64);
                metrics::gauge!("riskhost_db_pool_waiters", "pool" => name).set(s.waiting as f64);
                tokio::time::sleep(every).await;
            }
        });
    }

    /// A pooled connection, or `Unavailable` saying why there is none.
    pub(crate) async fn connection(&self) -> Result<Object, DbError> {
        self.pool.get().await.map_err(|e| {
            use deadpool_postgres::PoolError;
            let message = match e {
                PoolError::Timeout(kind) => format!(
                    "PostgreSQL at {}: no connection within {:?} ({kind:?} timeout): the database is down, unreachable, or all {} pooled connections are busy",
                    self.target,
                    match kind {
                        deadpool_postgres::TimeoutType::Wait => self.settings.wait_timeout,
                        _ => self.settings.connect_timeout,
                    },
                    self.settings.pool_size
                ),
                PoolError::Backend(e) => {
                    format!("cannot connect to PostgreSQL at {}: {}", self.target, error_text(&e))
                }
                other => format!("PostgreSQL pool for {}: {other}", self.target),
            };
            DbError::Unavailable(message)
        })
    }

    /// Runs `f` on a pooled connection, timing it as `query` and bounding it
    /// in time even if the server stops answering (the server-side statement
    /// timeout cannot fire then).
    pub async fn run<T, F>(&self, query: &'static str, f: F) -> Result<T, DbError>
    where
        F: for<'c> FnOnce(&'c Object) -> BoxFuture<'c, Result<T, tokio_postgres::Error>>,
    {
        let started = Instant::now();
        let client = self.connection().await?;
        let limit = self.settings.statement_timeout + Duration::from_secs(2);
        let outcome = tokio::time::timeout(limit, f(&client)).await;
        metrics::histogram!("riskhost_db_query_duration_seconds", "pool" => self.name, "query" => query)
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                metrics::counter!("riskhost_db_query_errors_total", "pool" => self.name, "query" => query).increment(1);
                Err(self.query_error(query, &e))
            }
            Err(_) => {
                metrics::counter!("riskhost_db_query_errors_total", "pool" => self.name, "query" => query).increment(1);
                // The connection may still be mid-query: never reuse it.
                drop(Object::take(client));
                Err(DbError::Unavailable(format!(
                    "PostgreSQL at {} did not answer the {query} query within {limit:?}",
                    self.target
                )))
            }
        }
    }

    fn query_error(&self, query: &str, e: &tokio_postgres::Error) -> DbError {
        let code = e.code().map(|c| c.code().to_owned());
        let message = match code.as_deref() {
            Some("57014") => format!(
                "PostgreSQL cancelled the {query} query after the statement timeout of {:?}",
                self.settings.statement_timeout
            ),
            Some("42P01") | Some("3F000") => format!(
                "PostgreSQL schema {} is missing riskhost's tables: run `riskhost db migrate` ({})",
                self.settings.schema,
                error_text(e)
            ),
            _ => format!(
                "PostgreSQL at {} failed the {query} query: {}",
                self.target,
                error_text(e)
            ),
        };
        DbError::Unavailable(message)
    }
}

/// The client configuration of every riskhost connection: `url` with
/// riskhost's time bounds, named `application_name` on the server.
pub(crate) fn client_config(
    settings: &PgSettings,
    application_name: &str,
) -> Result<tokio_postgres::Config, DbError> {
    let mut config: tokio_postgres::Config = settings
        .url
        .parse()
        .map_err(|e| DbError::Invalid(format!("invalid PostgreSQL URL: {e}")))?;
    let statement_ms = settings.statement_timeout.as_millis().max(1);
    config
        .application_name(application_name)
        .connect_timeout(settings.connect_timeout)
        // A query that outlives this is cancelled by the server itself.
        .options(format!(
            "-c statement_timeout={statement_ms} -c client_min_messages=warning"
        ))
        // A peer that vanished without closing is noticed by keepalives.
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10));
    Ok(config)
}

/// The error with its cause (tokio-postgres hides the server's message in
/// `source()`).
pub(crate) fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

fn describe_target(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("(default database)");
    format!("{host}:{port}/{db}")
}

/// Applies the migrations not yet applied, under an advisory lock so that
/// several hosts starting together apply each one once. Returns the versions
/// applied now.
pub async fn migrate(pool: &PgPool) -> Result<Vec<i32>, DbError> {
    let schema = pool.schema();
    let schema_name = pool.settings.schema.clone();
    pool.run("migrate", move |client| Box::pin(async move {
        let mut applied_now = Vec::new();
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema};
                 CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                     version integer PRIMARY KEY,
                     name text NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now())"
            ))
            .await?;
        // One transaction per migration, all serialised by a lock keyed on the schema.
        for (version, name, sql) in MIGRATIONS {
            client.batch_execute("BEGIN").await?;
            let step = async {
                client
                    .execute(
                        "SELECT pg_advisory_xact_lock(hashtext('riskhost-migrate:' || $1))",
                        &[&schema_name],
                    )
                    .await?;
                let done = client
                    .query_opt(
                        &format!("SELECT 1 FROM {schema}.schema_migrations WHERE version = $1"),
                        &[version],
                    )
                    .await?
                    .is_some();
                if !done {
                    client.batch_execute(&sql.replace("__SCHEMA__", &schema)).await?;
                    client
                        .execute(
                            &format!(
                                "INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)"
                            ),
                            &[version, name],
                        )
                        .await?;
                }
                Ok::<bool, tokio_postgres::Error>(!done)
            };
            match step.await {
                Ok(applied) => {
                    client.batch_execute("COMMIT").await?;
                    if applied {
                        applied_now.push(*version);
                    }
                }
                Err(e) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Err(e);
                }
            }
        }
        Ok(applied_now)
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_strict() {
        for ok in ["riskhost", "_x", "t_123", &"a".repeat(63)] {
            validate_schema(ok).unwrap();
        }
        for bad in ["", "1a", "Risk", "a-b", "a\"b", "a;drop", &"a".repeat(64)] {
            assert!(validate_schema(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_url_is_a_clear_error() {
        let e = PgPool::new(
            "t",
            PgSettings {
                url: "postgres://[::1".into(),
                schema: "riskhost".into(),
                pool_size: 1,
                wait_timeout: Duration::from_secs(1),
                connect_timeout: Duration::from_secs(1),
                statement_timeout: Duration::from_secs(1),
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("invalid PostgreSQL URL"), "{e}");
    }

    #[test]
    fn every_migration_uses_the_schema_placeholder() {
        for (_, name, sql) in MIGRATIONS {
            assert!(sql.contains("__SCHEMA__"), "{name}");
            assert!(!sql.contains("riskhost."), "{name} names a fixed schema");
        }
    }
}

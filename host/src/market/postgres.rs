//! [`PostgresSource`]: market data and stored portfolios in PostgreSQL,
//! through a deadpool connection pool.
//!
//! Tables live in one schema (`--postgres-schema`), created by the
//! migrations in `host/migrations/` that the host runs at start-up and
//! `riskhost db migrate` runs on demand. A window is one query (every
//! instrument of the batch, `instrument = ANY($1)`, over the window's dates,
//! plus the last close before it per instrument) filled by
//! [`super::window::assemble_window`], so windows are bit-identical to the
//! embedded table's on the same data.
//!
//! The snapshot version is `epoch.version` from the `data_version` row that
//! triggers bump on every statement that changes prices or instruments; it
//! is re-checked at most once per `--data-version-ttl-ms`.
//!
//! Every failure to reach the database is [`DataError::Unavailable`] (503
//! `data_unavailable`), bounded in time by the pool's wait and connect
//! timeouts and the statement timeout; a connection that broke is dropped by
//! the pool, which reconnects on demand once the database is back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures::future::BoxFuture;
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

use super::window::{MarketMeta, MetaCache, MetaLoader, Observation, assemble_window};
use super::{
    DataError, MarketDataSource, PriceTable, PriceWindow, SnapshotId, StoredPortfolio,
    StoredPosition,
};

/// The migrations, in order; `__SCHEMA__` stands for the quoted schema.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "market data",
        include_str!("../../migrations/0001_market_data.sql"),
    ),
    (
        2,
        "api keys",
        include_str!("../../migrations/0002_api_keys.sql"),
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
    /// How long a read data version is trusted before it is re-checked.
    pub version_ttl: Duration,
}

/// Checks a schema name; it is interpolated into SQL, so the rule is strict.
pub fn validate_schema(schema: &str) -> Result<(), DataError> {
    let mut chars = schema.chars();
    let ok = schema.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(DataError::Invalid(format!(
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
    pub fn new(name: &'static str, settings: PgSettings) -> Result<PgPool, DataError> {
        validate_schema(&settings.schema)?;
        let mut config: tokio_postgres::Config = settings
            .url
            .parse()
            .map_err(|e| DataError::Invalid(format!("invalid PostgreSQL URL: {e}")))?;
        let statement_ms = settings.statement_timeout.as_millis().max(1);
        config
            .application_name("riskhost")
            .connect_timeout(settings.connect_timeout)
            // A query that outlives this is cancelled by the server itself.
            .options(format!(
                "-c statement_timeout={statement_ms} -c client_min_messages=warning"
            ))
            // A peer that vanished without closing is noticed by keepalives.
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10));
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
            .map_err(|e| DataError::Invalid(format!("cannot build the PostgreSQL pool: {e}")))?;
        Ok(PgPool {
            pool,
            name,
            target,
            settings: Arc::new(settings),
        })
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
    pub async fn connection(&self) -> Result<Object, DataError> {
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
            DataError::Unavailable(message)
        })
    }

    /// Runs `f` on a pooled connection, timing it as `query` and bounding it
    /// in time even if the server stops answering (the server-side statement
    /// timeout cannot fire then).
    pub async fn run<T, F>(&self, query: &'static str, f: F) -> Result<T, DataError>
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
                Err(DataError::Unavailable(format!(
                    "PostgreSQL at {} did not answer the {query} query within {limit:?}",
                    self.target
                )))
            }
        }
    }

    fn query_error(&self, query: &str, e: &tokio_postgres::Error) -> DataError {
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
        DataError::Unavailable(message)
    }
}

/// The error with its cause (tokio-postgres hides the server's message in
/// `source()`).
fn error_text(e: &tokio_postgres::Error) -> String {
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
pub async fn migrate(pool: &PgPool) -> Result<Vec<i32>, DataError> {
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

/// What `riskhost db seed` writes, and how much of it changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeedReport {
    pub instruments: u64,
    pub prices: u64,
    pub portfolios: u64,
    pub positions: u64,
}

/// Upserts instruments, prices and portfolios; rows already equal are left
/// alone, so seeding twice keeps the data version (and every cached score).
/// Stored portfolios are replaced whole (their positions are rewritten).
pub async fn seed(
    pool: &PgPool,
    table: &PriceTable,
    instrument_info: &HashMap<String, (String, String)>,
    portfolios: &[StoredPortfolio],
) -> Result<SeedReport, DataError> {
    let schema = pool.schema();
    let ids: Vec<String> = table.instruments().to_vec();
    let names: Vec<Option<String>> = ids
        .iter()
        .map(|id| instrument_info.get(id).map(|(n, _)| n.clone()))
        .collect();
    let classes: Vec<Option<String>> = ids
        .iter()
        .map(|id| instrument_info.get(id).map(|(_, c)| c.clone()))
        .collect();
    let observations: Vec<(NaiveDate, String, f64)> = table
        .observations()
        .map(|(d, id, c)| (d, id.to_owned(), c))
        .collect();
    let portfolios = portfolios.to_vec();
    pool.run("seed", move |client| Box::pin(async move {
        let mut report = SeedReport::default();
        client.batch_execute("BEGIN").await?;
        let work = async {
            report.instruments = client
                .execute(
                    &format!(
                        "INSERT INTO {schema}.instruments (id, name, asset_class)
                         SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
                         ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                             asset_class = excluded.asset_class, updated_at = now()
                         WHERE (instruments.name, instruments.asset_class)
                               IS DISTINCT FROM (excluded.name, excluded.asset_class)"
                    ),
                    &[&ids, &names, &classes],
                )
                .await?;
            let upsert = format!(
                "INSERT INTO {schema}.prices (instrument, date, close)
                 SELECT * FROM unnest($1::text[], $2::date[], $3::float8[])
                 ON CONFLICT (instrument, date) DO UPDATE SET close = excluded.close
                 WHERE prices.close IS DISTINCT FROM excluded.close"
            );
            for chunk in observations.chunks(20_000) {
                let ids: Vec<&str> = chunk.iter().map(|r| r.1.as_str()).collect();
                let dates: Vec<NaiveDate> = chunk.iter().map(|r| r.0).collect();
                let closes: Vec<f64> = chunk.iter().map(|r| r.2).collect();
                report.prices += client.execute(&upsert, &[&ids, &dates, &closes]).await?;
            }
            for p in &portfolios {
                report.portfolios += client
                    .execute(
                        &format!(
                            "INSERT INTO {schema}.portfolios (id) VALUES ($1) ON CONFLICT (id) DO NOTHING"
                        ),
                        &[&p.id],
                    )
                    .await?;
                client
                    .execute(
                        &format!("DELETE FROM {schema}.positions WHERE portfolio_id = $1"),
                        &[&p.id],
                    )
                    .await?;
                let instruments: Vec<&str> =
                    p.positions.iter().map(|x| x.instrument.as_str()).collect();
                let quantities: Vec<f64> = p.positions.iter().map(|x| x.quantity).collect();
                report.positions += client
                    .execute(
                        &format!(
                            "INSERT INTO {schema}.positions (portfolio_id, instrument, quantity)
                             SELECT $1, * FROM unnest($2::text[], $3::float8[])"
                        ),
                        &[&p.id, &instruments, &quantities],
                    )
                    .await?;
            }
            Ok::<(), tokio_postgres::Error>(())
        };
        match work.await {
            Ok(()) => client.batch_execute("COMMIT").await?,
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        }
        Ok(report)
    }))
    .await
}

/// Market data and stored portfolios from PostgreSQL.
pub struct PostgresSource {
    pool: PgPool,
    meta: MetaCache,
    /// Queries with the schema interpolated once.
    sql: Queries,
}

struct Queries {
    version: String,
    calendar: String,
    instruments: String,
    window: String,
    portfolio: String,
    portfolios: String,
    portfolio_ids: String,
}

impl Queries {
    fn new(s: &str) -> Queries {
        Queries {
            version: format!("SELECT epoch, version FROM {s}.data_version"),
            // A loose index scan on prices(date): one index probe per
            // distinct date instead of reading every row.
            calendar: format!(
                "WITH RECURSIVE d(date) AS (
                     (SELECT date FROM {s}.prices ORDER BY date LIMIT 1)
                     UNION ALL
                     SELECT (SELECT p.date FROM {s}.prices p WHERE p.date > d.date ORDER BY p.date LIMIT 1)
                     FROM d WHERE d.date IS NOT NULL)
                 SELECT date FROM d WHERE date IS NOT NULL"
            ),
            instruments: format!("SELECT id FROM {s}.instruments"),
            // One round trip for a whole batch: the data version (to detect
            // a change since the calendar was read), the closes inside the
            // window, and per instrument the last close before it.
            window: format!(
                "WITH v AS (SELECT version FROM {s}.data_version),
                 r AS (
                     SELECT instrument, date, close FROM {s}.prices
                     WHERE instrument = ANY($1) AND date >= $2 AND date <= $3
                     UNION ALL
                     SELECT i.id, b.date, b.close
                     FROM unnest($1::text[]) AS i(id)
                     CROSS JOIN LATERAL (
                         SELECT date, close FROM {s}.prices
                         WHERE instrument = i.id AND date < $2
                         ORDER BY date DESC LIMIT 1) b)
                 SELECT v.version, r.instrument, r.date, r.close FROM v LEFT JOIN r ON true"
            ),
            portfolio: format!(
                "SELECT pos.instrument, pos.quantity FROM {s}.portfolios p
                 LEFT JOIN {s}.positions pos ON pos.portfolio_id = p.id
                 WHERE p.id = $1 ORDER BY pos.instrument"
            ),
            portfolios: format!(
                "SELECT p.id, pos.instrument, pos.quantity FROM {s}.portfolios p
                 LEFT JOIN {s}.positions pos ON pos.portfolio_id = p.id
                 WHERE p.id = ANY($1) ORDER BY p.id, pos.instrument"
            ),
            portfolio_ids: format!("SELECT id FROM {s}.portfolios ORDER BY id"),
        }
    }
}

/// A position as read with a LEFT JOIN: NULLs for a portfolio without any.
type PositionCells = (Option<String>, Option<f64>);

fn version_string(epoch: &str, version: i64) -> String {
    format!("{epoch}.{version}")
}

impl PostgresSource {
    /// A source over `pool`; the schema must be migrated (see [`migrate`]).
    pub fn new(pool: PgPool) -> PostgresSource {
        let ttl = pool.settings.version_ttl;
        let sql = Queries::new(&pool.schema());
        PostgresSource {
            pool,
            meta: MetaCache::new(ttl),
            sql,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Fetches the window; `Ok(None)` when the data changed since `meta` was
    /// read (the caller reloads the meta and asks again).
    async fn fetch_window(
        &self,
        meta: &MarketMeta,
        instruments: &[&str],
        as_of: NaiveDate,
        lookback_returns: usize,
    ) -> Result<Option<PriceWindow>, DataError> {
        let span = meta.span(instruments, as_of, lookback_returns)?;
        let dates = &meta.calendar[span.start..=span.end];
        let (first, last) = (dates[0], dates[dates.len() - 1]);
        let mut ids: Vec<&str> = instruments.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let ids: Vec<String> = ids.into_iter().map(str::to_owned).collect();
        let sql = self.sql.window.clone();
        let rows = self
            .pool
            .run("price_window", move |client| {
                Box::pin(async move {
                    let statement = client.prepare_cached(&sql).await?;
                    let params: [&(dyn ToSql + Sync); 3] = [&ids, &first, &last];
                    client.query(&statement, &params).await
                })
            })
            .await?;
        let mut seen_version = None;
        let mut observations = Vec::with_capacity(rows.len());
        for row in rows {
            seen_version = Some(row.try_get::<_, i64>(0).map_err(|e| self.row_error(&e))?);
            let instrument: Option<String> = row.try_get(1).map_err(|e| self.row_error(&e))?;
            if let Some(instrument) = instrument {
                observations.push(Observation {
                    instrument,
                    date: row.try_get(2).map_err(|e| self.row_error(&e))?,
                    close: row.try_get(3).map_err(|e| self.row_error(&e))?,
                });
            }
        }
        // `meta.version` is "epoch.version"; compare the counter part.
        let current = meta.version.rsplit('.').next().and_then(|v| v.parse().ok());
        if seen_version.is_none() || seen_version != current {
            return Ok(None);
        }
        Ok(assemble_window(instruments, dates, as_of, observations).ok())
    }

    fn row_error(&self, e: &tokio_postgres::Error) -> DataError {
        DataError::Invalid(format!(
            "unexpected row from PostgreSQL schema {}: {e}",
            self.pool.settings.schema
        ))
    }

    fn portfolio_from_rows(
        id: &str,
        rows: impl Iterator<Item = (Option<String>, Option<f64>)>,
    ) -> StoredPortfolio {
        StoredPortfolio {
            id: id.to_owned(),
            positions: rows
                .filter_map(|(instrument, quantity)| {
                    Some(StoredPosition {
                        instrument: instrument?,
                        quantity: quantity?,
                    })
                })
                .collect(),
        }
    }

    /// Many stored portfolios in one query (for batches given ids only).
    pub async fn portfolios(
        &self,
        ids: &[&str],
    ) -> Result<HashMap<String, StoredPortfolio>, DataError> {
        let sql = self.sql.portfolios.clone();
        let ids: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
        let rows = self
            .pool
            .run("portfolios", move |client| {
                Box::pin(async move {
                    let statement = client.prepare_cached(&sql).await?;
                    client.query(&statement, &[&ids]).await
                })
            })
            .await?;
        let mut by_id: HashMap<String, Vec<PositionCells>> = HashMap::new();
        for row in rows {
            let id: String = row.try_get(0).map_err(|e| self.row_error(&e))?;
            let position = (
                row.try_get(1).map_err(|e| self.row_error(&e))?,
                row.try_get(2).map_err(|e| self.row_error(&e))?,
            );
            by_id.entry(id).or_default().push(position);
        }
        Ok(by_id
            .into_iter()
            .map(|(id, rows)| {
                let p = Self::portfolio_from_rows(&id, rows.into_iter());
                (id, p)
            })
            .collect())
    }
}

#[async_trait::async_trait]
impl MetaLoader for PostgresSource {
    async fn probe_version(&self) -> Result<String, DataError> {
        let sql = self.sql.version.clone();
        let row = self
            .pool
            .run("data_version", move |client| {
                Box::pin(async move {
                    let statement = client.prepare_cached(&sql).await?;
                    client.query_one(&statement, &[]).await
                })
            })
            .await?;
        let epoch: String = row.try_get(0).map_err(|e| self.row_error(&e))?;
        let version: i64 = row.try_get(1).map_err(|e| self.row_error(&e))?;
        Ok(version_string(&epoch, version))
    }

    async fn load_meta(&self) -> Result<MarketMeta, DataError> {
        let (q_version, q_calendar, q_instruments) = (
            self.sql.version.clone(),
            self.sql.calendar.clone(),
            self.sql.instruments.clone(),
        );
        let (version, calendar, instruments) = self
            .pool
            .run("meta", move |client| {
                Box::pin(async move {
                    // One snapshot for the three reads, so they describe one version.
                    client
                        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                        .await?;
                    let read = async {
                        let v = client.query_one(&q_version, &[]).await?;
                        let calendar = client.query(&q_calendar, &[]).await?;
                        let instruments = client.query(&q_instruments, &[]).await?;
                        Ok::<_, tokio_postgres::Error>((v, calendar, instruments))
                    };
                    let out = read.await;
                    let _ = client.batch_execute("COMMIT").await;
                    out
                })
            })
            .await?;
        let epoch: String = version.try_get(0).map_err(|e| self.row_error(&e))?;
        let counter: i64 = version.try_get(1).map_err(|e| self.row_error(&e))?;
        let calendar = calendar
            .iter()
            .map(|r| r.try_get::<_, NaiveDate>(0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.row_error(&e))?;
        let instruments = instruments
            .iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<HashSet<_>, _>>()
            .map_err(|e| self.row_error(&e))?;
        Ok(MarketMeta {
            version: version_string(&epoch, counter),
            calendar,
            instruments,
        })
    }
}

#[async_trait::async_trait]
impl MarketDataSource for PostgresSource {
    fn snapshot(&self) -> SnapshotId {
        SnapshotId {
            source: "postgres".into(),
            version: self
                .meta
                .cached()
                .map(|m| m.version.clone())
                .unwrap_or_else(|| "unloaded".into()),
        }
    }

    async fn resolve_as_of(&self, as_of: Option<NaiveDate>) -> Result<NaiveDate, DataError> {
        self.meta.get(self).await?.resolve_as_of(as_of)
    }

    async fn price_window(
        &self,
        instruments: &[&str],
        as_of: NaiveDate,
        lookback_returns: usize,
    ) -> Result<PriceWindow, DataError> {
        let mut meta = self.meta.get(self).await?;
        // The data may change between reading the calendar and the window;
        // the window query reports the version it saw, and a mismatch
        // reloads the calendar and asks again.
        for _ in 0..3 {
            if let Some(window) = self
                .fetch_window(&meta, instruments, as_of, lookback_returns)
                .await?
            {
                return Ok(window);
            }
            meta = self.meta.reload(self, true).await?;
        }
        Err(DataError::Unavailable(
            "the market data kept changing while a price window was read; retry".into(),
        ))
    }

    async fn portfolio(&self, id: &str) -> Result<Option<StoredPortfolio>, DataError> {
        let sql = self.sql.portfolio.clone();
        let owned_id = id.to_owned();
        let rows = self
            .pool
            .run("portfolio", move |client| {
                Box::pin(async move {
                    let statement = client.prepare_cached(&sql).await?;
                    client.query(&statement, &[&owned_id]).await
                })
            })
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut positions = Vec::with_capacity(rows.len());
        for row in rows {
            positions.push((
                row.try_get(0).map_err(|e| self.row_error(&e))?,
                row.try_get(1).map_err(|e| self.row_error(&e))?,
            ));
        }
        Ok(Some(Self::portfolio_from_rows(id, positions.into_iter())))
    }

    async fn portfolios(
        &self,
        ids: &[&str],
    ) -> Result<HashMap<String, StoredPortfolio>, DataError> {
        PostgresSource::portfolios(self, ids).await
    }

    async fn portfolio_ids(&self) -> Result<Vec<String>, DataError> {
        let sql = self.sql.portfolio_ids.clone();
        let rows = self
            .pool
            .run("portfolio_ids", move |client| {
                Box::pin(async move { client.query(&sql, &[]).await })
            })
            .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(|e| self.row_error(&e)))
            .collect()
    }

    async fn has_instrument(&self, instrument: &str) -> Result<bool, DataError> {
        Ok(self.meta.get(self).await?.instruments.contains(instrument))
    }
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
                version_ttl: Duration::from_secs(1),
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

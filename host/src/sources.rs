//! The data-source settings (`--data-source`, `--postgres-*`,
//! `--clickhouse-*`) and the construction of the source they select, shared
//! by `serve`, `score`, `score-file` and `db`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use riskhost_db::{DbError, PgPool, PgSettings, Warehouse, WarehouseSettings};
use riskhost_market::{ClickHouseSource, MarketDataSource, PostgresSource};

/// Which backend serves prices and stored portfolios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum DataSourceKind {
    /// The bundled sample data, or `--prices FILE.csv`, in memory.
    Embedded,
    /// PostgreSQL at `--postgres-url`.
    Postgres,
    /// ClickHouse at `--clickhouse-url`.
    Clickhouse,
}

/// Data-source settings.
#[derive(Debug, Clone, Args)]
pub(crate) struct DataArgs {
    /// Where prices and stored portfolios come from.
    #[arg(
        long,
        env = "RISKHOST_DATA_SOURCE",
        value_enum,
        default_value = "embedded"
    )]
    pub(crate) data_source: DataSourceKind,
    /// PostgreSQL connection URL, e.g. `postgres://user@127.0.0.1:5432/db`.
    #[arg(long, env = "RISKHOST_POSTGRES_URL", hide_env_values = true)]
    pub(crate) postgres_url: Option<String>,
    /// Schema of riskhost's PostgreSQL tables.
    #[arg(long, env = "RISKHOST_POSTGRES_SCHEMA", default_value = "riskhost")]
    pub(crate) postgres_schema: String,
    /// Most pooled PostgreSQL connections.
    #[arg(long, env = "RISKHOST_POSTGRES_POOL_SIZE", default_value_t = 16)]
    pub(crate) postgres_pool_size: usize,
    /// How long a query waits for a pooled connection, in ms (then 503).
    #[arg(
        long,
        env = "RISKHOST_POSTGRES_WAIT_TIMEOUT_MS",
        default_value_t = 2000
    )]
    pub(crate) postgres_wait_timeout_ms: u64,
    /// How long opening a PostgreSQL connection may take, in ms.
    #[arg(
        long,
        env = "RISKHOST_POSTGRES_CONNECT_TIMEOUT_MS",
        default_value_t = 2000
    )]
    pub(crate) postgres_connect_timeout_ms: u64,
    /// Server-side limit of one PostgreSQL statement, in ms.
    #[arg(
        long,
        env = "RISKHOST_POSTGRES_STATEMENT_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub(crate) postgres_statement_timeout_ms: u64,
    /// ClickHouse HTTP URL, e.g. `http://127.0.0.1:8123`; also enables score events.
    #[arg(long, env = "RISKHOST_CLICKHOUSE_URL", hide_env_values = true)]
    pub(crate) clickhouse_url: Option<String>,
    /// ClickHouse database of riskhost's tables (market data and score events).
    #[arg(long, env = "RISKHOST_CLICKHOUSE_DATABASE", default_value = "riskhost")]
    pub(crate) clickhouse_database: String,
    /// Bound of one ClickHouse query or insert, in ms.
    #[arg(long, env = "RISKHOST_CLICKHOUSE_TIMEOUT_MS", default_value_t = 5000)]
    pub(crate) clickhouse_timeout_ms: u64,
    /// How long a database's data version is trusted before it is re-checked, in ms.
    #[arg(long, env = "RISKHOST_DATA_VERSION_TTL_MS", default_value_t = 1000)]
    pub(crate) data_version_ttl_ms: u64,
}

impl DataArgs {
    pub(crate) fn version_ttl(&self) -> Duration {
        Duration::from_millis(self.data_version_ttl_ms)
    }

    /// PostgreSQL settings, if a URL is configured.
    pub(crate) fn postgres(&self) -> Option<PgSettings> {
        self.postgres_url.as_ref().map(|url| PgSettings {
            url: url.clone(),
            schema: self.postgres_schema.clone(),
            pool_size: self.postgres_pool_size.max(1),
            wait_timeout: Duration::from_millis(self.postgres_wait_timeout_ms),
            connect_timeout: Duration::from_millis(self.postgres_connect_timeout_ms),
            statement_timeout: Duration::from_millis(self.postgres_statement_timeout_ms.max(1)),
        })
    }

    /// ClickHouse settings, if a URL is configured.
    pub(crate) fn clickhouse(&self) -> Option<WarehouseSettings> {
        self.clickhouse_url.as_ref().map(|url| WarehouseSettings {
            url: url.clone(),
            database: self.clickhouse_database.clone(),
            timeout: Duration::from_millis(self.clickhouse_timeout_ms.max(1)),
        })
    }

    pub(crate) fn require_postgres(&self) -> anyhow::Result<PgSettings> {
        self.postgres()
            .context("PostgreSQL is not configured: give --postgres-url or RISKHOST_POSTGRES_URL")
    }

    pub(crate) fn require_clickhouse(&self) -> anyhow::Result<WarehouseSettings> {
        self.clickhouse().context(
            "ClickHouse is not configured: give --clickhouse-url or RISKHOST_CLICKHOUSE_URL",
        )
    }
}

/// Opens the PostgreSQL pool, runs the migrations (retrying for up to
/// `patience` while the database comes up) and starts the pool metrics.
pub(crate) async fn open_postgres(
    settings: PgSettings,
    patience: Duration,
) -> anyhow::Result<PgPool> {
    open_postgres_pool("postgres", settings, patience).await
}

/// [`open_postgres`] for a pool of its own, named `name` in the metrics.
pub(crate) async fn open_postgres_pool(
    name: &'static str,
    settings: PgSettings,
    patience: Duration,
) -> anyhow::Result<PgPool> {
    let pool = PgPool::new(name, settings)?;
    let deadline = std::time::Instant::now() + patience;
    loop {
        match riskhost_db::migrate(&pool).await {
            Ok(applied) => {
                if !applied.is_empty() {
                    tracing::info!(?applied, schema = %pool.settings().schema, "PostgreSQL migrations applied");
                }
                break;
            }
            Err(DbError::Unavailable(message)) if std::time::Instant::now() < deadline => {
                tracing::warn!("PostgreSQL not ready, retrying: {message}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).context("cannot migrate the PostgreSQL schema"),
        }
    }
    pool.spawn_metrics(Duration::from_secs(1));
    Ok(pool)
}

/// The source `args` select; `embedded` is the caller's in-memory source.
pub(crate) async fn open_source(
    args: &DataArgs,
    embedded: impl FnOnce() -> anyhow::Result<Arc<dyn MarketDataSource>>,
) -> anyhow::Result<Arc<dyn MarketDataSource>> {
    let source: Arc<dyn MarketDataSource> = match args.data_source {
        DataSourceKind::Embedded => return embedded(),
        DataSourceKind::Postgres => {
            let pool = open_postgres(args.require_postgres()?, Duration::from_secs(30)).await?;
            Arc::new(PostgresSource::new(pool, args.version_ttl()))
        }
        DataSourceKind::Clickhouse => {
            let wh = Warehouse::new(args.require_clickhouse()?)?;
            riskhost_market::create_clickhouse_tables(&wh)
                .await
                .context("cannot create the ClickHouse market tables")?;
            Arc::new(ClickHouseSource::new(wh, args.version_ttl()))
        }
    };
    // Load the calendar now: start-up says at once whether the data is usable.
    match source.resolve_as_of(None).await {
        Ok(last) => tracing::info!(snapshot = %source.snapshot(), %last, "market data ready"),
        Err(e) => tracing::warn!("market data not usable yet: {e}"),
    }
    Ok(source)
}

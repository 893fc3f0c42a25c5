//! The composition root's parts: builds each service a command needs from
//! its settings, once, for `serve`, `score`, `score-file` and `model test`
//! alike, so no command assembles the scoring path its own way.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use riskhost_auth::{RateLimits, RateSettings};
use riskhost_cache::ScoreCache;
use riskhost_db::Warehouse;
use riskhost_engine::{ModelEngine, SandboxLimits};
use riskhost_events::ClickHouseSink;
use riskhost_events::{EventSink, LogSink, NoSink};
use riskhost_market::{EmbeddedSource, MarketDataSource};
use riskhost_models::ModelRegistry;
use riskhost_scoring::{ScoringService, ScoringSettings};

use crate::config::{EventArgs, EventsKind, KeysSourceKind, ServeArgs, SourceArgs};
use crate::sources::DataArgs;

/// The async runtime every command runs on.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// What every scoring command is made of: one engine, one registry, one
/// market data source. Each command adds its own way of loading models and
/// its own memo, then asks for the [`ScoringService`].
pub(crate) struct Services {
    pub(crate) engine: Arc<ModelEngine>,
    pub(crate) registry: Arc<ModelRegistry>,
    pub(crate) market: Arc<dyn MarketDataSource>,
}

impl Services {
    pub(crate) fn new(
        sandbox: SandboxLimits,
        registry: ModelRegistry,
        market: Arc<dyn MarketDataSource>,
    ) -> anyhow::Result<Services> {
        let engine = ModelEngine::new(sandbox).context("cannot start the wasm engine")?;
        Ok(Services {
            engine: Arc::new(engine),
            registry: Arc::new(registry),
            market,
        })
    }

    /// The scoring path over these services.
    pub(crate) fn scoring(
        &self,
        cache: Arc<dyn ScoreCache>,
        settings: ScoringSettings,
    ) -> ScoringService {
        ScoringService::new(
            self.engine.clone(),
            self.registry.clone(),
            self.market.clone(),
            cache,
            settings,
        )
    }
}

/// The embedded source: `--prices FILE.csv`, or the bundled sample data.
pub(crate) fn market_source(
    prices: Option<&std::path::Path>,
) -> anyhow::Result<Arc<dyn MarketDataSource>> {
    Ok(match prices {
        Some(path) => {
            let table = riskhost_market::load_prices_csv_file(path)
                .with_context(|| format!("cannot load prices from {}", path.display()))?;
            Arc::new(EmbeddedSource::from_table(table, "csv"))
        }
        None => Arc::new(EmbeddedSource::bundled()),
    })
}

/// The market data source `--data-source` selects (`embedded`: `--prices` or
/// the bundled data).
pub(crate) async fn open_market(sources: &SourceArgs) -> anyhow::Result<Arc<dyn MarketDataSource>> {
    crate::sources::open_source(&sources.data, || market_source(sources.prices.as_deref())).await
}

/// The score-event sink `--events` selects.
pub(crate) async fn event_sink(
    data: &DataArgs,
    args: &EventArgs,
    data_dir: &Path,
) -> anyhow::Result<Arc<dyn EventSink>> {
    let kind = match (args.events, data.clickhouse()) {
        (EventsKind::Auto, Some(_)) => EventsKind::Clickhouse,
        (EventsKind::Auto, None) => EventsKind::None,
        (kind, _) => kind,
    };
    Ok(match kind {
        EventsKind::None | EventsKind::Auto => Arc::new(NoSink),
        EventsKind::Log => Arc::new(LogSink),
        EventsKind::Clickhouse => {
            let wh = Warehouse::new(data.require_clickhouse()?)?;
            let sink = ClickHouseSink::start(wh, &args.settings(data_dir)).await?;
            tracing::info!(table = %sink.table(), "score events go to ClickHouse");
            sink
        }
    })
}

/// The key source, anonymous-scoring flag and rate limits `args` select.
pub(crate) async fn authenticator(
    args: &ServeArgs,
) -> anyhow::Result<riskhost_auth::Authenticator> {
    use riskhost_auth::KeySource;
    use riskhost_auth::StaticKeys;
    let configured = args
        .auth
        .configured_keys()
        .map_err(anyhow::Error::msg)
        .context("invalid API key configuration")?;
    let configured = StaticKeys::new(configured).map_err(anyhow::Error::msg)?;
    let source: Arc<dyn KeySource> = match args.auth.keys_source {
        KeysSourceKind::Config => Arc::new(configured),
        KeysSourceKind::Postgres => {
            let pool = crate::sources::open_postgres(
                args.sources.data.require_postgres()?,
                Duration::from_secs(30),
            )
            .await?;
            Arc::new(riskhost_auth::PostgresKeys::new(
                pool,
                configured,
                Duration::from_millis(args.auth.keys_cache_ttl_ms),
            ))
        }
    };
    let mut rates = RateLimits::new(RateSettings {
        per_minute: args.auth.rate_limit_per_minute,
        burst: args.auth.rate_limit_burst,
        failures_per_minute: args.auth.auth_failures_per_minute,
        failure_burst: args.auth.auth_failure_burst,
    });
    let shared_rates = args.redis.rate_limit_settings(args.auth.rate_limit_store)?;
    let rate_store = if shared_rates.is_some() {
        "redis"
    } else {
        "local"
    };
    if let Some(settings) = shared_rates {
        rates = rates.with_shared(riskhost_auth::SharedRate::connect(settings).await?);
    }
    let rates = Arc::new(rates);
    rates.spawn_upkeep(Duration::from_secs(60));
    tracing::info!(keys = %source.describe(), rate_per_minute = args.auth.rate_limit_per_minute, burst = args.auth.rate_limit_burst, rate_store, "API keys");
    if args.auth.keys_source == KeysSourceKind::Config
        && args.auth.api_keys.is_empty()
        && args.auth.admin_token.is_none()
        && args.auth.api_keys_file.is_none()
    {
        if args.auth.anonymous_scoring {
            tracing::warn!(
                "no API keys configured: the admin routes answer 401 (see `riskhost key new`)"
            );
        } else {
            tracing::warn!(
                "no API keys configured: every /v1 route answers 401 (see `riskhost key new`)"
            );
        }
    }
    if args.auth.anonymous_scoring {
        tracing::warn!(
            "ANONYMOUS SCORING IS ON (--anonymous-scoring): anyone who can reach this port may score and read models and history without a key. Use it for local runs only."
        );
        eprintln!(
            "WARNING: anonymous scoring is on (--anonymous-scoring): callers without an API key may score. Local runs only."
        );
    }
    Ok(riskhost_auth::Authenticator::new(
        source,
        args.auth.anonymous_scoring,
        rates,
    ))
}

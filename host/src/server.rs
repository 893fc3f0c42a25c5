//! Assembles the server from configuration and runs it until shutdown.
//!
//! Shutdown lives here and only here: on SIGTERM or Ctrl-C, `/readyz` turns
//! unready; after `--shutdown-delay-secs` (still serving, so load balancers
//! can notice) the listener stops accepting, in-flight requests get the
//! grace period to finish, buffered score events are flushed, and the
//! process exits with status 0.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;

use crate::api::{self, AppState, HttpLimits};
use crate::cache::redis::RedisCache;
use crate::cache::{InProcessCache, ScoreCache, TieredCache};
use crate::config::{ServeArgs, SourceArgs};
use crate::deploy::{DeploySettings, ModelManager};
use crate::engine::ModelEngine;
use crate::market::{EmbeddedSource, MarketDataSource};
use crate::registry::ModelRegistry;
use crate::scoring::ScoringService;
use crate::store::ModelStore;
use crate::watcher::{self, WatchSettings};

/// The market data source the configuration asks for.
/// The embedded source: `--prices FILE.csv`, or the bundled sample data.
pub fn market_source(
    prices: Option<&std::path::Path>,
) -> anyhow::Result<Arc<dyn MarketDataSource>> {
    Ok(match prices {
        Some(path) => {
            let table = crate::market::csv::load_prices_csv_file(path)
                .with_context(|| format!("cannot load prices from {}", path.display()))?;
            Arc::new(EmbeddedSource::from_table(table, "csv"))
        }
        None => Arc::new(EmbeddedSource::bundled()),
    })
}

/// The market data source `--data-source` selects (`embedded`: `--prices` or
/// the bundled data).
pub async fn open_market(sources: &SourceArgs) -> anyhow::Result<Arc<dyn MarketDataSource>> {
    crate::market::connect::open_source(&sources.data, || market_source(sources.prices.as_deref()))
        .await
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let metrics = crate::telemetry::init_metrics()?;
    let engine = Arc::new(ModelEngine::new(args.sources.sandbox.limits())?);
    let registry = Arc::new(ModelRegistry::with_standby_capacity(
        args.hot_swap.standby_versions,
    ));
    let store = ModelStore::open(&args.hot_swap.data_dir).with_context(|| {
        format!(
            "cannot open the model store in {}",
            args.hot_swap.data_dir.display()
        )
    })?;
    let signatures = args
        .hot_swap
        .signing
        .policy()
        .context("invalid signing settings")?;
    if signatures.required {
        tracing::info!(trusted = ?signatures.trusted, "signatures required: unsigned or untrusted models are refused");
    } else if !signatures.trusted.is_empty() {
        tracing::warn!(
            "trusted keys are configured but --require-signatures is off: signatures are checked and only logged"
        );
    }
    let models = ModelManager::new(
        engine.clone(),
        registry.clone(),
        Arc::new(store),
        DeploySettings {
            bulkhead: args.bulkhead(),
            artifact_cache: args.hot_swap.artifact_cache,
            signatures: Arc::new(signatures),
        },
    );
    let market = open_market(&args.sources).await?;
    let event_args = crate::events::EventArgs {
        data_dir: args.hot_swap.data_dir.clone(),
        ..args.events.clone()
    };
    let events = crate::db::event_sink(&args.sources.data, &event_args).await?;
    let snapshot = market.snapshot();
    tracing::info!(source = %snapshot.source, version = %snapshot.version, "market data ready");
    let l1 = InProcessCache::new(args.cache_max_mib << 20);
    // One trait, two backends: the tier layout is chosen here, once.
    let cache: Arc<dyn ScoreCache> = match args.redis.settings() {
        None => Arc::new(l1),
        Some(settings) => Arc::new(TieredCache::new(l1, RedisCache::connect(settings).await?)),
    };
    let scoring = ScoringService::new(
        engine.clone(),
        registry.clone(),
        market,
        cache,
        args.scoring(),
    )
    .with_events(events.clone());
    let auth = authenticator(&args).await?;
    let state = Arc::new(AppState {
        scoring,
        metrics: metrics.clone(),
        shutting_down: AtomicBool::new(false),
        auth,
        models: models.clone(),
    });
    let app = api::router(
        state.clone(),
        HttpLimits {
            max_body_bytes: args.max_body_bytes,
            max_batch_body_bytes: args.max_batch_body_bytes,
            requests: crate::limits::RequestLimits::new(
                usize::try_from(args.max_concurrent_requests).unwrap_or(usize::MAX),
                Duration::from_millis(args.request_timeout_ms),
            ),
        },
    );

    // Handle SIGTERM from before the port opens: a signal during start-up
    // must shut down cleanly, not take the default (fatal) action.
    let signal = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    // Scripts and tests read this line to find the port.
    println!("riskhost listening on http://{address}");
    tracing::info!(%address, "listening");

    // Serve while models load: /healthz answers at once, /readyz once the
    // store's active versions are restored and the plugins directory is
    // scanned; then the directory is watched for the life of the process.
    let loading = {
        let started = std::time::Instant::now();
        let overrides: Vec<String> = engine.limits().overrides.keys().cloned().collect();
        let dir = args.sources.plugins.clone();
        let settings = WatchSettings {
            enabled: args.hot_swap.watch,
            debounce: Duration::from_millis(args.hot_swap.watch_debounce_ms),
            settle: Duration::from_millis(args.hot_swap.watch_settle_ms),
            unload_on_delete: args.hot_swap.unload_on_delete,
            max_component_bytes: engine.limits().max_component_bytes,
        };
        tokio::spawn(async move {
            models.restore().await;
            let registry = models.registry().clone();
            watcher::run(models, dir, settings, move || {
                registry.mark_initial_load_done();
                for name in &overrides {
                    if !registry.active().contains_key(name) {
                        tracing::warn!(model = %name, "--model-limits names a model that is not loaded; the limits apply if it is loaded later");
                    }
                }
                tracing::info!(
                    models = registry.active().len(),
                    failures = registry.failures().len(),
                    ms = started.elapsed().as_millis() as u64,
                    "ready"
                );
            })
            .await;
        })
    };

    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            metrics.run_upkeep();
        }
    });

    let shutdown_started = Arc::new(tokio::sync::Notify::new());
    let delay = Duration::from_secs(args.shutdown_delay_secs);
    let server = {
        let (state, shutdown_started) = (state.clone(), shutdown_started.clone());
        // The peer address feeds the per-address limit of anonymous callers.
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            signal.await;
            state.shutting_down.store(true, Ordering::Release);
            if !delay.is_zero() {
                tracing::info!(
                    delay_secs = delay.as_secs(),
                    "shutdown requested: not ready, still serving until load balancers notice"
                );
                tokio::time::sleep(delay).await;
            }
            tracing::info!("shutdown: listener closed, draining in-flight requests");
            shutdown_started.notify_one();
        })
    };
    let server = tokio::spawn(server.into_future());
    let grace = Duration::from_secs(args.shutdown_grace_secs);
    tokio::select! {
        result = server => result.context("the server task failed")?.context("the server failed")?,
        () = async { shutdown_started.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests did not finish within the grace period");
        }
    }
    loading.abort();
    // Score events still in memory go to ClickHouse, or to the spool.
    events.flush(Duration::from_secs(10)).await;
    tracing::info!("stopped");
    Ok(())
}

/// The key source, anonymous-scoring flag and rate limits `args` select.
async fn authenticator(args: &ServeArgs) -> anyhow::Result<crate::auth::Authenticator> {
    use crate::auth::keys::StaticKeys;
    use crate::auth::{KeySource, KeysSourceKind};
    let configured = args
        .auth
        .configured_keys()
        .map_err(anyhow::Error::msg)
        .context("invalid API key configuration")?;
    let configured = StaticKeys::new(configured).map_err(anyhow::Error::msg)?;
    let source: Arc<dyn KeySource> = match args.auth.keys_source {
        KeysSourceKind::Config => Arc::new(configured),
        KeysSourceKind::Postgres => {
            let pool = crate::market::connect::open_postgres(
                args.sources.data.require_postgres()?,
                Duration::from_secs(30),
            )
            .await?;
            Arc::new(crate::auth::postgres::PostgresKeys::new(
                pool,
                configured,
                Duration::from_millis(args.auth.keys_cache_ttl_ms),
            ))
        }
    };
    let rates = Arc::new(crate::limits::RateLimits::new(
        crate::limits::RateSettings {
            per_minute: args.auth.rate_limit_per_minute,
            burst: args.auth.rate_limit_burst,
        },
    ));
    rates.spawn_upkeep(Duration::from_secs(60));
    tracing::info!(keys = %source.describe(), rate_per_minute = args.auth.rate_limit_per_minute, burst = args.auth.rate_limit_burst, "API keys");
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
    Ok(crate::auth::Authenticator::new(
        source,
        args.auth.anonymous_scoring,
        rates,
    ))
}

/// Resolves on SIGTERM or Ctrl-C. The SIGTERM handler is installed now,
/// not when the future is first polled.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot handle SIGTERM")?;
    Ok(async move {
        let ctrl_c = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let terminate = async move {
            terminate.recv().await;
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => {},
            () = terminate => {},
        }
    })
}

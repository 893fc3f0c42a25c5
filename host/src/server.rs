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

use std::path::PathBuf;

use metrics_exporter_prometheus::PrometheusHandle;
use riskhost_cache::{InProcessCache, RedisCache, ScoreCache, TieredCache};
use riskhost_events::EventSink;
use riskhost_http::{AppState, HttpLimits, RequestLimits};
use riskhost_models::{
    DeploySettings, ModelManager, ModelRegistry, ModelStore, WatchSettings, watch_directory,
};

use riskhost_fleet::SharedRegistry;

use crate::config::{ModelStoreKind, RunBackend, ServeArgs};
use crate::services::{Services, authenticator, event_sink, open_market};

/// `riskhost serve`: builds the server from `args`, binds its port and
/// runs it until SIGTERM or Ctrl-C.
pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Handle SIGTERM from the very start: a signal during start-up must shut
    // down cleanly, not take the default (fatal) action.
    let signal = shutdown_signal()?;
    let server = Server::build(&args).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    run(listener, server, signal).await
}

/// `riskhost serve FLAGS` inside the caller's process: `flags` are parsed
/// exactly as the command line's (environment and defaults included), and
/// the server is served on `listener` until `shutdown` resolves. Tests run
/// the real server this way without a child process.
pub async fn serve_in_process(
    flags: &[&str],
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use clap::Parser as _;
    let cli = crate::config::Cli::try_parse_from(["riskhost", "serve"].iter().chain(flags))?;
    let crate::config::Command::Serve(args) = cli.command else {
        anyhow::bail!("`serve` flags parsed as another command");
    };
    let server = Server::build(&args).await?;
    run(listener, server, shutdown).await
}

/// Everything `serve` runs, built from its settings and not yet listening.
pub(crate) struct Server {
    state: Arc<AppState>,
    app: axum::Router,
    models: Arc<ModelManager>,
    /// The shared registry this replica follows (`--model-store postgres`).
    fleet: Option<Arc<SharedRegistry>>,
    events: Arc<dyn EventSink>,
    metrics: PrometheusHandle,
    plugins: PathBuf,
    watch: WatchSettings,
    shutdown_delay: Duration,
    shutdown_grace: Duration,
}

impl Server {
    pub(crate) async fn build(args: &ServeArgs) -> anyhow::Result<Server> {
        let metrics = crate::telemetry::init_metrics()?;
        let market = open_market(&args.sources).await?;
        let services = Services::new(
            args.sources.sandbox.limits(),
            ModelRegistry::with_standby_capacity(args.hot_swap.standby_versions),
            market,
        )?;
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
            services.engine.clone(),
            services.registry.clone(),
            Arc::new(store),
            DeploySettings {
                bulkhead: args.bulkhead(),
                artifact_cache: args.hot_swap.artifact_cache,
                compilation: Arc::new(args.hot_swap.compile.compilation()?),
                signatures: Arc::new(signatures),
                release_freed_memory: Some(crate::allocator::release_freed_memory),
            },
        );
        let fleet = shared_registry(args, &models)?;
        let catalog: Arc<dyn riskhost_models::ModelCatalog> = match &fleet {
            Some(fleet) => fleet.clone(),
            None => models.clone(),
        };
        let events = event_sink(&args.sources.data, &args.events, &args.hot_swap.data_dir).await?;
        let snapshot = services.market.snapshot();
        tracing::info!(source = %snapshot.source, version = %snapshot.version, "market data ready");
        let l1 = InProcessCache::new(args.cache_max_mib << 20);
        // One trait, two backends: the tier layout is chosen here, once.
        let cache: Arc<dyn ScoreCache> = match args.redis.settings() {
            None => Arc::new(l1),
            Some(settings) => Arc::new(TieredCache::new(l1, RedisCache::connect(settings).await?)),
        };
        let scoring = Arc::new(
            services
                .scoring(cache, args.scoring())
                .with_events(events.clone()),
        );
        // Challenger cells are scored by this task; it ends with `scoring`.
        let _challengers = scoring.start_challengers();
        if let Some(fleet) = &fleet {
            // The fleet's challengers, applied by every reconcile.
            let scoring = Arc::downgrade(&scoring);
            fleet.on_challengers(Arc::new(move |wanted| {
                let scoring = scoring.clone();
                Box::pin(async move {
                    if let Some(scoring) = scoring.upgrade() {
                        scoring.follow_challengers(wanted).await;
                    }
                })
            }));
        }
        let runs = open_runs(args, &scoring).await?;
        let state = Arc::new(AppState {
            runs,
            run_body_limit: args.max_batch_body_bytes,
            scoring,
            metrics: metrics.clone(),
            shutting_down: AtomicBool::new(false),
            auth: authenticator(args).await?,
            oci: Arc::new(riskhost_oci::OciClient::new(
                args.hot_swap
                    .oci
                    .settings(services.engine.limits().max_component_bytes)?,
            )),
            models: models.clone(),
            catalog,
            backtests: riskhost_backtest::BacktestStore::new(args.backtest_store_mib << 20),
            backtest_limits: args.backtest.limits(),
        });
        let app = riskhost_http::router(
            state.clone(),
            HttpLimits {
                max_body_bytes: args.max_body_bytes,
                max_batch_body_bytes: args.max_batch_body_bytes,
                requests: RequestLimits::new(
                    usize::try_from(args.max_concurrent_requests).unwrap_or(usize::MAX),
                    Duration::from_millis(args.request_timeout_ms),
                ),
                access_log: args.access_log.into(),
            },
        );
        let engine_limits = services.engine.limits();
        Ok(Server {
            state,
            app,
            models,
            fleet,
            events,
            metrics,
            plugins: args.sources.plugins.clone(),
            watch: WatchSettings {
                enabled: args.hot_swap.watch,
                debounce: Duration::from_millis(args.hot_swap.watch_debounce_ms),
                settle: Duration::from_millis(args.hot_swap.watch_settle_ms),
                unload_on_delete: args.hot_swap.unload_on_delete,
                max_component_bytes: engine_limits.max_component_bytes,
            },
            shutdown_delay: Duration::from_secs(args.shutdown_delay_secs),
            shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        })
    }
}

/// The run backend `--runs` names.
async fn open_runs(
    args: &ServeArgs,
    scoring: &Arc<riskhost_scoring::ScoringService>,
) -> anyhow::Result<Arc<dyn riskhost_runs::Runs>> {
    let max_models = args.scoring().batch.max_models;
    Ok(match args.runs.backend {
        RunBackend::Local => Arc::new(
            riskhost_runs::LocalRuns::open(
                args.runs.local(&args.hot_swap.data_dir),
                scoring.clone(),
                max_models,
            )
            .await
            .context("cannot open the run store")?,
        ),
        RunBackend::Nats => {
            let data = &args.sources.data;
            let mut postgres = data
                .require_postgres()
                .context("--runs nats keeps run state in PostgreSQL")?;
            // Workers touch PostgreSQL a few times per chunk of hundreds of
            // portfolios: a small pool, apart from scoring's.
            postgres.pool_size = postgres.pool_size.min(4);
            let pool =
                crate::sources::open_postgres_pool("runs", postgres, Duration::from_secs(30))
                    .await?;
            let warehouse = riskhost_db::Warehouse::new(
                data.require_clickhouse()
                    .context("--runs nats writes run results to ClickHouse")?,
            )?;
            Arc::new(
                riskhost_runs::NatsRuns::open(
                    args.runs.nats(),
                    scoring.clone(),
                    max_models,
                    pool,
                    warehouse,
                )
                .await
                .context("cannot start the NATS run workers")?,
            )
        }
    })
}

/// The shared registry with `--model-store postgres`. Its pool connects
/// lazily and its migrations run with the first reconcile, so a replica
/// starts (and serves what it last applied) while PostgreSQL is down.
fn shared_registry(
    args: &ServeArgs,
    models: &Arc<ModelManager>,
) -> anyhow::Result<Option<Arc<SharedRegistry>>> {
    if args.hot_swap.fleet.model_store != ModelStoreKind::Postgres {
        return Ok(None);
    }
    let mut settings = args
        .sources
        .data
        .require_postgres()
        .context("--model-store postgres keeps the registry in PostgreSQL")?;
    // Admin writes and reconciles are few; they never wait behind scoring.
    settings.pool_size = settings.pool_size.min(4);
    let pool = riskhost_db::PgPool::new("registry", settings)?;
    pool.spawn_metrics(Duration::from_secs(5));
    let fleet = SharedRegistry::new(models.clone(), pool, args.hot_swap.fleet.settings())?;
    tracing::info!(replica = %args.hot_swap.fleet.settings().replica_id, "following the shared model registry in PostgreSQL");
    Ok(Some(fleet))
}

/// Serves `server` on `listener` until `shutdown` resolves, then shuts down
/// gracefully (see the module doc). Its background tasks (model loading and
/// the directory watch, metrics upkeep) end with it.
pub(crate) async fn run(
    listener: tokio::net::TcpListener,
    server: Server,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Server {
        state,
        app,
        models,
        fleet,
        events,
        metrics,
        plugins,
        watch,
        shutdown_delay,
        shutdown_grace,
    } = server;
    let address = listener.local_addr()?;
    // Scripts and tests read this line to find the port.
    println!("riskhost listening on http://{address}");
    tracing::info!(%address, "listening");

    // Serve while models load: /healthz answers at once, /readyz once the
    // store's active versions are restored and the plugins directory is
    // scanned; then the directory is watched for the life of the server.
    let loading = {
        let started = std::time::Instant::now();
        let overrides: Vec<String> = models.engine().limits().overrides.keys().cloned().collect();
        tokio::spawn(async move {
            models.restore().await;
            let registry = models.registry().clone();
            if let Some(fleet) = fleet {
                // What was last applied serves already; now the registry.
                fleet.seed(&plugins).await;
                if let Err(error) = fleet.reconcile().await {
                    tracing::warn!(%error, "the model registry is unavailable: serving the versions last applied here, marked stale");
                }
                let _following = match fleet.start() {
                    Ok(tasks) => Some(tasks),
                    Err(error) => {
                        tracing::error!(%error, "cannot follow the model registry");
                        None
                    }
                };
                registry.mark_initial_load_done();
                tracing::info!(
                    models = registry.active().len(),
                    failures = registry.failures().len(),
                    ms = started.elapsed().as_millis() as u64,
                    stale = fleet.is_stale(),
                    "ready"
                );
                // The followers live as long as this task: until shutdown.
                std::future::pending::<()>().await;
            }
            watch_directory(models, plugins, watch, move || {
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

    let upkeep = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            metrics.run_upkeep();
        }
    });

    let shutdown_started = Arc::new(tokio::sync::Notify::new());
    // When the grace period ends: the in-flight requests and the run chunks
    // being scored share it.
    let grace_ends = Arc::new(std::sync::OnceLock::new());
    let serving = {
        let (state, shutdown_started) = (state.clone(), shutdown_started.clone());
        let grace_ends = grace_ends.clone();
        // The peer address feeds the per-address limit of anonymous callers.
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            state.shutting_down.store(true, Ordering::Release);
            if !shutdown_delay.is_zero() {
                tracing::info!(
                    delay_secs = shutdown_delay.as_secs(),
                    "shutdown requested: not ready, still serving until load balancers notice"
                );
                tokio::time::sleep(shutdown_delay).await;
            }
            tracing::info!("shutdown: listener closed, draining in-flight requests and run chunks");
            let _ = grace_ends.set(tokio::time::Instant::now() + shutdown_grace);
            state.runs.stop_pulling();
            shutdown_started.notify_one();
        })
    };
    let serving = tokio::spawn(serving.into_future());
    let outcome = tokio::select! {
        result = serving => result.context("the server task failed").and_then(|r| r.context("the server failed")),
        () = async { shutdown_started.notified().await; tokio::time::sleep(shutdown_grace).await } => {
            tracing::warn!(grace_secs = shutdown_grace.as_secs(), "in-flight requests did not finish within the grace period");
            Ok(())
        }
    };
    let deadline = grace_ends
        .get()
        .copied()
        .unwrap_or_else(|| tokio::time::Instant::now() + shutdown_grace);
    match state.runs.drained(deadline).await {
        0 => tracing::info!("runs drained: every chunk being scored was written"),
        left => tracing::warn!(
            chunks = left,
            "run chunks still being scored at the end of the grace period; they are scored again after a restart"
        ),
    }
    loading.abort();
    upkeep.abort();
    // Score events still in memory go to ClickHouse, or to the spool.
    events.flush(Duration::from_secs(10)).await;
    tracing::info!("stopped");
    outcome
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

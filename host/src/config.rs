//! Every setting of riskhost, from flags or environment variables.
//!
//! Each flag has an environment variable of the same name in upper case with
//! a `RISKHOST_` prefix; a flag wins over its variable. `riskhost --help` and
//! the README's configuration table list them all.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;
use riskhost_cache::{BreakerSettings, CachePolicy, RedisSettings};
use riskhost_engine::{FuelBudget, MAX_MEMORY_MIB, ModelLimitsArg, SandboxLimits};
use riskhost_models::BulkheadLimits;
use riskhost_scoring::{BatchLimits, DynamicBatching, PortfolioLimits, ScoringSettings};

#[derive(Debug, Parser)]
#[command(
    name = "riskhost",
    version,
    about = "Serves risk models shipped as sandboxed WebAssembly components"
)]
pub struct Cli {
    /// TOML file of settings (keys are flag names); flags and env vars win over it.
    #[arg(long, global = true, env = "RISKHOST_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the HTTP server.
    Serve(ServeArgs),
    /// Print the effective server configuration (secrets redacted) and exit.
    Config(ServeArgs),
    /// Score one portfolio with one model, without a server.
    Score(ScoreArgs),
    /// Backtest a VaR model over a range of days without a server: Kupiec,
    /// Christoffersen and the Basel traffic light per portfolio, and the
    /// HTML report.
    Backtest(BacktestCommandArgs),
    /// Score a file of portfolios (one JSON portfolio per line) with the batch engine.
    ScoreFile(ScoreFileArgs),
    /// Scaffold a model project (Rust or Python) that builds to a component.
    New(crate::tooling::NewArgs),
    /// Inspect or test a model component before shipping it.
    #[command(subcommand)]
    Model(crate::tooling::ModelCommand),
    /// Risk runs on a server: submit models × portfolios, follow them, read their results.
    #[command(subcommand)]
    Run(crate::run_command::RunCommand),
    /// Replay a request's recorded scores on a server (admin key): each
    /// computed again on its recorded version, parameters, positions and
    /// data, and compared bit for bit.
    Replay(crate::replay_command::ReplayArgs),
    /// Create and manage API keys.
    #[command(subcommand)]
    Key(crate::key_command::KeyCommand),
    /// Manage the databases: apply migrations, load the sample data.
    #[command(subcommand)]
    Db(DbCommand),
    /// Write the bundled sample prices as CSV (`date,instrument,close`).
    ExportSampleData {
        /// Output file; standard output when absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the OpenAPI document of the HTTP API (what `GET /openapi.json` serves).
    Openapi,
    /// The server's compile worker: component on stdin, artifact on stdout.
    #[command(hide = true)]
    CompileWorker(CompileWorkerArgs),
}

/// `riskhost compile-worker`, started by the server only
/// (`riskhost_models::Compilation`).
#[derive(Debug, Clone, Args)]
pub(crate) struct CompileWorkerArgs {
    /// The serving engine's code settings (`fuel=0|1,key=KEY`).
    #[arg(long)]
    pub(crate) settings: String,
    /// Address space compiling may take beyond the worker's own, in MiB.
    #[arg(long)]
    pub(crate) memory_mib: u64,
}

/// Where models and data come from; shared by `serve` and `score`.
#[derive(Debug, Clone, Args)]
pub(crate) struct SourceArgs {
    /// Directory whose `.wasm` components are loaded at start-up.
    #[arg(long, env = "RISKHOST_PLUGINS", default_value = "plugins/dist")]
    pub(crate) plugins: PathBuf,
    /// Daily closes as CSV (`date,instrument,close`) instead of the bundled sample data.
    #[arg(long, env = "RISKHOST_PRICES")]
    pub(crate) prices: Option<PathBuf>,
    /// Log format.
    #[arg(
        long,
        env = "RISKHOST_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    pub(crate) log_format: LogFormat,
    #[command(flatten)]
    pub(crate) sandbox: SandboxArgs,
    #[command(flatten)]
    pub(crate) data: crate::sources::DataArgs,
}

/// `riskhost db …`.
#[derive(Debug, Subcommand)]
pub(crate) enum DbCommand {
    /// Apply the PostgreSQL migrations (the server also does at start) and
    /// create the ClickHouse tables, for whichever database is configured.
    Migrate(DbArgs),
    /// Load the bundled sample instruments, prices and portfolios into
    /// PostgreSQL and/or ClickHouse (each one configured). Idempotent.
    Seed(DbArgs),
}

#[derive(Debug, Clone, Args)]
pub(crate) struct DbArgs {
    #[command(flatten)]
    pub(crate) data: crate::sources::DataArgs,
    /// Events table to create in ClickHouse (`migrate`).
    #[arg(long, env = "RISKHOST_EVENTS_TABLE", default_value = "score_events")]
    pub(crate) events_table: String,
    /// Prices to load instead of the bundled sample (`seed`), CSV `date,instrument,close`.
    #[arg(long, env = "RISKHOST_PRICES")]
    pub(crate) prices: Option<PathBuf>,
}

/// Limits of the model sandbox.
#[derive(Debug, Clone, Args)]
pub(crate) struct SandboxArgs {
    /// Linear memory cap per model instance, in MiB.
    #[arg(long, env = "RISKHOST_MEMORY_LIMIT_MIB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_MEMORY_MIB as u64))]
    pub(crate) memory_limit_mib: u64,
    /// Base deadline of one model call, in milliseconds.
    #[arg(long, env = "RISKHOST_DEADLINE_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) deadline_ms: u64,
    /// Deadline added per job of a batch call, in microseconds.
    #[arg(long, env = "RISKHOST_DEADLINE_PER_JOB_US", default_value_t = 2000)]
    pub(crate) deadline_per_job_us: u64,
    /// Longest deadline of any call, in milliseconds.
    #[arg(long, env = "RISKHOST_DEADLINE_CAP_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) deadline_cap_ms: u64,
    /// Largest accepted component, in MiB.
    #[arg(long, env = "RISKHOST_MAX_COMPONENT_MIB", default_value_t = 64)]
    pub(crate) max_component_mib: usize,
    /// Fuel per job of a call: turns on fuel metering, a deterministic CPU
    /// budget (about one unit per wasm instruction). Off by default.
    #[arg(long, env = "RISKHOST_FUEL_PER_JOB")]
    pub(crate) fuel_per_job: Option<u64>,
    /// Fuel every call gets on top of its per-job fuel (instantiation,
    /// per-batch work); defaults to --fuel-per-job. Needs --fuel-per-job.
    #[arg(long, env = "RISKHOST_FUEL_BASE", requires = "fuel_per_job")]
    pub(crate) fuel_base: Option<u64>,
    /// Limits of one model, overriding the defaults above:
    /// `MODEL:KEY=VALUE[,KEY=VALUE…]`, e.g. `slow-legal:deadline_ms=5000,memory_mib=128`.
    /// Keys: memory_mib, deadline_ms, deadline_per_job_us, deadline_cap_ms,
    /// fuel_base, fuel_per_job, max_concurrent, max_queued. Repeat the flag
    /// for several models; the variable separates them with `;`.
    #[arg(
        long = "model-limits",
        env = "RISKHOST_MODEL_LIMITS",
        value_delimiter = ';'
    )]
    pub(crate) model_limits: Vec<ModelLimitsArg>,
}

impl SandboxArgs {
    pub(crate) fn limits(&self) -> SandboxLimits {
        let mut limits = SandboxLimits {
            memory_bytes: usize::try_from(self.memory_limit_mib).unwrap_or(MAX_MEMORY_MIB) << 20,
            deadline_base: Duration::from_millis(self.deadline_ms),
            deadline_per_job: Duration::from_micros(self.deadline_per_job_us),
            deadline_cap: Duration::from_millis(self.deadline_cap_ms),
            max_component_bytes: self.max_component_mib << 20,
            fuel: self.fuel_per_job.map(|per_job| FuelBudget {
                base: self.fuel_base.unwrap_or(per_job).max(1),
                per_job,
            }),
            ..SandboxLimits::default()
        };
        limits.add_overrides(self.model_limits.iter().cloned());
        limits
    }
}

/// `--access-log`: which answers get a `request finished` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AccessLogArg {
    /// Every answer.
    All,
    /// Answers with a 4xx or 5xx status.
    Errors,
    /// None.
    Off,
}

impl From<AccessLogArg> for riskhost_http::AccessLog {
    fn from(arg: AccessLogArg) -> Self {
        match arg {
            AccessLogArg::All => riskhost_http::AccessLog::All,
            AccessLogArg::Errors => riskhost_http::AccessLog::Errors,
            AccessLogArg::Off => riskhost_http::AccessLog::Off,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "RISKHOST_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,
    #[command(flatten)]
    pub(crate) sources: SourceArgs,
    #[command(flatten)]
    pub(crate) hot_swap: HotSwapArgs,
    /// Byte budget of the in-process score cache, in MiB.
    #[arg(long, env = "RISKHOST_CACHE_MAX_MIB", default_value_t = 256)]
    pub(crate) cache_max_mib: u64,
    /// How long a cached score is kept, in seconds.
    #[arg(long, env = "RISKHOST_CACHE_TTL_SECS", default_value_t = 3600)]
    pub(crate) cache_ttl_secs: u64,
    /// A model's own score TTL, as NAME=SECS (0 turns its memo off); repeat
    /// the flag, or separate with commas in the variable.
    #[arg(long = "model-cache-ttl", env = "RISKHOST_MODEL_CACHE_TTL", value_delimiter = ',', value_parser = parse_model_ttl)]
    pub(crate) model_cache_ttl: Vec<(String, u64)>,
    /// How long a deterministic model error (invalid input, insufficient
    /// data) is memoized, in seconds; 0 memoizes none.
    #[arg(long, env = "RISKHOST_ERROR_CACHE_TTL_SECS", default_value_t = 60)]
    pub(crate) error_cache_ttl_secs: u64,
    #[command(flatten)]
    pub(crate) redis: RedisArgs,
    /// Concurrent calls per model; further calls queue (default: one per core).
    #[arg(long, env = "RISKHOST_MAX_CONCURRENT_CALLS")]
    pub(crate) max_concurrent_calls: Option<usize>,
    /// Calls that may wait per model before new ones get 503.
    #[arg(long, env = "RISKHOST_MAX_QUEUED_CALLS", default_value_t = 1024)]
    pub(crate) max_queued_calls: usize,
    /// Which answers get a `request finished` log line: `all`, `errors`
    /// (4xx and 5xx) or `off`.
    #[arg(
        long,
        env = "RISKHOST_ACCESS_LOG",
        value_enum,
        default_value = "errors"
    )]
    pub(crate) access_log: AccessLogArg,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "RISKHOST_MAX_BODY_BYTES", default_value_t = 8 << 20)]
    pub(crate) max_body_bytes: usize,
    /// Largest accepted body of a batch request, in bytes.
    #[arg(long, env = "RISKHOST_MAX_BATCH_BODY_BYTES", default_value_t = 64 << 20)]
    pub(crate) max_batch_body_bytes: usize,
    /// Most positions in one portfolio.
    #[arg(long, env = "RISKHOST_MAX_POSITIONS", default_value_t = 10_000)]
    pub(crate) max_positions: usize,
    #[command(flatten)]
    pub(crate) batching: BatchingArgs,
    #[command(flatten)]
    pub(crate) auth: AuthArgs,
    /// Most requests served at once over the `/v1` routes; beyond it new
    /// ones get 503 `overloaded` at once (no queue).
    #[arg(long, env = "RISKHOST_MAX_CONCURRENT_REQUESTS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_concurrent_requests: u64,
    /// Longest time a `/v1` request may take, in ms, before it is answered
    /// 504 `request_timeout` (model uploads and deletes excepted).
    #[arg(long, env = "RISKHOST_REQUEST_TIMEOUT_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) request_timeout_ms: u64,
    /// How long in-flight requests may take to finish after SIGTERM, in seconds.
    #[arg(long, env = "RISKHOST_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub(crate) shutdown_grace_secs: u64,
    /// After SIGTERM, how long to keep accepting requests with `/readyz`
    /// answering 503 before draining, in seconds: time for load balancers
    /// (Kubernetes endpoints) to stop sending traffic.
    #[arg(long, env = "RISKHOST_SHUTDOWN_DELAY_SECS", default_value_t = 0)]
    pub(crate) shutdown_delay_secs: u64,
    #[command(flatten)]
    pub(crate) events: EventArgs,
    #[command(flatten)]
    pub(crate) backtest: BacktestArgs,
    /// Memory kept for finished backtests (`GET /v1/backtests/{id}`), in
    /// MiB; the oldest are evicted first past it.
    #[arg(long, env = "RISKHOST_BACKTEST_STORE_MIB", default_value_t = 64)]
    pub(crate) backtest_store_mib: u64,
    #[command(flatten)]
    pub(crate) runs: RunArgs,
}

/// Where risk runs (`POST /v1/runs`) are kept and how they are worked.
#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    /// `local`: runs kept in the data directory (`runs/`), chunks queued
    /// in this process. `nats`: every replica works every run; chunks on a
    /// NATS JetStream work queue (`--nats-url`), state in PostgreSQL
    /// (`--postgres-url`), results in ClickHouse (`--clickhouse-url`).
    #[arg(
        long = "runs",
        env = "RISKHOST_RUNS",
        value_enum,
        default_value = "local"
    )]
    pub(crate) backend: RunBackend,
    /// NATS server of `--runs nats`.
    #[arg(
        long,
        env = "RISKHOST_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub(crate) nats_url: String,
    /// Prefix of the run stream (`<PREFIX>_RUNS`), its subjects and its
    /// consumer, so several deployments can share one NATS server.
    #[arg(long, env = "RISKHOST_NATS_PREFIX", default_value = "riskhost")]
    pub(crate) nats_prefix: String,
    /// How long a chunk may go unacknowledged before NATS delivers it to
    /// another worker, in seconds; a worker scoring a long chunk says it is
    /// alive every third of it. A killed worker's chunk waits this long.
    #[arg(long, env = "RISKHOST_RUN_ACK_WAIT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) run_ack_wait_secs: u64,
    /// Workers scoring run chunks at once; each chunk is one batch call
    /// spread over the models' bulkheads.
    #[arg(long, env = "RISKHOST_RUN_WORKERS", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..=256))]
    pub(crate) run_workers: u64,
    /// Portfolios per chunk. Each chunk pays one portfolio read and one
    /// price-window read: at 256 a run reached 0.40× the batch API's
    /// evaluations/s, at 1,000 1.01× (BENCHMARKS.md, "Risk runs").
    #[arg(long, env = "RISKHOST_RUN_CHUNK_SIZE", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub(crate) run_chunk_size: u64,
    /// Most portfolios in one run (413 past it).
    #[arg(long, env = "RISKHOST_RUN_MAX_PORTFOLIOS", default_value_t = 10_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) run_max_portfolios: u64,
    /// Deliveries of a chunk that fails as a whole before it is quarantined
    /// (its portfolios then get `chunk_failed` cells).
    #[arg(long, env = "RISKHOST_RUN_MAX_DELIVERIES", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) run_max_deliveries: u32,
    /// Wait before a failed chunk's next delivery, in ms, times its
    /// deliveries so far.
    #[arg(long, env = "RISKHOST_RUN_BACKOFF_MS", default_value_t = 1000)]
    pub(crate) run_backoff_ms: u64,
}

/// Where runs are kept and worked (`--runs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RunBackend {
    Local,
    Nats,
}

impl RunArgs {
    pub(crate) fn nats(&self) -> riskhost_runs::NatsRunsSettings {
        riskhost_runs::NatsRunsSettings {
            url: self.nats_url.clone(),
            prefix: self.nats_prefix.clone(),
            workers: usize::try_from(self.run_workers).unwrap_or(2),
            chunk_size: usize::try_from(self.run_chunk_size).unwrap_or(1000),
            max_portfolios: self.run_max_portfolios,
            max_deliveries: self.run_max_deliveries,
            backoff: std::time::Duration::from_millis(self.run_backoff_ms),
            ack_wait: std::time::Duration::from_secs(self.run_ack_wait_secs),
        }
    }

    pub(crate) fn local(&self, data_dir: &std::path::Path) -> riskhost_runs::LocalRunsSettings {
        riskhost_runs::LocalRunsSettings {
            dir: data_dir.join("runs"),
            workers: usize::try_from(self.run_workers).unwrap_or(2),
            chunk_size: usize::try_from(self.run_chunk_size).unwrap_or(1000),
            max_portfolios: self.run_max_portfolios,
            max_deliveries: self.run_max_deliveries,
            backoff: std::time::Duration::from_millis(self.run_backoff_ms),
        }
    }
}

/// Bounds on one backtest (`POST /v1/backtests`, `riskhost backtest`).
#[derive(Debug, Clone, Args)]
pub(crate) struct BacktestArgs {
    /// Most scores (portfolios × tested days) in one backtest.
    #[arg(long, env = "RISKHOST_BACKTEST_MAX_CELLS", default_value_t = 250_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) backtest_max_cells: u64,
}

impl BacktestArgs {
    pub(crate) fn limits(&self) -> riskhost_scoring::BacktestLimits {
        riskhost_scoring::BacktestLimits {
            max_cells: usize::try_from(self.backtest_max_cells).unwrap_or(usize::MAX),
            ..Default::default()
        }
    }
}

impl ServeArgs {
    pub(crate) fn bulkhead(&self) -> BulkheadLimits {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        BulkheadLimits {
            max_concurrent: self.max_concurrent_calls.unwrap_or(cores).max(1),
            max_queued: self.max_queued_calls,
        }
    }

    pub(crate) fn scoring(&self) -> ScoringSettings {
        ScoringSettings {
            cache: CachePolicy {
                ttl: Duration::from_secs(self.cache_ttl_secs),
                model_ttl: self
                    .model_cache_ttl
                    .iter()
                    .map(|(name, secs)| (name.clone(), Duration::from_secs(*secs)))
                    .collect(),
                error_ttl: Duration::from_secs(self.error_cache_ttl_secs),
            },
            portfolio_limits: PortfolioLimits {
                max_positions: self.max_positions,
                ..PortfolioLimits::default()
            },
            batch: self.batching.limits(),
            dynamic: self.batching.dynamic(),
        }
    }
}

/// Batch API bounds and dynamic batching of single requests.
#[derive(Debug, Clone, Args)]
pub(crate) struct BatchingArgs {
    /// Most portfolios in one batch request.
    #[arg(long, env = "RISKHOST_BATCH_MAX_PORTFOLIOS", default_value_t = 10_000)]
    pub(crate) batch_max_portfolios: usize,
    /// Most models in one batch request.
    #[arg(long, env = "RISKHOST_BATCH_MAX_MODELS", default_value_t = 16)]
    pub(crate) batch_max_models: usize,
    /// Jobs per model call when running a batch.
    #[arg(long, env = "RISKHOST_BATCH_CHUNK_SIZE", default_value_t = 256)]
    pub(crate) batch_chunk_size: usize,
    /// Most single requests coalesced into one model call; 1 disables dynamic batching.
    #[arg(long, env = "RISKHOST_DYNAMIC_BATCH_MAX", default_value_t = 64)]
    pub(crate) dynamic_batch_max: usize,
    /// Extra wait for more requests before a call even when the model is idle, in µs (0: none).
    #[arg(long, env = "RISKHOST_DYNAMIC_BATCH_DELAY_US", default_value_t = 0)]
    pub(crate) dynamic_batch_delay_us: u64,
    /// Single requests that may wait per model version before new ones get 503.
    #[arg(long, env = "RISKHOST_DYNAMIC_BATCH_QUEUE", default_value_t = 4096)]
    pub(crate) dynamic_batch_queue: usize,
}

impl BatchingArgs {
    pub(crate) fn limits(&self) -> BatchLimits {
        BatchLimits {
            max_portfolios: self.batch_max_portfolios,
            max_models: self.batch_max_models,
            chunk_size: self.batch_chunk_size.max(1),
        }
    }

    pub(crate) fn dynamic(&self) -> DynamicBatching {
        DynamicBatching {
            max_batch: self.dynamic_batch_max.max(1),
            max_delay: Duration::from_micros(self.dynamic_batch_delay_us),
            max_queue: self.dynamic_batch_queue.max(1),
        }
    }
}

/// The shared Redis cache tier; off without `--redis-url`.
#[derive(Debug, Clone, Args)]
pub(crate) struct RedisArgs {
    /// Redis for the shared cache tier, e.g. `redis://127.0.0.1:6379/0`; the
    /// in-process tier alone without one.
    #[arg(long, env = "RISKHOST_REDIS_URL", hide_env_values = true)]
    pub(crate) redis_url: Option<String>,
    /// First segment of every Redis key, so deployments can share a Redis.
    #[arg(long, env = "RISKHOST_REDIS_PREFIX", default_value = "riskhost")]
    pub(crate) redis_prefix: String,
    /// Budget of one Redis round trip (per 1000 keys of a batch), in milliseconds.
    #[arg(long, env = "RISKHOST_REDIS_TIMEOUT_MS", default_value_t = 50)]
    pub(crate) redis_timeout_ms: u64,
    /// Budget of connecting to Redis, in milliseconds.
    #[arg(
        long,
        env = "RISKHOST_REDIS_CONNECT_TIMEOUT_MS",
        default_value_t = 1000
    )]
    pub(crate) redis_connect_timeout_ms: u64,
    /// Consecutive failed Redis operations that open the circuit breaker.
    #[arg(long, env = "RISKHOST_REDIS_BREAKER_FAILURES", default_value_t = 5)]
    pub(crate) redis_breaker_failures: u32,
    /// How long the breaker stays open before probing Redis, in milliseconds.
    #[arg(
        long,
        env = "RISKHOST_REDIS_BREAKER_COOLDOWN_MS",
        default_value_t = 1000
    )]
    pub(crate) redis_breaker_cooldown_ms: u64,
}

impl RedisArgs {
    /// The fleet-wide rate limits' settings, as `store` (None: the default)
    /// asks: the same Redis, prefix, timeouts and breaker as the cache tier.
    pub(crate) fn rate_limit_settings(
        &self,
        store: Option<RateLimitStore>,
    ) -> anyhow::Result<Option<riskhost_auth::SharedRateSettings>> {
        let cache = self.settings();
        match (store, cache) {
            (Some(RateLimitStore::Local), _) | (None, None) => Ok(None),
            (Some(RateLimitStore::Redis), None) => Err(anyhow::anyhow!(
                "--rate-limit-store redis needs --redis-url"
            )),
            (_, Some(cache)) => Ok(Some(riskhost_auth::SharedRateSettings {
                url: cache.url,
                prefix: cache.prefix,
                op_timeout: cache.op_timeout,
                connect_timeout: cache.connect_timeout,
                failure_threshold: cache.breaker.failure_threshold,
                cooldown: cache.breaker.cooldown,
            })),
        }
    }

    /// The Redis tier's settings, when one is configured.
    pub(crate) fn settings(&self) -> Option<RedisSettings> {
        let url = self.redis_url.clone().filter(|u| !u.is_empty())?;
        Some(RedisSettings {
            url,
            prefix: self.redis_prefix.clone(),
            op_timeout: Duration::from_millis(self.redis_timeout_ms.max(1)),
            connect_timeout: Duration::from_millis(self.redis_connect_timeout_ms.max(1)),
            breaker: BreakerSettings {
                failure_threshold: self.redis_breaker_failures.max(1),
                cooldown: Duration::from_millis(self.redis_breaker_cooldown_ms),
            },
        })
    }
}

/// The model store and the ways new versions arrive (hot swap).
#[derive(Debug, Clone, Args)]
pub(crate) struct HotSwapArgs {
    /// Directory of the model store: every version served, its compiled
    /// code and the active version of each model. One process per directory.
    #[arg(long, env = "RISKHOST_DATA_DIR", default_value = ".riskhost")]
    pub(crate) data_dir: PathBuf,
    /// Watch the plugins directory and deploy changed files (`false`: read it at start-up only).
    #[arg(long, env = "RISKHOST_WATCH", default_value_t = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) watch: bool,
    /// How long a file still open for writing must stay unchanged before it
    /// is loaded, in milliseconds (closed or renamed files load at once).
    #[arg(long, env = "RISKHOST_WATCH_SETTLE_MS", default_value_t = 200)]
    pub(crate) watch_settle_ms: u64,
    /// Debounce window of file events, in milliseconds.
    #[arg(long, env = "RISKHOST_WATCH_DEBOUNCE_MS", default_value_t = 50)]
    pub(crate) watch_debounce_ms: u64,
    /// Removing a file from the plugins directory unloads the model it provided.
    #[arg(long, env = "RISKHOST_UNLOAD_ON_DELETE", default_value_t = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) unload_on_delete: bool,
    /// Cache compiled components in the data dir, so restarts and rollbacks skip compilation.
    #[arg(long, env = "RISKHOST_ARTIFACT_CACHE", default_value_t = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) artifact_cache: bool,
    /// Non-active versions kept loaded (for pins and rollbacks); others load from the store on use.
    #[arg(long, env = "RISKHOST_STANDBY_VERSIONS", default_value_t = riskhost_models::DEFAULT_STANDBY_VERSIONS)]
    pub(crate) standby_versions: u64,
    #[command(flatten)]
    pub(crate) signing: SigningArgs,
    #[command(flatten)]
    pub(crate) compile: CompileArgs,
    #[command(flatten)]
    pub(crate) fleet: FleetArgs,
    #[command(flatten)]
    pub(crate) oci: OciArgs,
}

/// OCI registries models are pulled from and pushed to (`docs/oci.md`).
#[derive(Debug, Clone, Args)]
pub(crate) struct OciArgs {
    /// Registries (`host:port`) reached over plain HTTP; every other one
    /// only over HTTPS. Comma-separated.
    #[arg(long, env = "RISKHOST_OCI_INSECURE_REGISTRIES", value_delimiter = ',')]
    pub(crate) oci_insecure_registries: Vec<String>,
    /// User name for registries that use basic authentication.
    #[arg(long, env = "RISKHOST_OCI_USERNAME")]
    pub(crate) oci_username: Option<String>,
    /// Password for `--oci-username`.
    #[arg(long, env = "RISKHOST_OCI_PASSWORD", hide_env_values = true)]
    pub(crate) oci_password: Option<String>,
    /// A registry token (bearer), e.g. a GHCR personal access token.
    #[arg(long, env = "RISKHOST_OCI_TOKEN", hide_env_values = true)]
    pub(crate) oci_token: Option<String>,
    /// Bound of one push or pull, in ms.
    #[arg(long, env = "RISKHOST_OCI_TIMEOUT_MS", default_value_t = 60_000)]
    pub(crate) oci_timeout_ms: u64,
}

impl OciArgs {
    /// The client's settings; components larger than `max_component_bytes`
    /// are refused before they are downloaded.
    pub(crate) fn settings(
        &self,
        max_component_bytes: usize,
    ) -> anyhow::Result<riskhost_oci::OciSettings> {
        use riskhost_oci::OciAuth;
        let auth = match (&self.oci_username, &self.oci_password, &self.oci_token) {
            (None, None, None) => OciAuth::Anonymous,
            (Some(username), Some(password), None) => OciAuth::Basic {
                username: username.clone(),
                password: password.clone(),
            },
            (None, None, Some(token)) => OciAuth::Bearer(token.clone()),
            (Some(_), None, None) | (None, Some(_), None) => {
                anyhow::bail!("--oci-username and --oci-password go together")
            }
            _ => anyhow::bail!("give --oci-username/--oci-password or --oci-token, not both"),
        };
        Ok(riskhost_oci::OciSettings {
            insecure_registries: self
                .oci_insecure_registries
                .iter()
                .map(|r| r.trim().to_owned())
                .filter(|r| !r.is_empty())
                .collect(),
            auth,
            max_component_bytes,
            timeout: Duration::from_millis(self.oci_timeout_ms.max(1)),
        })
    }
}

/// Where versions and active pointers live (`docs/fleet.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ModelStoreKind {
    /// This replica's data dir; the plugins directory is watched.
    Local,
    /// A registry in PostgreSQL (`--postgres-url`, `--postgres-schema`)
    /// that every replica follows; the plugins directory only seeds models
    /// the registry has never held.
    Postgres,
}

/// The shared model registry of a fleet.
#[derive(Debug, Clone, Args)]
pub(crate) struct FleetArgs {
    /// Where model versions and the active version of each model live.
    #[arg(
        long,
        env = "RISKHOST_MODEL_STORE",
        value_enum,
        default_value = "local"
    )]
    pub(crate) model_store: ModelStoreKind,
    /// This replica's name in the registry's audit log and `GET /v1/fleet`
    /// (default: the host name, which is the pod name on Kubernetes).
    #[arg(long, env = "RISKHOST_REPLICA_ID")]
    pub(crate) replica_id: Option<String>,
    /// How often a replica re-reads the registry even without a
    /// notification (notifications are lost while a connection is down), in ms.
    #[arg(long, env = "RISKHOST_REGISTRY_POLL_MS", default_value_t = 5000)]
    pub(crate) registry_poll_ms: u64,
    /// Listen for the registry's notifications (LISTEN/NOTIFY); `false`
    /// leaves only the poll, e.g. behind a PgBouncer in transaction mode,
    /// which cannot carry LISTEN.
    #[arg(long, env = "RISKHOST_REGISTRY_LISTEN", default_value_t = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) registry_listen: bool,
    /// How often a replica records its heartbeat in the registry, in ms;
    /// three missed heartbeats make it stale in `GET /v1/fleet`.
    #[arg(long, env = "RISKHOST_FLEET_HEARTBEAT_MS", default_value_t = 2000)]
    pub(crate) fleet_heartbeat_ms: u64,
}

impl FleetArgs {
    pub(crate) fn settings(&self) -> riskhost_fleet::FleetSettings {
        riskhost_fleet::FleetSettings {
            replica_id: self.replica_id.clone().unwrap_or_else(host_name),
            poll: Duration::from_millis(self.registry_poll_ms.max(100)),
            listen: self.registry_listen,
            heartbeat: Duration::from_millis(self.fleet_heartbeat_ms.max(100)),
        }
    }
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "riskhost".into())
}

/// The compile budget of the server (docs/sandbox.md, "Load time").
#[derive(Debug, Clone, Args)]
pub(crate) struct CompileArgs {
    /// Longest a component may take to compile, in ms; past it the
    /// compile worker is killed and the load fails.
    #[arg(long, env = "RISKHOST_COMPILE_TIMEOUT_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) compile_timeout_ms: u64,
    /// Most memory (heap and writable mappings) compiling one component may take, in MiB.
    #[arg(long, env = "RISKHOST_COMPILE_MEMORY_MIB", default_value_t = 2048,
          value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub(crate) compile_memory_mib: u64,
    /// Compile in a worker process under the budget above (`false`:
    /// in the server process, without a budget).
    #[arg(long, env = "RISKHOST_COMPILE_ISOLATION", default_value_t = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) compile_isolation: bool,
}

impl CompileArgs {
    /// How the server compiles: this very binary's `compile-worker` under
    /// the budget, or in-process.
    pub(crate) fn compilation(&self) -> anyhow::Result<riskhost_models::Compilation> {
        use riskhost_models::{Compilation, CompileBudget, Isolated};
        if !self.compile_isolation {
            return Ok(Compilation::InProcess);
        }
        let program = std::env::current_exe().map_err(|e| {
            anyhow::anyhow!("cannot find the riskhost binary for the compile worker: {e}")
        })?;
        Ok(Compilation::Isolated(Isolated {
            program,
            args: vec!["compile-worker".into()],
            env: crate::allocator::COMPILE_WORKER_ENV
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            budget: CompileBudget {
                timeout: Duration::from_millis(self.compile_timeout_ms),
                memory_mib: self.compile_memory_mib,
            },
        }))
    }
}

/// Signed models (`docs/signing.md`).
#[derive(Debug, Clone, Args)]
pub(crate) struct SigningArgs {
    /// Refuse every model (file, upload, restore, rollback, pin) without a
    /// valid signature by a trusted key. Needs a trusted key.
    #[arg(long, env = "RISKHOST_REQUIRE_SIGNATURES", default_value_t = false,
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) require_signatures: bool,
    /// A trusted publisher's public key (`ed25519:<base64>`, as `riskhost
    /// model keygen` prints it); repeat the flag, or separate with `;` in the variable.
    #[arg(
        long = "trusted-key",
        env = "RISKHOST_TRUSTED_KEY",
        value_delimiter = ';'
    )]
    pub(crate) trusted_keys: Vec<String>,
    /// A file of trusted public keys, one per line (`#` comments); repeat the
    /// flag, or separate with `;` in the variable.
    #[arg(
        long = "trusted-keys-file",
        env = "RISKHOST_TRUSTED_KEYS_FILE",
        value_delimiter = ';'
    )]
    pub(crate) trusted_keys_files: Vec<PathBuf>,
}

impl SigningArgs {
    /// The policy these settings describe.
    pub(crate) fn policy(&self) -> anyhow::Result<riskhost_models::signing::SignaturePolicy> {
        let trusted = riskhost_models::signing::TrustedKeys::load(
            &self.trusted_keys,
            &self.trusted_keys_files,
        )?;
        Ok(riskhost_models::signing::SignaturePolicy::new(
            self.require_signatures,
            trusted,
        )?)
    }
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ScoreArgs {
    /// A `.wasm` file, or the name of a model in the plugins directory.
    #[arg(long)]
    pub(crate) model: String,
    /// Portfolio JSON: `{"id": "...", "positions": [{"instrument": "SPX", "quantity": 10}]}`.
    #[arg(long)]
    pub(crate) portfolio: PathBuf,
    /// A parameter, as NAME=VALUE; repeat for several.
    #[arg(long = "param", value_parser = parse_param)]
    pub(crate) params: Vec<(String, f64)>,
    /// Valuation date (YYYY-MM-DD); the latest date in the data by default.
    #[arg(long, value_parser = riskhost_scoring::parse_date)]
    pub(crate) as_of: Option<chrono::NaiveDate>,
    #[command(flatten)]
    pub(crate) sources: SourceArgs,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct BacktestCommandArgs {
    /// A `.wasm` file, or the name of a model in the plugins directory.
    #[arg(long)]
    pub(crate) model: String,
    /// Portfolio JSON: one portfolio (`{"id": "...", "positions": [...]}`)
    /// or an array of them; repeat for several files.
    #[arg(long = "portfolio", required = true)]
    pub(crate) portfolios: Vec<PathBuf>,
    /// The first day to test (YYYY-MM-DD).
    #[arg(long, value_parser = riskhost_scoring::parse_date)]
    pub(crate) from: chrono::NaiveDate,
    /// The last day to test (YYYY-MM-DD).
    #[arg(long, value_parser = riskhost_scoring::parse_date)]
    pub(crate) to: chrono::NaiveDate,
    /// A parameter, as NAME=VALUE; repeat for several (`horizon_days` is
    /// forced to 1).
    #[arg(long = "param", value_parser = parse_param)]
    pub(crate) params: Vec<(String, f64)>,
    /// Where to write the HTML report.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Where to write the JSON answer; standard output when absent.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) limits: BacktestArgs,
    #[command(flatten)]
    pub(crate) sources: SourceArgs,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ScoreFileArgs {
    /// JSON Lines: one portfolio per line, `{"id": "...", "positions": [...]}`.
    pub(crate) input: PathBuf,
    /// Models to score with, comma-separated (`name`, `name@1.2.0`, `name@sha256:…`).
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) models: Vec<String>,
    /// Output file: `.csv` or `.jsonl`; JSON Lines on standard output when absent.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// A parameter, as NAME=VALUE; repeat for several.
    #[arg(long = "param", value_parser = parse_param)]
    pub(crate) params: Vec<(String, f64)>,
    /// Valuation date (YYYY-MM-DD); the latest date in the data by default.
    #[arg(long, value_parser = riskhost_scoring::parse_date)]
    pub(crate) as_of: Option<chrono::NaiveDate>,
    /// Portfolios per batch.
    #[arg(long, default_value_t = 1000)]
    pub(crate) batch: usize,
    /// Hide the progress bar.
    #[arg(long)]
    pub(crate) quiet: bool,
    #[command(flatten)]
    pub(crate) sources: SourceArgs,
}

fn parse_model_ttl(s: &str) -> Result<(String, u64), String> {
    let (name, secs) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=SECS"))?;
    let name = name.trim();
    if !riskhost_engine::ModelName::is_valid(name) {
        return Err(format!("`{name}` is not a model name (lower-kebab-case)"));
    }
    let secs: u64 = secs
        .trim()
        .parse()
        .map_err(|e| format!("`{secs}` is not a whole number of seconds: {e}"))?;
    Ok((name.to_owned(), secs))
}

pub(crate) fn parse_param(s: &str) -> Result<(String, f64), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))?;
    let value: f64 = value
        .trim()
        .parse()
        .map_err(|e| format!("`{value}` is not a number: {e}"))?;
    Ok((name.trim().to_owned(), value))
}

/// The key settings of `serve`.
#[derive(Debug, Clone, Args)]
pub(crate) struct AuthArgs {
    /// Bearer token of an admin key with id `admin` (shorthand for one
    /// `--api-key`): send it as `Authorization: Bearer <token>`. A token
    /// with a `.` must start with `admin.`.
    #[arg(long, env = "RISKHOST_ADMIN_TOKEN", hide_env_values = true)]
    pub(crate) admin_token: Option<String>,
    /// An API key, stored as its token's hash:
    /// `ID:sha256=HEX,scopes=score|admin[,rate_per_minute=N][,burst=N]`
    /// (`riskhost key new` prints one). Repeat the flag; the variable
    /// separates keys with `;`. A configuration file's `[[api_keys]]`
    /// tables land here.
    #[arg(
        long = "api-key",
        env = "RISKHOST_API_KEYS",
        value_delimiter = ';',
        hide_env_values = true
    )]
    pub(crate) api_keys: Vec<String>,
    /// A TOML file of `[[api_keys]]` tables (id, sha256, scopes,
    /// rate_per_minute, burst), e.g. a mounted secret.
    #[arg(long, env = "RISKHOST_API_KEYS_FILE")]
    pub(crate) api_keys_file: Option<std::path::PathBuf>,
    /// Where keys are looked up: `config` (the flags above) or `postgres`
    /// (the `api_keys` table in --postgres-schema, plus the flags above).
    #[arg(
        long,
        env = "RISKHOST_KEYS_SOURCE",
        value_enum,
        default_value = "config"
    )]
    pub(crate) keys_source: KeysSourceKind,
    /// How long a key read from PostgreSQL is trusted, in ms: a revocation
    /// takes effect within it.
    #[arg(long, env = "RISKHOST_KEYS_CACHE_TTL_MS", default_value_t = 5000)]
    pub(crate) keys_cache_ttl_ms: u64,
    /// Let callers without a key use the `score` routes (scoring, models,
    /// history), rate limited per client address. For local runs only.
    #[arg(long, env = "RISKHOST_ANONYMOUS_SCORING", num_args = 0..=1,
          default_value_t = false, default_missing_value = "true",
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) anonymous_scoring: bool,
    /// Requests per minute of each key without its own rate, and of each
    /// anonymous client address; 0 turns rate limits off.
    #[arg(long, env = "RISKHOST_RATE_LIMIT_PER_MINUTE", default_value_t = 1000)]
    pub(crate) rate_limit_per_minute: u32,
    /// Requests a caller may send at once after being idle.
    #[arg(long, env = "RISKHOST_RATE_LIMIT_BURST", default_value_t = 100)]
    pub(crate) rate_limit_burst: u32,
    /// Where per-key and per-address rate limits are kept: `redis`
    /// (fleet-wide, in --redis-url under --redis-prefix; each replica falls
    /// back to its own buckets while Redis is down or slow) or `local` (each
    /// replica on its own: N replicas admit N times the rate). Default:
    /// `redis` when --redis-url is set, else `local`.
    #[arg(long, env = "RISKHOST_RATE_LIMIT_STORE", value_enum)]
    pub(crate) rate_limit_store: Option<RateLimitStore>,
    /// Failed authentications (unknown key, wrong secret or admin token,
    /// malformed header) per minute of one client address; past it the
    /// address gets 429 before any key lookup. 0 turns it off.
    #[arg(long, env = "RISKHOST_AUTH_FAILURES_PER_MINUTE", default_value_t = 30)]
    pub(crate) auth_failures_per_minute: u32,
    /// Failures one address may make at once before it is throttled.
    #[arg(long, env = "RISKHOST_AUTH_FAILURE_BURST", default_value_t = 10)]
    pub(crate) auth_failure_burst: u32,
}

/// Where `serve` keeps rate-limit buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RateLimitStore {
    /// In Redis, shared by every replica.
    Redis,
    /// In this process.
    Local,
}

/// Where `serve` looks keys up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum KeysSourceKind {
    Config,
    Postgres,
}

impl AuthArgs {
    /// The keys given in configuration (flags, variables, files).
    pub(crate) fn configured_keys(&self) -> Result<Vec<riskhost_auth::ApiKey>, String> {
        let mut keys = Vec::new();
        if let Some(token) = self.admin_token.as_deref().filter(|t| !t.is_empty()) {
            if riskhost_auth::token_id(token) != Some(riskhost_auth::ADMIN_TOKEN_ID) {
                return Err(
                    "--admin-token must be a token without `.` or one starting with `admin.`, made of visible ASCII"
                        .into(),
                );
            }
            keys.push(riskhost_auth::ApiKey {
                id: riskhost_auth::ADMIN_TOKEN_ID.to_owned(),
                digest: riskhost_auth::token_digest(token),
                scope: riskhost_auth::Scope::Admin,
                rate: Default::default(),
            });
        }
        for spec in self.api_keys.iter().filter(|s| !s.trim().is_empty()) {
            keys.push(riskhost_auth::parse_key_spec(spec)?);
        }
        if let Some(path) = &self.api_keys_file {
            keys.extend(riskhost_auth::load_keys_file(path)?);
        }
        Ok(keys)
    }
}

/// Which sink `serve` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum EventsKind {
    /// ClickHouse when `--clickhouse-url` is set, else none.
    Auto,
    None,
    Log,
    Clickhouse,
}

/// Settings of the score-event sink.
#[derive(Debug, Clone, Args)]
pub(crate) struct EventArgs {
    /// Where score events go.
    #[arg(long, env = "RISKHOST_EVENTS", value_enum, default_value = "auto")]
    pub(crate) events: EventsKind,
    /// ClickHouse table of score events (in --clickhouse-database).
    #[arg(long, env = "RISKHOST_EVENTS_TABLE", default_value = "score_events")]
    pub(crate) events_table: String,
    /// Events per insert.
    #[arg(long, env = "RISKHOST_EVENTS_BATCH", default_value_t = 10_000)]
    pub(crate) events_batch: usize,
    /// Longest wait before buffered events are inserted, in ms.
    #[arg(long, env = "RISKHOST_EVENTS_FLUSH_MS", default_value_t = 1000)]
    pub(crate) events_flush_ms: u64,
    /// Events held in memory; beyond it they go straight to the spool file.
    #[arg(long, env = "RISKHOST_EVENTS_QUEUE", default_value_t = 100_000)]
    pub(crate) events_queue: usize,
    /// Bytes of events held in memory, in MiB; beyond it, too, they go
    /// straight to the spool file.
    #[arg(long, env = "RISKHOST_EVENTS_QUEUE_MAX_MIB", default_value_t = 64)]
    pub(crate) events_queue_max_mib: u64,
    /// Largest spool on disk, in MiB; beyond it events are dropped and counted.
    #[arg(long, env = "RISKHOST_EVENTS_SPOOL_MAX_MIB", default_value_t = 1024)]
    pub(crate) events_spool_max_mib: u64,
    /// Append every event to the local spool and fsync it (one fsync shared
    /// by concurrent requests) before the request is answered, so a crash
    /// loses none; ClickHouse is then fed from the spool every
    /// --events-flush-ms. Off: events wait in memory until written.
    #[arg(long, env = "RISKHOST_EVENTS_DURABLE", num_args = 0..=1,
          default_value_t = false, default_missing_value = "true",
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) events_durable: bool,
}

impl EventArgs {
    /// The ClickHouse sink's settings, its spool under `data_dir`.
    pub(crate) fn settings(&self, data_dir: &std::path::Path) -> riskhost_events::EventSettings {
        riskhost_events::EventSettings {
            table: self.events_table.clone(),
            batch: self.events_batch,
            flush_every: Duration::from_millis(self.events_flush_ms),
            queue: self.events_queue,
            queue_max_bytes: self.events_queue_max_mib << 20,
            spool_max_bytes: self.events_spool_max_mib << 20,
            data_dir: data_dir.to_path_buf(),
            durable: self.events_durable,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Flags come from several modules (`#[command(flatten)]`); clap checks
    /// them for clashes only in debug builds at run time, so check here.
    #[test]
    fn the_command_line_has_no_clashing_flags() {
        super::Cli::command().debug_assert();
    }
}

#[cfg(test)]
mod auth_tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        auth: AuthArgs,
    }

    #[test]
    fn the_admin_token_is_the_admin_key() {
        let t = T::parse_from(["t", "--admin-token", "s3cret"]);
        let keys = t.auth.configured_keys().unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].id, "admin");
        assert!(keys[0].verifies("s3cret") && !keys[0].verifies("s3cret "));
        assert!(!t.auth.anonymous_scoring);
        let t = T::parse_from(["t", "--admin-token", "ops.s3cret"]);
        assert!(t.auth.configured_keys().is_err());
        let t = T::parse_from(["t", "--anonymous-scoring"]);
        assert!(t.auth.anonymous_scoring);
        let t = T::parse_from(["t", "--anonymous-scoring=false"]);
        assert!(!t.auth.anonymous_scoring);
    }
}

//! Every setting of riskhost, from flags or environment variables.
//!
//! Each flag has an environment variable of the same name in upper case with
//! a `RISKHOST_` prefix; a flag wins over its variable. `riskhost --help` and
//! the README's configuration table list them all.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::engine::SandboxLimits;
use crate::registry::BulkheadLimits;
use crate::scoring::batch::BatchLimits;
use crate::scoring::batcher::DynamicBatching;
use crate::scoring::{PortfolioLimits, ScoringSettings};
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "riskhost",
    version,
    about = "Serves risk models shipped as sandboxed WebAssembly components"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server.
    Serve(ServeArgs),
    /// Score one portfolio with one model, without a server.
    Score(ScoreArgs),
    /// Score a file of portfolios (one JSON portfolio per line) with the batch engine.
    ScoreFile(ScoreFileArgs),
    /// Manage the databases: apply migrations, load the sample data.
    #[command(subcommand)]
    Db(DbCommand),
    /// Write the bundled sample prices as CSV (`date,instrument,close`).
    ExportSampleData {
        /// Output file; standard output when absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Where models and data come from; shared by `serve` and `score`.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// Directory whose `.wasm` components are loaded at start-up.
    #[arg(long, env = "RISKHOST_PLUGINS", default_value = "plugins/dist")]
    pub plugins: PathBuf,
    /// Daily closes as CSV (`date,instrument,close`) instead of the bundled sample data.
    #[arg(long, env = "RISKHOST_PRICES")]
    pub prices: Option<PathBuf>,
    /// Log format.
    #[arg(
        long,
        env = "RISKHOST_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    #[command(flatten)]
    pub data: crate::market::connect::DataArgs,
}

/// `riskhost db …`.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply the PostgreSQL migrations (the server also does at start) and
    /// create the ClickHouse tables, for whichever database is configured.
    Migrate(DbArgs),
    /// Load the bundled sample instruments, prices and portfolios into
    /// PostgreSQL and/or ClickHouse (each one configured). Idempotent.
    Seed(DbArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    #[command(flatten)]
    pub data: crate::market::connect::DataArgs,
    /// Events table to create in ClickHouse (`migrate`).
    #[arg(long, env = "RISKHOST_EVENTS_TABLE", default_value = "score_events")]
    pub events_table: String,
    /// Prices to load instead of the bundled sample (`seed`), CSV `date,instrument,close`.
    #[arg(long, env = "RISKHOST_PRICES")]
    pub prices: Option<PathBuf>,
}

/// Limits of the model sandbox.
#[derive(Debug, Clone, Args)]
pub struct SandboxArgs {
    /// Linear memory cap per model instance, in MiB.
    #[arg(long, env = "RISKHOST_MEMORY_LIMIT_MIB", default_value_t = 64)]
    pub memory_limit_mib: usize,
    /// Base deadline of one model call, in milliseconds.
    #[arg(long, env = "RISKHOST_DEADLINE_MS", default_value_t = 1000)]
    pub deadline_ms: u64,
    /// Deadline added per job of a batch call, in microseconds.
    #[arg(long, env = "RISKHOST_DEADLINE_PER_JOB_US", default_value_t = 2000)]
    pub deadline_per_job_us: u64,
    /// Longest deadline of any call, in milliseconds.
    #[arg(long, env = "RISKHOST_DEADLINE_CAP_MS", default_value_t = 30_000)]
    pub deadline_cap_ms: u64,
    /// Largest accepted component, in MiB.
    #[arg(long, env = "RISKHOST_MAX_COMPONENT_MIB", default_value_t = 64)]
    pub max_component_mib: usize,
}

impl SandboxArgs {
    pub fn limits(&self) -> SandboxLimits {
        SandboxLimits {
            memory_bytes: self.memory_limit_mib << 20,
            deadline_base: Duration::from_millis(self.deadline_ms),
            deadline_per_job: Duration::from_micros(self.deadline_per_job_us),
            deadline_cap: Duration::from_millis(self.deadline_cap_ms),
            max_component_bytes: self.max_component_mib << 20,
            ..SandboxLimits::default()
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "RISKHOST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub sources: SourceArgs,
    /// Byte budget of the in-process score cache, in MiB.
    #[arg(long, env = "RISKHOST_CACHE_MAX_MIB", default_value_t = 256)]
    pub cache_max_mib: u64,
    /// How long a cached score is kept, in seconds.
    #[arg(long, env = "RISKHOST_CACHE_TTL_SECS", default_value_t = 3600)]
    pub cache_ttl_secs: u64,
    /// Concurrent calls per model; further calls queue (default: one per core).
    #[arg(long, env = "RISKHOST_MAX_CONCURRENT_CALLS")]
    pub max_concurrent_calls: Option<usize>,
    /// Calls that may wait per model before new ones get 503.
    #[arg(long, env = "RISKHOST_MAX_QUEUED_CALLS", default_value_t = 1024)]
    pub max_queued_calls: usize,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "RISKHOST_MAX_BODY_BYTES", default_value_t = 8 << 20)]
    pub max_body_bytes: usize,
    /// Largest accepted body of a batch request, in bytes.
    #[arg(long, env = "RISKHOST_MAX_BATCH_BODY_BYTES", default_value_t = 64 << 20)]
    pub max_batch_body_bytes: usize,
    /// Most positions in one portfolio.
    #[arg(long, env = "RISKHOST_MAX_POSITIONS", default_value_t = 10_000)]
    pub max_positions: usize,
    #[command(flatten)]
    pub batching: BatchingArgs,
    /// Bearer token of the admin API; the admin API is off without one.
    #[arg(long, env = "RISKHOST_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// How long in-flight requests may take to finish after SIGTERM, in seconds.
    #[arg(long, env = "RISKHOST_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    #[command(flatten)]
    pub events: crate::events::EventArgs,
}

impl ServeArgs {
    pub fn bulkhead(&self) -> BulkheadLimits {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        BulkheadLimits {
            max_concurrent: self.max_concurrent_calls.unwrap_or(cores).max(1),
            max_queued: self.max_queued_calls,
        }
    }

    pub fn scoring(&self) -> ScoringSettings {
        ScoringSettings {
            cache_ttl: Duration::from_secs(self.cache_ttl_secs),
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
pub struct BatchingArgs {
    /// Most portfolios in one batch request.
    #[arg(long, env = "RISKHOST_BATCH_MAX_PORTFOLIOS", default_value_t = 10_000)]
    pub batch_max_portfolios: usize,
    /// Most models in one batch request.
    #[arg(long, env = "RISKHOST_BATCH_MAX_MODELS", default_value_t = 16)]
    pub batch_max_models: usize,
    /// Jobs per model call when running a batch.
    #[arg(long, env = "RISKHOST_BATCH_CHUNK_SIZE", default_value_t = 256)]
    pub batch_chunk_size: usize,
    /// Most single requests coalesced into one model call; 1 disables dynamic batching.
    #[arg(long, env = "RISKHOST_DYNAMIC_BATCH_MAX", default_value_t = 64)]
    pub dynamic_batch_max: usize,
    /// Extra wait for more requests before a call even when the model is idle, in µs (0: none).
    #[arg(long, env = "RISKHOST_DYNAMIC_BATCH_DELAY_US", default_value_t = 0)]
    pub dynamic_batch_delay_us: u64,
    /// Single requests that may wait per model version before new ones get 503.
    #[arg(long, env = "RISKHOST_DYNAMIC_BATCH_QUEUE", default_value_t = 4096)]
    pub dynamic_batch_queue: usize,
}

impl BatchingArgs {
    pub fn limits(&self) -> BatchLimits {
        BatchLimits {
            max_portfolios: self.batch_max_portfolios,
            max_models: self.batch_max_models,
            chunk_size: self.batch_chunk_size.max(1),
        }
    }

    pub fn dynamic(&self) -> DynamicBatching {
        DynamicBatching {
            max_batch: self.dynamic_batch_max.max(1),
            max_delay: Duration::from_micros(self.dynamic_batch_delay_us),
            max_queue: self.dynamic_batch_queue.max(1),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ScoreArgs {
    /// A `.wasm` file, or the name of a model in the plugins directory.
    #[arg(long)]
    pub model: String,
    /// Portfolio JSON: `{"id": "...", "positions": [{"instrument": "SPX", "quantity": 10}]}`.
    #[arg(long)]
    pub portfolio: PathBuf,
    /// A parameter, as NAME=VALUE; repeat for several.
    #[arg(long = "param", value_parser = parse_param)]
    pub params: Vec<(String, f64)>,
    /// Valuation date (YYYY-MM-DD); the latest date in the data by default.
    #[arg(long, value_parser = crate::scoring::parse_date)]
    pub as_of: Option<chrono::NaiveDate>,
    #[command(flatten)]
    pub sources: SourceArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ScoreFileArgs {
    /// JSON Lines: one portfolio per line, `{"id": "...", "positions": [...]}`.
    pub input: PathBuf,
    /// Models to score with, comma-separated (`name`, `name@1.2.0`, `name@sha256:…`).
    #[arg(long, value_delimiter = ',', required = true)]
    pub models: Vec<String>,
    /// Output file: `.csv` or `.jsonl`; JSON Lines on standard output when absent.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A parameter, as NAME=VALUE; repeat for several.
    #[arg(long = "param", value_parser = parse_param)]
    pub params: Vec<(String, f64)>,
    /// Valuation date (YYYY-MM-DD); the latest date in the data by default.
    #[arg(long, value_parser = crate::scoring::parse_date)]
    pub as_of: Option<chrono::NaiveDate>,
    /// Portfolios per batch.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub sources: SourceArgs,
}

fn parse_param(s: &str) -> Result<(String, f64), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))?;
    let value: f64 = value
        .trim()
        .parse()
        .map_err(|e| format!("`{value}` is not a number: {e}"))?;
    Ok((name.trim().to_owned(), value))
}

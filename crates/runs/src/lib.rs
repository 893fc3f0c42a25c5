//! Risk runs: the nightly job of a risk team. Every portfolio (or a list,
//! or an upload) × several models, one as-of date, each model pinned to the
//! digest it had at submission.
//!
//! A run is planned into deterministic chunks of portfolios; workers score
//! each chunk through the batch engine (`ScoringService::score_batch`: one
//! prefetch, the memo, the bulkheads) and keep its results under the chunk's
//! number, so a chunk scored twice (a redelivery) replaces its own results
//! and never duplicates them. A chunk that keeps failing is quarantined
//! after its deliveries, and its portfolios get error cells naming why: a
//! run never drops a portfolio silently.
//!
//! [`Runs`] is the capability; its backend is chosen at start-up:
//! [`LocalRuns`] (`--runs local`, the embedded default) keeps runs in the
//! data directory and queues chunks in the process; [`NatsRuns`]
//! (`--runs nats`) keeps them in PostgreSQL, queues chunks on a NATS
//! JetStream work queue pulled by every replica, and writes results to
//! ClickHouse.
//!
//! May not: know HTTP, or score anything itself (the batch engine does).

mod chunk;
mod local;
mod nats;
mod plan;

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

pub use self::local::{LocalRuns, LocalRunsSettings};
pub use self::nats::{NatsRuns, NatsRunsSettings};
pub use self::plan::portfolio_stream;
use riskhost_scoring::PortfolioInput;

/// `POST /v1/runs`, or the first line of its NDJSON upload (then without
/// `portfolios`).
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Model references (`name`, `name@1.2.0`, `name@sha256:…`), each
    /// resolved to a digest at submission and pinned for the whole run.
    pub models: Vec<String>,
    /// Parameters for every model, as in the batch API.
    #[serde(default)]
    pub params: BTreeMap<String, f64>,
    /// Valuation date; by default the latest in the data, fixed at submission.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schema(value_type = Option<String>, format = Date))]
    pub as_of: Option<NaiveDate>,
    /// Which portfolios; absent in an NDJSON upload, whose further lines
    /// are the portfolios.
    #[serde(default)]
    pub portfolios: Option<Selection>,
}

/// Which portfolios a run scores.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Selection {
    /// Every portfolio the data source stores (`{"all": true}`).
    All(bool),
    /// Stored portfolios by id.
    Ids(Vec<String>),
    /// Portfolios given in the request.
    Inline(Vec<PortfolioInput>),
}

/// What a run scores, fixed at submission.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunSpec {
    /// Model name → the digest it is pinned to.
    pub digests: BTreeMap<String, String>,
    pub params: BTreeMap<String, f64>,
    pub as_of: NaiveDate,
}

/// A run to plan: who submits it, what it scores, and its portfolios as
/// they arrive (an upload is never held whole).
pub struct Submission {
    pub key_id: String,
    pub request: RunRequest,
    pub portfolios: BoxStream<'static, Result<PortfolioInput, RunError>>,
}

/// Where a run is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Planned,
    Running,
    Completed,
    CompletedWithFailures,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Planned => "planned",
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::CompletedWithFailures => "completed_with_failures",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// No chunk of the run will be scored any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::CompletedWithFailures | RunStatus::Cancelled
        )
    }

    pub const ALL: [RunStatus; 5] = [
        RunStatus::Planned,
        RunStatus::Running,
        RunStatus::Completed,
        RunStatus::CompletedWithFailures,
        RunStatus::Cancelled,
    ];
}

/// Chunks of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ChunkCounts {
    pub total: u64,
    pub done: u64,
    /// Quarantined after `--run-max-deliveries`.
    pub failed: u64,
}

/// Cells of a run: (portfolio, model) scores and errors.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct CellCounts {
    pub ok: u64,
    pub failed: u64,
}

/// A quarantined chunk: the portfolios it held and why it failed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ChunkFailure {
    pub chunk: u64,
    /// Positions of its portfolios in the run.
    pub first_portfolio_index: u64,
    pub portfolios: u64,
    /// Their ids, where they have one.
    pub portfolio_ids: Vec<String>,
    pub reason: String,
    pub deliveries: u32,
}

/// `GET /v1/runs/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct RunView {
    pub id: String,
    pub status: RunStatus,
    /// Model name → pinned digest.
    pub digests: BTreeMap<String, String>,
    #[cfg_attr(feature = "schema", schema(value_type = String, format = Date))]
    pub as_of: NaiveDate,
    pub params: BTreeMap<String, f64>,
    pub portfolios: u64,
    pub chunks: ChunkCounts,
    pub cells: CellCounts,
    #[cfg_attr(feature = "schema", schema(value_type = String, format = DateTime))]
    pub submitted_at: DateTime<Utc>,
    #[cfg_attr(feature = "schema", schema(value_type = Option<String>, format = DateTime))]
    pub started_at: Option<DateTime<Utc>>,
    #[cfg_attr(feature = "schema", schema(value_type = Option<String>, format = DateTime))]
    pub finished_at: Option<DateTime<Utc>>,
    /// Quarantined chunks, with their portfolios and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<ChunkFailure>,
    /// The API path of this view.
    pub status_url: String,
    /// Cells (ok and failed) per second from its start to its end, or to
    /// now while it runs; absent before its first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cells_per_second: Option<f64>,
}

impl RunView {
    /// The view with `cells_per_second` measured at `now`.
    pub fn with_rate(mut self, now: DateTime<Utc>) -> RunView {
        self.cells_per_second = self.started_at.map(|started| {
            let end = self.finished_at.unwrap_or(now);
            let secs = (end - started).as_seconds_f64().max(1e-3);
            ((self.cells.ok + self.cells.failed) as f64 / secs).round()
        });
        self
    }
}

/// A run's result lines (NDJSON: the batch API's cells plus `run_id`), in
/// chunk order, read as they are streamed.
pub type ResultLines = BoxStream<'static, Result<Vec<u8>, RunError>>;

/// Why a run cannot be submitted, read or changed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Invalid(String),
    #[error("the run selects no portfolio")]
    EmptySelection,
    #[error("the run holds more than {max} portfolios (--run-max-portfolios)")]
    TooManyPortfolios { max: u64 },
    #[error("portfolio line {line}: {message}")]
    BadPortfolio { line: u64, message: String },
    #[error(transparent)]
    Model(#[from] riskhost_models::ResolveError),
    #[error("no run `{0}`")]
    UnknownRun(String),
    #[error("runs are unavailable: {0}")]
    Unavailable(String),
    #[error("the run store failed: {0}")]
    Store(String),
}

impl RunError {
    pub(crate) fn store(context: &str, error: impl std::fmt::Display) -> RunError {
        RunError::Store(format!("{context}: {error}"))
    }
}

/// Runs: submit, read, list, cancel, and read results.
#[async_trait::async_trait]
pub trait Runs: Send + Sync {
    /// `local` or `nats`.
    fn backend(&self) -> &'static str;

    /// Plans a run (pins its models, writes its chunks) and queues it.
    async fn submit(&self, submission: Submission) -> Result<RunView, RunError>;

    /// A run of `key_id`'s.
    async fn status(&self, key_id: &str, id: &str) -> Result<RunView, RunError>;

    /// `key_id`'s runs, newest first.
    async fn list(&self, key_id: &str) -> Result<Vec<RunView>, RunError>;

    /// Stops a run: no chunk of it is scored after this answers.
    async fn cancel(&self, key_id: &str, id: &str) -> Result<RunView, RunError>;

    /// The run's result lines so far, in chunk order.
    async fn results(&self, key_id: &str, id: &str) -> Result<ResultLines, RunError>;

    /// Shutdown, first step: no worker starts another chunk.
    fn stop_pulling(&self);

    /// Shutdown, second step: waits until the chunks being scored are
    /// written, at most until `deadline`; answers how many were still
    /// being scored then (they are scored again after a restart).
    async fn drained(&self, deadline: tokio::time::Instant) -> usize;
}

/// Waits until `in_flight` chunks are done, at most until `deadline`;
/// answers how many were still being scored then.
pub(crate) async fn wait_drained(
    in_flight: &std::sync::atomic::AtomicUsize,
    deadline: tokio::time::Instant,
) -> usize {
    loop {
        let now = in_flight.load(std::sync::atomic::Ordering::Acquire);
        if now == 0 || tokio::time::Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The columns of a run's CSV results.
const CSV_COLUMNS: [&str; 11] = [
    "run_id",
    "portfolio_index",
    "portfolio_id",
    "model",
    "version",
    "digest",
    "value",
    "unit",
    "cached",
    "error_code",
    "error_message",
];

/// `lines` (NDJSON result lines, many per item) as CSV: a header, then one
/// row per cell; a cell's error fills the last two columns.
pub fn csv_results(lines: ResultLines) -> ResultLines {
    let header = futures::stream::once(async {
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer
            .write_record(CSV_COLUMNS)
            .map_err(|e| RunError::store("csv", e))?;
        writer.into_inner().map_err(|e| RunError::store("csv", e))
    });
    let rows = lines.map(|bytes| {
        let bytes = bytes?;
        let mut writer = csv::Writer::from_writer(Vec::new());
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let cell: serde_json::Value =
                serde_json::from_slice(line).map_err(|e| RunError::store("a result line", e))?;
            let text = |field: &serde_json::Value| match field {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) => s.clone(),
                // f64 prints as the shortest string that reads back to it.
                other => other.to_string(),
            };
            let row: Vec<String> = [
                &cell["run_id"],
                &cell["portfolio_index"],
                &cell["portfolio_id"],
                &cell["model"],
                &cell["version"],
                &cell["digest"],
                &cell["value"],
                &cell["unit"],
                &cell["cached"],
                &cell["error"]["code"],
                &cell["error"]["message"],
            ]
            .into_iter()
            .map(text)
            .collect();
            writer
                .write_record(&row)
                .map_err(|e| RunError::store("csv", e))?;
        }
        writer.into_inner().map_err(|e| RunError::store("csv", e))
    });
    header.chain(rows).boxed()
}

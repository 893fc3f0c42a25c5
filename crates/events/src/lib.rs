//! Score events: one record per score served (single, dynamically batched
//! or batch API; cached or not; failed ones with their error code), handed
//! to an [`EventSink`] off the request path.
//!
//! - [`EventSink`]: `record` never blocks or fails; `flush` runs at shutdown;
//!   `history` answers `GET /v1/portfolios/{id}/scores`.
//! - [`NoSink`] (default) and [`LogSink`] (`--events log`): nothing stored.
//! - [`ClickHouseSink`] (`clickhouse.rs`): batched inserts into a MergeTree
//!   table ([`create_events_table`]), with a local append-only spool
//!   (`spool.rs`) while ClickHouse is down or slow.
//! - `analytics.rs`: the per-day and per-hour aggregates ClickHouse keeps
//!   of the events (materialized views, [`backfill_analytics`]) and
//!   [`EventSink::stats`], which reads them ([`StatsQuery`] →
//!   [`StatsBucket`]s), behind an in-process cache.
//! - [`with_request`], [`current_request_id`], [`current_key_id`]: the
//!   request an event belongs to, kept in a task-local by the HTTP layer
//!   (which owns the `x-request-id` header and authentication) and read by
//!   the scoring layer when it builds its events.
//!
//! May not: block or fail a request, or read HTTP or scoring types (the
//! scoring layer builds its own [`ScoreEvent`]s).
//!
//! The crate's API is what this file defines and re-exports.

mod analytics;
mod clickhouse;
mod comparisons;
mod spool;

pub use self::analytics::{
    Backfill, Bucket, StatsBucket, StatsQuery, StatsSubject, backfill_analytics,
};
pub use self::clickhouse::{ClickHouseSink, create_events_table};
pub use self::comparisons::{COMPARISONS_TABLE, Comparison};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// Who asked, for the events of one request.
struct RequestContext {
    id: Arc<str>,
    /// Set once authentication knows the caller; empty when anonymous.
    key_id: std::sync::OnceLock<Arc<str>>,
}

tokio::task_local! {
    static REQUEST: RequestContext;
}

/// The id of the HTTP request being served, or empty outside one (CLI).
pub fn current_request_id() -> String {
    REQUEST.try_with(|r| r.id.to_string()).unwrap_or_default()
}

/// The key id of the request being served: empty when anonymous, outside
/// a request (CLI), or before authorization.
pub fn current_key_id() -> String {
    REQUEST
        .try_with(|r| r.key_id.get().map(|id| id.to_string()).unwrap_or_default())
        .unwrap_or_default()
}

/// Records the authorized caller's key id for the rest of the request (the
/// first one recorded wins).
pub fn record_key_id(id: Arc<str>) {
    let _ = REQUEST.try_with(|r| r.key_id.set(id));
}

/// Runs `f` as the request `id`, with no key id recorded yet.
pub async fn with_request<F: Future>(id: Arc<str>, f: F) -> F::Output {
    let context = RequestContext {
        id,
        key_id: std::sync::OnceLock::new(),
    };
    REQUEST.scope(context, f).await
}

/// One served (or failed) score.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreEvent {
    /// When the score was served, microseconds since the Unix epoch.
    pub ts_us: i64,
    pub request_id: String,
    /// Empty when the request gave positions without an id.
    pub portfolio_id: String,
    /// The model's name (or the requested reference if it did not resolve).
    pub model: String,
    pub version: String,
    pub digest: String,
    /// [`params_hash`] of the resolved parameters.
    pub params_hash: String,
    pub as_of: Option<NaiveDate>,
    /// None when the score failed.
    pub value: Option<f64>,
    pub unit: String,
    pub cached: bool,
    /// Wall time of the request (single) or of the whole batch (batch cells).
    pub latency_us: u64,
    /// Empty on success.
    pub error_code: String,
    /// `single` or `batch`.
    pub path: String,
    /// The market data snapshot the score was computed on.
    pub snapshot: String,
    /// The id of the API key that asked (never the key); empty when the
    /// caller was anonymous or the score came from the CLI. Absent from
    /// events spooled by older versions.
    #[serde(default)]
    pub key_id: String,
    /// What replay needs (`docs/replay.md`); empty or zero in events of a
    /// failed score and in events spooled by older versions.
    ///
    /// The resolved parameters, defaults applied, as a JSON object by name
    /// (serde_json prints and parses every f64 exactly).
    #[serde(default)]
    pub params: String,
    /// [`portfolio_hash`] of the canonical positions scored.
    #[serde(default)]
    pub portfolio_hash: String,
    /// The job's seed (`job.seed`), a function of its memo key.
    #[serde(default)]
    pub seed: u64,
    /// The canonical positions behind `portfolio_hash`, carried to the sink
    /// (which stores them once per hash) by the first event of a record
    /// that has them; never a column of the events table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positions: Option<Arc<Vec<RecordedPosition>>>,
}

/// One canonical position (merged, sorted by instrument, no zeroes) as
/// replay stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedPosition {
    pub instrument: String,
    pub quantity: f64,
}

/// The content hash of canonical positions: 32 hex digits of blake3 over
/// each instrument (length-prefixed) and the quantity's bit pattern, in the
/// given (canonical) order.
pub fn portfolio_hash<'a>(positions: impl IntoIterator<Item = (&'a str, f64)>) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"riskhost/portfolio/v1\0");
    for (instrument, quantity) in positions {
        h.update(&(instrument.len() as u64).to_le_bytes());
        h.update(instrument.as_bytes());
        h.update(&quantity.to_bits().to_le_bytes());
    }
    h.finalize().to_hex()[..32].to_owned()
}

/// The most bytes a score event records in one string field. A request can
/// name a model or a portfolio far longer than any valid one (validation
/// rejects it, and the rejection is still recorded), so every field is cut
/// to this before an event is queued, spooled or written.
pub const MAX_FIELD_BYTES: usize = 256;

/// Bytes of a cut value kept verbatim, so the row still says what it was.
const KEPT_PREFIX_BYTES: usize = 64;

/// `value` itself if it fits in [`MAX_FIELD_BYTES`], else its first 64
/// bytes (at a character boundary), `…`, and `#blake3:` with 16 hex digits
/// of the whole value: recognisable, comparable, and small.
pub fn bounded_field(value: &str) -> std::borrow::Cow<'_, str> {
    if value.len() <= MAX_FIELD_BYTES {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut end = KEPT_PREFIX_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let hash = blake3::hash(value.as_bytes()).to_hex();
    std::borrow::Cow::Owned(format!("{}…#blake3:{}", &value[..end], &hash[..16]))
}

/// Memory an event takes besides its strings (numbers, string headers).
const EVENT_FIXED_BYTES: usize = 16 * 24;

impl ScoreEvent {
    pub fn timestamp(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.ts_us).unwrap_or_default()
    }

    fn strings_mut(&mut self) -> [&mut String; 11] {
        // `params` and `portfolio_hash` are written by the host, bounded by
        // the model's parameter count and a hash's length: not cut.
        [
            &mut self.request_id,
            &mut self.portfolio_id,
            &mut self.model,
            &mut self.version,
            &mut self.digest,
            &mut self.params_hash,
            &mut self.unit,
            &mut self.error_code,
            &mut self.path,
            &mut self.snapshot,
            &mut self.key_id,
        ]
    }

    fn strings(&self) -> [&String; 11] {
        [
            &self.request_id,
            &self.portfolio_id,
            &self.model,
            &self.version,
            &self.digest,
            &self.params_hash,
            &self.unit,
            &self.error_code,
            &self.path,
            &self.snapshot,
            &self.key_id,
        ]
    }

    /// The event with every string field cut by [`bounded_field`]. Every
    /// producer calls it, so no sink ever holds an unbounded event.
    pub fn bounded(mut self) -> Self {
        for field in self.strings_mut() {
            if let std::borrow::Cow::Owned(cut) = bounded_field(field) {
                *field = cut;
            }
        }
        self
    }

    /// Bytes the event holds in memory, near enough to bound a queue by.
    pub(crate) fn approx_bytes(&self) -> usize {
        let positions = self.positions.as_ref().map_or(0, |p| {
            p.iter().map(|p| p.instrument.len() + 32).sum::<usize>()
        });
        EVENT_FIXED_BYTES
            + self.strings().iter().map(|s| s.len()).sum::<usize>()
            + self.params.len()
            + self.portfolio_hash.len()
            + positions
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

/// A short, stable hash of named parameter values: 16 hex digits of blake3
/// over the names (sorted) and the values' bit patterns.
pub fn params_hash<'a>(params: impl IntoIterator<Item = (&'a str, f64)>) -> String {
    let sorted: BTreeMap<&str, u64> = params
        .into_iter()
        .map(|(name, value)| (name, value.to_bits()))
        .collect();
    let mut h = blake3::Hasher::new();
    h.update(b"riskhost/params/v1\0");
    for (name, bits) in sorted {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(&bits.to_le_bytes());
    }
    h.finalize().to_hex()[..16].to_owned()
}

/// A history request: `GET /v1/portfolios/{id}/scores?model=&from=&to=&limit=`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryQuery {
    pub portfolio_id: String,
    pub model: Option<String>,
    /// Inclusive.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive.
    pub to: Option<DateTime<Utc>>,
    pub limit: u32,
}

/// One row of a portfolio's score history.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct HistoryEntry {
    pub ts: DateTime<Utc>,
    pub request_id: String,
    pub model: String,
    pub version: String,
    pub digest: String,
    pub params_hash: String,
    pub as_of: Option<NaiveDate>,
    pub value: Option<f64>,
    pub unit: String,
    pub cached: bool,
    pub latency_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    pub path: String,
}

/// Why there is no history to give.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(
        "score history is not recorded: start riskhost with --clickhouse-url (or RISKHOST_CLICKHOUSE_URL) to store score events"
    )]
    NotConfigured,
    #[error("score history unavailable: {0}")]
    Unavailable(String),
}

/// Where score events go.
#[async_trait::async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Takes events; never fails the request. Returns once the events are
    /// as safe as the sink promises: handed to its writer (at once), or, in
    /// the ClickHouse sink's durable mode, fsynced in the local spool.
    async fn record(&self, events: Vec<ScoreEvent>);
    /// Whether [`EventSink::record`] keeps anything: when not, producers
    /// skip building events (an L1 hit would spend a good part of its time
    /// on an event nobody reads).
    fn records(&self) -> bool {
        true
    }
    /// Writes or spools everything recorded so far, waiting at most `timeout`.
    async fn flush(&self, timeout: Duration);
    /// A portfolio's recorded scores, oldest first.
    async fn history(&self, query: &HistoryQuery) -> Result<Vec<HistoryEntry>, HistoryError>;
    /// Aggregates of the recorded scores per bucket, oldest first. Only a
    /// sink that stores events has them.
    async fn stats(&self, _query: &StatsQuery) -> Result<Arc<Vec<StatsBucket>>, HistoryError> {
        Err(HistoryError::NotConfigured)
    }
    /// Whether recorded events are kept where [`EventSink::recorded`] reads
    /// them, so producers attach what replay needs (positions, parameters).
    fn keeps_replay_data(&self) -> bool {
        false
    }
    /// The recorded scores of one request (events with a value), oldest
    /// first, at most `limit`, each with its stored positions.
    async fn recorded(
        &self,
        _request_id: &str,
        _limit: usize,
    ) -> Result<Vec<RecordedScore>, HistoryError> {
        Err(HistoryError::NotConfigured)
    }
    /// Keeps challenger comparisons (`comparisons.rs`); only a sink that
    /// stores events keeps them.
    async fn record_comparisons(&self, _comparisons: Vec<Comparison>) {}
}

/// One recorded score as replay reads it back.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedScore {
    pub ts: DateTime<Utc>,
    pub portfolio_id: String,
    pub model: String,
    pub version: String,
    pub digest: String,
    /// The resolved parameters (JSON object by name); empty in events
    /// recorded before replay.
    pub params: String,
    pub portfolio_hash: String,
    pub seed: u64,
    pub as_of: Option<NaiveDate>,
    pub value: f64,
    pub path: String,
    pub snapshot: String,
    /// The positions stored under `portfolio_hash`; None when the event
    /// predates replay or the positions were never written.
    pub positions: Option<Vec<RecordedPosition>>,
}

/// Drops events (the default).
#[derive(Debug, Default)]
pub struct NoSink;

#[async_trait::async_trait]
impl EventSink for NoSink {
    async fn record(&self, _events: Vec<ScoreEvent>) {}
    fn records(&self) -> bool {
        false
    }
    async fn flush(&self, _timeout: Duration) {}
    async fn history(&self, _query: &HistoryQuery) -> Result<Vec<HistoryEntry>, HistoryError> {
        Err(HistoryError::NotConfigured)
    }
}

/// Logs each event at debug level on target `riskhost::events`.
#[derive(Debug, Default)]
pub struct LogSink;

#[async_trait::async_trait]
impl EventSink for LogSink {
    async fn record(&self, events: Vec<ScoreEvent>) {
        for e in events {
            tracing::debug!(
                target: "riskhost::events",
                request_id = %e.request_id,
                key_id = %e.key_id,
                portfolio_id = %e.portfolio_id,
                model = %e.model,
                version = %e.version,
                value = ?e.value,
                cached = e.cached,
                latency_us = e.latency_us,
                error_code = %e.error_code,
                "score"
            );
        }
    }
    fn records(&self) -> bool {
        tracing::enabled!(target: "riskhost::events", tracing::Level::DEBUG)
    }
    async fn flush(&self, _timeout: Duration) {}
    async fn history(&self, _query: &HistoryQuery) -> Result<Vec<HistoryEntry>, HistoryError> {
        Err(HistoryError::NotConfigured)
    }
}

/// Settings of the ClickHouse score-event sink.
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// ClickHouse table of score events.
    pub table: String,
    /// Events per insert.
    pub batch: usize,
    /// Longest wait before buffered events are inserted.
    pub flush_every: Duration,
    /// Events held in memory; beyond it they go straight to the spool file.
    pub queue: usize,
    /// Bytes of events held in memory (see [`ScoreEvent::approx_bytes`]);
    /// beyond it, too, they go straight to the spool file.
    pub queue_max_bytes: u64,
    /// Largest spool on disk, in bytes; beyond it events are dropped and counted.
    pub spool_max_bytes: u64,
    /// Folder of local state; the spool lives in `spool/` under it.
    pub data_dir: std::path::PathBuf,
    /// Every event is appended to the spool and fsynced (group commit)
    /// before its request is answered, so a crash loses none; the writer
    /// then replays the spool into ClickHouse every `flush_every`.
    pub durable: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_fields_are_cut_to_a_prefix_and_a_hash() {
        let short = "var-historical";
        assert_eq!(bounded_field(short), short);
        let huge = "é".repeat(3 << 20);
        let cut = bounded_field(&huge);
        assert!(cut.len() <= MAX_FIELD_BYTES, "{}", cut.len());
        assert!(
            cut.starts_with(&"é".repeat(32)) && cut.contains("…#blake3:"),
            "{cut}"
        );
        let other = format!("{huge}x");
        assert_ne!(
            bounded_field(&other),
            cut,
            "the hash tells long values apart"
        );
        let event = ScoreEvent {
            ts_us: 0,
            request_id: huge.clone(),
            portfolio_id: huge.clone(),
            model: huge,
            version: String::new(),
            digest: String::new(),
            params_hash: String::new(),
            as_of: None,
            value: None,
            unit: String::new(),
            cached: false,
            latency_us: 0,
            error_code: "unknown_model".into(),
            path: "single".into(),
            snapshot: String::new(),
            key_id: String::new(),
            ..ScoreEvent::default()
        }
        .bounded();
        assert!(event.approx_bytes() < 2048, "{}", event.approx_bytes());
        assert_eq!(event.error_code, "unknown_model");
    }

    #[test]
    fn portfolio_hash_sees_every_instrument_and_bit() {
        let a = portfolio_hash([("SPX", 10.0), ("TLT", -20.0)]);
        assert_eq!(a.len(), 32);
        assert_eq!(a, portfolio_hash([("SPX", 10.0), ("TLT", -20.0)]));
        assert_ne!(
            a,
            portfolio_hash([("SPX", 10.0), ("TLT", -20.000000000000004)])
        );
        assert_ne!(a, portfolio_hash([("SPX", 10.0)]));
        // Length prefixes: moving a character between names is another hash.
        assert_ne!(
            portfolio_hash([("AB", 1.0), ("C", 1.0)]),
            portfolio_hash([("A", 1.0), ("BC", 1.0)])
        );
    }

    #[test]
    fn older_spooled_events_still_read() {
        let old = r#"{"ts_us":1,"request_id":"r","portfolio_id":"","model":"m","version":"","digest":"","params_hash":"","as_of":null,"value":null,"unit":"","cached":false,"latency_us":0,"error_code":"","path":"single","snapshot":"s"}"#;
        let event: ScoreEvent = serde_json::from_str(old).unwrap_or_default();
        assert_eq!((event.request_id.as_str(), event.seed), ("r", 0));
        assert!(event.positions.is_none() && event.params.is_empty());
    }

    #[test]
    fn params_hash_ignores_order_and_sees_values() {
        let a = params_hash([("confidence", 0.99), ("horizon_days", 10.0)]);
        let b = params_hash([("horizon_days", 10.0), ("confidence", 0.99)]);
        assert_eq!(a, b);
        assert_eq!(a.len(), 16);
        assert_ne!(
            a,
            params_hash([("confidence", 0.975), ("horizon_days", 10.0)])
        );
        assert_ne!(a, params_hash([("confidence", 0.99)]));
    }

    #[tokio::test]
    async fn the_request_id_is_scoped() {
        assert_eq!(current_request_id(), "");
        let inside = with_request(Arc::from("abc"), async { current_request_id() }).await;
        assert_eq!(inside, "abc");
        assert_eq!(current_request_id(), "");
    }

    #[tokio::test]
    async fn the_key_id_is_recorded_once_per_request() {
        record_key_id(Arc::from("outside"));
        assert_eq!(current_key_id(), "");
        let (before, first, second) = with_request(Arc::from("r1"), async {
            let before = current_key_id();
            record_key_id(Arc::from("alice"));
            let first = current_key_id();
            record_key_id(Arc::from("mallory"));
            (before, first, current_key_id())
        })
        .await;
        assert_eq!(
            (before.as_str(), first.as_str(), second.as_str()),
            ("", "alice", "alice")
        );
        let other = with_request(Arc::from("r2"), async { current_key_id() }).await;
        assert_eq!(other, "", "a key id never leaks into the next request");
    }
}

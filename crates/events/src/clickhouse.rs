//! [`ClickHouseSink`]: score events into a ClickHouse MergeTree table,
//! batched and asynchronous, spooled to disk while ClickHouse is away.
//!
//! `record` only counts and hands events to one writer task (or, when the
//! in-memory queue is full, appends them to the spool itself), so a request
//! never waits on ClickHouse. The writer inserts a batch when it has
//! `--events-batch` events or `--events-flush-ms` passed. A failed or slow
//! insert (bounded by `--clickhouse-timeout-ms`) sends the batch to the
//! spool; while the spool holds anything, new batches append to it too (to
//! keep order) and the writer replays it oldest segment first, backing off
//! from 0.5 s to 30 s between attempts, until it is empty.
//!
//! In durable mode (`--events-durable`) the spool is the log: `record`
//! appends every event to it and waits for a [`GroupCommit`] fsync before the
//! request is answered, and the writer replays the spool into ClickHouse every
//! `--events-flush-ms`. One fsync covers every append made while the
//! previous one ran, so concurrent requests share it.
//!
//! The table (created at start or once ClickHouse first answers) is
//! `MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY (portfolio_id, model, ts)`
//! with LowCardinality strings; servers from 20.1 also get codecs. 18.16
//! has no DateTime64, so the time is `ts DateTime` plus `ts_us UInt32` (the
//! microseconds within the second) on every version, which keeps one row
//! layout for all. Columns added later (`key_id`) are added to an existing
//! table with `ALTER TABLE … ADD COLUMN` after a look at `system.columns`
//! (18.16 has no `ADD COLUMN IF NOT EXISTS`), see [`create_events_table`],
//! which also creates the aggregate tables and views of `analytics.rs`.
//!
//! What replay needs (`docs/replay.md`): each event's resolved parameters
//! (`params`, JSON), its seed and `portfolio_hash`; the canonical positions
//! behind a hash go once into `{table}_portfolios` (a ReplacingMergeTree
//! keyed by hash), written just before the first events that name them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

use super::analytics::{StatsCache, create_analytics, query_stats};
use super::spool::Spool;
use super::{
    EventSettings, EventSink, HistoryEntry, HistoryError, HistoryQuery, RecordedPosition,
    RecordedScore, ScoreEvent, StatsBucket, StatsQuery, StatsSubject,
};
use riskhost_db::{DbError, ServerVersion, Warehouse, validate_clickhouse_name};

#[derive(Debug, clickhouse::Row, Serialize)]
struct EventRow<'a> {
    ts: u32,
    ts_us: u32,
    request_id: &'a str,
    portfolio_id: &'a str,
    model: &'a str,
    version: &'a str,
    digest: &'a str,
    params_hash: &'a str,
    as_of: u16,
    value: f64,
    unit: &'a str,
    cached: u8,
    latency_us: u64,
    error_code: &'a str,
    path: &'a str,
    snapshot: &'a str,
    key_id: &'a str,
    params: &'a str,
    portfolio_hash: &'a str,
    seed: u64,
}

impl<'a> EventRow<'a> {
    fn new(e: &'a ScoreEvent) -> Self {
        let secs = e.ts_us.div_euclid(1_000_000);
        EventRow {
            ts: u32::try_from(secs).unwrap_or(0),
            ts_us: e.ts_us.rem_euclid(1_000_000) as u32,
            request_id: &e.request_id,
            portfolio_id: &e.portfolio_id,
            model: &e.model,
            version: &e.version,
            digest: &e.digest,
            params_hash: &e.params_hash,
            as_of: e
                .as_of
                .map(|d| u16::try_from(d.to_epoch_days().max(0)).unwrap_or(0))
                .unwrap_or(0),
            value: e.value.unwrap_or(f64::NAN),
            unit: &e.unit,
            cached: u8::from(e.cached),
            latency_us: e.latency_us,
            error_code: &e.error_code,
            path: &e.path,
            snapshot: &e.snapshot,
            key_id: &e.key_id,
            params: &e.params,
            portfolio_hash: &e.portfolio_hash,
            seed: e.seed,
        }
    }
}

/// A row of the portfolios table: canonical positions once per hash.
#[derive(Debug, clickhouse::Row, Serialize)]
struct PortfolioRow<'a> {
    hash: &'a str,
    instruments: Vec<&'a str>,
    quantities: Vec<f64>,
    ts: u32,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct StoredPortfolioRow {
    hash: String,
    instruments: Vec<String>,
    quantities: Vec<f64>,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct RecordedRow {
    ts: u32,
    ts_us: u32,
    portfolio_id: String,
    model: String,
    version: String,
    digest: String,
    params: String,
    portfolio_hash: String,
    seed: u64,
    as_of: u16,
    value: f64,
    path: String,
    snapshot: String,
}

/// The table of canonical positions next to the events `table`.
pub(crate) fn portfolios_table(table: &str) -> String {
    format!("{table}_portfolios")
}

/// The portfolios table's DDL: one row per distinct canonical portfolio,
/// keyed by its hash; a ReplacingMergeTree, so rows written twice (by two
/// replicas, or a spool replayed after a crash) merge into one.
fn create_portfolios_sql(db: &str, table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {db}.{table} (
            hash String,
            instruments Array(String),
            quantities Array(Float64),
            ts DateTime
        ) ENGINE = ReplacingMergeTree
        ORDER BY hash"
    )
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct HistoryRow {
    ts: u32,
    ts_us: u32,
    request_id: String,
    model: String,
    version: String,
    digest: String,
    params_hash: String,
    as_of: u16,
    value: f64,
    unit: String,
    cached: u8,
    latency_us: u64,
    error_code: String,
    path: String,
}

/// The events table's DDL for a server version.
fn create_table_sql(db: &str, table: &str, version: ServerVersion) -> String {
    let codecs = version.has_codecs();
    let c = |codec: &str| {
        if codecs {
            format!(" CODEC({codec})")
        } else {
            String::new()
        }
    };
    format!(
        "CREATE TABLE IF NOT EXISTS {db}.{table} (
            ts DateTime{ts},
            ts_us UInt32,
            request_id String{zstd},
            portfolio_id String,
            model LowCardinality(String),
            version LowCardinality(String),
            digest LowCardinality(String),
            params_hash LowCardinality(String),
            as_of Date{as_of},
            value Float64{value},
            unit LowCardinality(String),
            cached UInt8,
            latency_us UInt64{latency},
            error_code LowCardinality(String),
            path LowCardinality(String),
            snapshot LowCardinality(String),
            key_id LowCardinality(String),
            params LowCardinality(String),
            portfolio_hash String,
            seed UInt64
        ) ENGINE = MergeTree
        PARTITION BY toYYYYMMDD(ts)
        ORDER BY (portfolio_id, model, ts)",
        ts = c("DoubleDelta, LZ4"),
        zstd = c("ZSTD(1)"),
        as_of = c("Delta, LZ4"),
        value = c("Gorilla, LZ4"),
        latency = c("T64, LZ4"),
    )
}

/// Columns added after the table's first layout, with their DDL; each is
/// appended at the end, as a fresh `CREATE TABLE` has it.
const ADDED_COLUMNS: &[(&str, &str)] = &[
    ("key_id", "LowCardinality(String) DEFAULT ''"),
    ("params", "LowCardinality(String) DEFAULT ''"),
    ("portfolio_hash", "String DEFAULT ''"),
    ("seed", "UInt64 DEFAULT 0"),
];

/// Brings a table made by an older riskhost up to the current columns.
/// `client` must carry the LowCardinality setting on servers that need it.
/// Creates the database and the events `table` if missing, in the layout of
/// the server's version, and adds the columns a table made by an older
/// riskhost lacks, then the aggregate tables and their materialized views
/// (`analytics.rs`; the backfill of older events is
/// [`backfill_analytics`](super::backfill_analytics)'s): what the writer
/// does at start and `riskhost db migrate` does on demand. Answers the
/// server's version.
pub async fn create_events_table(wh: &Warehouse, table: &str) -> Result<ServerVersion, DbError> {
    validate_clickhouse_name("table", table)?;
    let version = wh.server_version().await?;
    let db = wh.database();
    wh.execute(
        "create_database",
        &format!("CREATE DATABASE IF NOT EXISTS {db}"),
    )
    .await?;
    let ddl = create_table_sql(db, table, version);
    let client = wh.bare_client().clone();
    let client = if version.low_cardinality_is_experimental() {
        client.with_setting("allow_experimental_low_cardinality_type", "1")
    } else {
        client
    };
    wh.timed("create_events_table", client.query(&ddl).execute())
        .await?;
    add_missing_columns(wh, &client, table).await?;
    let portfolios = portfolios_table(table);
    validate_clickhouse_name("table", &portfolios)?;
    wh.timed(
        "create_portfolios_table",
        client
            .query(&create_portfolios_sql(db, &portfolios))
            .execute(),
    )
    .await?;
    create_analytics(wh, table).await?;
    Ok(version)
}

async fn add_missing_columns(
    wh: &Warehouse,
    client: &clickhouse::Client,
    table: &str,
) -> Result<(), DbError> {
    let db = wh.database();
    let present: Vec<String> = wh
        .timed(
            "events_table_columns",
            wh.client()
                .query("SELECT name FROM system.columns WHERE database = ? AND table = ?")
                .bind(db)
                .bind(table)
                .fetch_all::<String>(),
        )
        .await?;
    for (name, ty) in ADDED_COLUMNS {
        if present.iter().any(|p| p == name) {
            continue;
        }
        let sql = format!("ALTER TABLE {db}.{table} ADD COLUMN {name} {ty}");
        wh.timed("alter_events_table", client.query(&sql).execute())
            .await?;
        tracing::info!(table = %format!("{db}.{table}"), column = name, "score events table: column added");
    }
    Ok(())
}

enum Message {
    Events(Vec<ScoreEvent>),
    Flush(oneshot::Sender<()>),
}

/// Counters shared by the handle and the writer.
#[derive(Default)]
struct Counters {
    queued: AtomicU64,
    queued_bytes: AtomicU64,
}

/// Group commit of the spool: appends take a ticket; one task fsyncs
/// whatever was appended since its last sync and then releases every ticket
/// up to the last one it covered.
struct GroupCommit {
    /// The last ticket handed out (taken under the spool's lock, so ticket
    /// order is file order).
    appended: AtomicU64,
    /// The last ticket on disk.
    synced: tokio::sync::watch::Sender<u64>,
    wake: tokio::sync::Notify,
}

impl GroupCommit {
    fn new() -> Arc<GroupCommit> {
        Arc::new(GroupCommit {
            appended: AtomicU64::new(0),
            synced: tokio::sync::watch::channel(0).0,
            wake: tokio::sync::Notify::new(),
        })
    }

    /// Waits until `ticket` is on disk.
    async fn wait(&self, ticket: u64) {
        self.wake.notify_one();
        let mut synced = self.synced.subscribe();
        // Err only if the committer is gone, i.e. at shutdown.
        let _ = synced.wait_for(|s| *s >= ticket).await;
    }

    /// Syncs until the sink goes away; every pass covers all appends made
    /// before it started.
    async fn run(self: Arc<Self>, spool: std::sync::Weak<Mutex<Spool>>) {
        loop {
            if self.appended.load(Ordering::Acquire) <= *self.synced.borrow() {
                self.wake.notified().await;
            }
            let Some(spool) = spool.upgrade() else {
                return;
            };
            let target = match spool.lock() {
                Ok(mut spool) => {
                    let covered = self.appended.load(Ordering::Acquire);
                    spool.sync_target().map(|t| (covered, t))
                }
                Err(_) => return,
            };
            drop(spool);
            let covered = match target {
                Ok((covered, target)) => {
                    let synced = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                        if let Some(file) = target.file {
                            file.sync_data()?;
                        }
                        if let Some(dir) = target.dir {
                            dir.sync_all()?;
                        }
                        Ok(())
                    })
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                    if let Err(e) = synced {
                        metrics::counter!("riskhost_events_sync_failures_total").increment(1);
                        tracing::error!("cannot fsync the event spool: {e}");
                    }
                    covered
                }
                Err(e) => {
                    metrics::counter!("riskhost_events_sync_failures_total").increment(1);
                    tracing::error!("cannot fsync the event spool: {e}");
                    self.appended.load(Ordering::Acquire)
                }
            };
            // Released even after a failed sync (counted and logged above):
            // a request must not hang on a broken disk.
            self.synced.send_replace(covered);
            metrics::counter!("riskhost_events_group_commits_total").increment(1);
        }
    }
}

/// The ClickHouse event sink.
pub struct ClickHouseSink {
    tx: mpsc::UnboundedSender<Message>,
    /// Set in durable mode.
    commit: Option<Arc<GroupCommit>>,
    counters: Arc<Counters>,
    spool: Arc<Mutex<Spool>>,
    queue_max: u64,
    queue_max_bytes: u64,
    wh: Warehouse,
    table: String,
    stats: StatsCache,
    /// Set once `challenger_comparisons` is known to exist.
    comparisons_table: std::sync::atomic::AtomicBool,
}

struct Writer {
    wh: Warehouse,
    table: String,
    table_ready: bool,
    /// Durable mode: the spool is the log, replayed every `flush_every`.
    durable: bool,
    batch_max: usize,
    flush_every: Duration,
    spool: Arc<Mutex<Spool>>,
    counters: Arc<Counters>,
    /// When replay may be tried next, and the current back-off.
    retry_at: Instant,
    backoff: Duration,
    /// Portfolio hashes whose positions this writer has stored, so each
    /// distinct portfolio is written about once (the table's engine merges
    /// the rest).
    written: moka::sync::Cache<String, ()>,
}

/// Portfolio hashes a writer remembers as stored.
const WRITTEN_HASHES: u64 = 100_000;

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl ClickHouseSink {
    /// Starts the writer. ClickHouse need not be up: events spool until it is.
    pub async fn start(
        wh: Warehouse,
        args: &EventSettings,
    ) -> Result<Arc<ClickHouseSink>, DbError> {
        validate_clickhouse_name("table", &args.table)?;
        let spool_dir = args.data_dir.join("spool");
        let spool = Spool::open(&spool_dir, args.spool_max_bytes).map_err(|e| {
            DbError::Invalid(format!(
                "cannot open the event spool in {}: {e}",
                spool_dir.display()
            ))
        })?;
        if !spool.is_empty() {
            tracing::info!(
                events = spool.pending(),
                dir = %spool_dir.display(),
                "score events left in the spool by a previous run will be replayed"
            );
        }
        metrics::gauge!("riskhost_events_spool_pending").set(spool.pending() as f64);
        let spool = Arc::new(Mutex::new(spool));
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let mut writer = Writer {
            wh: wh.clone(),
            table: args.table.clone(),
            table_ready: false,
            durable: args.durable,
            batch_max: args.batch.max(1),
            flush_every: args.flush_every.max(Duration::from_millis(1)),
            spool: spool.clone(),
            counters: counters.clone(),
            retry_at: Instant::now(),
            backoff: BACKOFF_MIN,
            written: moka::sync::Cache::new(WRITTEN_HASHES),
        };
        if let Err(e) = writer.ensure_table().await {
            tracing::warn!("score events will be spooled until ClickHouse answers: {e}");
        }
        tokio::spawn(writer.run(rx));
        let commit = args.durable.then(GroupCommit::new);
        if let Some(commit) = &commit {
            tokio::spawn(commit.clone().run(Arc::downgrade(&spool)));
        }
        Ok(Arc::new(ClickHouseSink {
            tx,
            commit,
            counters,
            spool,
            queue_max: args.queue.max(1) as u64,
            queue_max_bytes: args.queue_max_bytes.max(1),
            wh,
            table: args.table.clone(),
            stats: StatsCache::new(),
            comparisons_table: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// The table's name in the database.
    pub fn table(&self) -> &str {
        &self.table
    }
}

/// What `events` count against the queue's byte bound.
fn queued_bytes(events: &[ScoreEvent]) -> u64 {
    events.iter().map(|e| e.approx_bytes() as u64).sum()
}

fn spill(spool: &Mutex<Spool>, events: &[ScoreEvent]) {
    let n = events.len() as u64;
    let outcome = match spool.lock() {
        Ok(mut spool) => {
            let r = spool.append(events);
            metrics::gauge!("riskhost_events_spool_pending").set(spool.pending() as f64);
            r
        }
        Err(_) => Err(std::io::Error::other("the spool lock is poisoned")),
    };
    match outcome {
        Ok(()) => metrics::counter!("riskhost_events_spooled_total").increment(n),
        Err(e) => {
            metrics::counter!("riskhost_events_failed_total").increment(n);
            tracing::error!(events = n, "score events lost: {e}");
        }
    }
}

#[async_trait::async_trait]
impl EventSink for ClickHouseSink {
    async fn record_comparisons(&self, comparisons: Vec<super::Comparison>) {
        // The table is made once per process, not before every batch.
        let table = if self.comparisons_table.load(Ordering::Acquire) {
            Ok(())
        } else {
            super::comparisons::create_comparisons_table(&self.wh)
                .await
                .inspect(|()| self.comparisons_table.store(true, Ordering::Release))
        };
        let written = match table {
            Ok(()) => super::comparisons::insert_comparisons(&self.wh, &comparisons).await,
            Err(e) => Err(e),
        };
        if let Err(error) = written {
            metrics::counter!("riskhost_challenger_comparisons_lost_total")
                .increment(comparisons.len() as u64);
            tracing::warn!(comparisons = comparisons.len(), %error, "challenger comparisons not written");
        }
    }

    async fn record(&self, events: Vec<ScoreEvent>) {
        if events.is_empty() {
            return;
        }
        if let Some(commit) = &self.commit {
            let ticket = match self.spool.lock() {
                Ok(mut spool) => {
                    let n = events.len() as u64;
                    match spool.append(&events) {
                        Ok(()) => {
                            metrics::counter!("riskhost_events_spooled_total").increment(n);
                            metrics::gauge!("riskhost_events_spool_pending")
                                .set(spool.pending() as f64);
                            Some(commit.appended.fetch_add(1, Ordering::AcqRel) + 1)
                        }
                        Err(e) => {
                            metrics::counter!("riskhost_events_failed_total").increment(n);
                            tracing::error!(events = n, "score events lost: {e}");
                            None
                        }
                    }
                }
                Err(_) => None,
            };
            if let Some(ticket) = ticket {
                commit.wait(ticket).await;
            }
            return;
        }
        let n = events.len() as u64;
        let bytes = queued_bytes(&events);
        let queued = self.counters.queued.fetch_add(n, Ordering::AcqRel) + n;
        let held = self
            .counters
            .queued_bytes
            .fetch_add(bytes, Ordering::AcqRel)
            + bytes;
        if queued > self.queue_max || held > self.queue_max_bytes {
            // Memory is bounded, in events and in bytes: past either bound,
            // events go to disk now.
            self.counters.queued.fetch_sub(n, Ordering::AcqRel);
            self.counters
                .queued_bytes
                .fetch_sub(bytes, Ordering::AcqRel);
            spill(&self.spool, &events);
            return;
        }
        metrics::gauge!("riskhost_events_queued").set(queued as f64);
        metrics::gauge!("riskhost_events_queued_bytes").set(held as f64);
        if let Err(mpsc::error::SendError(Message::Events(events))) =
            self.tx.send(Message::Events(events))
        {
            // The writer is gone (shutdown): keep the events on disk.
            self.counters.queued.fetch_sub(n, Ordering::AcqRel);
            self.counters
                .queued_bytes
                .fetch_sub(bytes, Ordering::AcqRel);
            spill(&self.spool, &events);
        }
    }

    async fn flush(&self, timeout: Duration) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).is_err() {
            return;
        }
        if tokio::time::timeout(timeout, wait).await.is_err() {
            tracing::warn!(?timeout, "score events not flushed within the timeout");
        }
    }

    async fn history(&self, q: &HistoryQuery) -> Result<Vec<HistoryEntry>, HistoryError> {
        let db = self.wh.database();
        let mut sql = format!(
            "SELECT ts, ts_us, request_id, model, version, digest, params_hash, as_of, value, unit,
                    cached, latency_us, error_code, path
             FROM {db}.{} WHERE portfolio_id = ?",
            self.table
        );
        if q.model.is_some() {
            sql.push_str(" AND model = ?");
        }
        if q.from.is_some() {
            sql.push_str(" AND ts >= toDateTime(?)");
        }
        if q.to.is_some() {
            sql.push_str(" AND ts < toDateTime(?)");
        }
        sql.push_str(" ORDER BY ts, ts_us LIMIT ?");
        let mut query = self.wh.client().query(&sql).bind(&q.portfolio_id);
        if let Some(model) = &q.model {
            query = query.bind(model);
        }
        let secs = |t: &DateTime<Utc>| u32::try_from(t.timestamp().max(0)).unwrap_or(u32::MAX);
        if let Some(from) = &q.from {
            query = query.bind(secs(from));
        }
        if let Some(to) = &q.to {
            // `ts` has whole seconds: a bound inside a second includes it.
            let end = if to.timestamp_subsec_micros() > 0 {
                secs(to).saturating_add(1)
            } else {
                secs(to)
            };
            query = query.bind(end);
        }
        let rows: Vec<HistoryRow> = self
            .wh
            .timed("score_history", query.bind(q.limit).fetch_all())
            .await
            .map_err(|e| HistoryError::Unavailable(e.to_string()))?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let ts_us = i64::from(r.ts) * 1_000_000 + i64::from(r.ts_us);
                HistoryEntry {
                    ts: DateTime::from_timestamp_micros(ts_us).unwrap_or_default(),
                    request_id: r.request_id,
                    model: r.model,
                    version: r.version,
                    digest: r.digest,
                    params_hash: r.params_hash,
                    as_of: (r.as_of > 0)
                        .then(|| NaiveDate::from_epoch_days(i32::from(r.as_of)))
                        .flatten(),
                    value: r.value.is_finite().then_some(r.value),
                    unit: r.unit,
                    cached: r.cached != 0,
                    latency_us: r.latency_us,
                    error_code: (!r.error_code.is_empty()).then_some(r.error_code),
                    path: r.path,
                }
            })
            .filter(|e| {
                // Sub-second precision of the bounds, applied here.
                q.from.is_none_or(|f| e.ts >= f) && q.to.is_none_or(|t| e.ts < t)
            })
            .collect())
    }

    fn keeps_replay_data(&self) -> bool {
        true
    }

    async fn recorded(
        &self,
        request_id: &str,
        limit: usize,
    ) -> Result<Vec<RecordedScore>, HistoryError> {
        let db = self.wh.database();
        // The table is ordered by portfolio: a request's events are found
        // by a scan (docs/replay.md), which replay, an admin's tool, affords.
        let sql = format!(
            "SELECT ts, ts_us, portfolio_id, model, version, digest, params, portfolio_hash,
                    seed, as_of, value, path, snapshot
             FROM {db}.{} WHERE request_id = ? AND error_code = '' AND isFinite(value)
             ORDER BY ts, ts_us LIMIT ?",
            self.table
        );
        let rows: Vec<RecordedRow> = self
            .wh
            .timed(
                "recorded_scores",
                self.wh
                    .client()
                    .query(&sql)
                    .bind(request_id)
                    .bind(u64::try_from(limit).unwrap_or(u64::MAX))
                    .fetch_all(),
            )
            .await
            .map_err(|e| HistoryError::Unavailable(e.to_string()))?;
        let mut hashes: Vec<String> = rows
            .iter()
            .filter(|r| !r.portfolio_hash.is_empty())
            .map(|r| r.portfolio_hash.clone())
            .collect();
        hashes.sort_unstable();
        hashes.dedup();
        let positions = self.stored_positions(hashes).await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let ts_us = i64::from(r.ts) * 1_000_000 + i64::from(r.ts_us);
                RecordedScore {
                    ts: DateTime::from_timestamp_micros(ts_us).unwrap_or_default(),
                    positions: positions.get(&r.portfolio_hash).cloned(),
                    portfolio_id: r.portfolio_id,
                    model: r.model,
                    version: r.version,
                    digest: r.digest,
                    params: r.params,
                    portfolio_hash: r.portfolio_hash,
                    seed: r.seed,
                    as_of: (r.as_of > 0)
                        .then(|| NaiveDate::from_epoch_days(i32::from(r.as_of)))
                        .flatten(),
                    value: r.value,
                    path: r.path,
                    snapshot: r.snapshot,
                }
            })
            .collect())
    }

    async fn stats(&self, q: &StatsQuery) -> Result<Arc<Vec<StatsBucket>>, HistoryError> {
        let subject = match q.subject {
            StatsSubject::Portfolio { .. } => "portfolio",
            StatsSubject::Model { .. } => "model",
        };
        if let Some(hit) = self.stats.get(q) {
            metrics::counter!("riskhost_stats_requests_total", "subject" => subject, "outcome" => "hit")
                .increment(1);
            return Ok(hit);
        }
        let now = Utc::now();
        let started = Instant::now();
        let answer = query_stats(&self.wh, &self.table, q).await;
        metrics::histogram!("riskhost_stats_query_seconds", "subject" => subject)
            .record(started.elapsed().as_secs_f64());
        let outcome = if answer.is_ok() { "miss" } else { "error" };
        metrics::counter!("riskhost_stats_requests_total", "subject" => subject, "outcome" => outcome)
            .increment(1);
        let answer = Arc::new(answer?);
        self.stats.put(q.clone(), answer.clone(), now);
        Ok(answer)
    }
}

impl ClickHouseSink {
    /// The positions stored under each of `hashes`.
    async fn stored_positions(
        &self,
        hashes: Vec<String>,
    ) -> Result<HashMap<String, Vec<RecordedPosition>>, HistoryError> {
        if hashes.is_empty() {
            return Ok(HashMap::new());
        }
        let db = self.wh.database();
        let sql = format!(
            "SELECT hash, instruments, quantities FROM {db}.{} WHERE has(?, hash)",
            portfolios_table(&self.table)
        );
        let rows: Vec<StoredPortfolioRow> = self
            .wh
            .timed(
                "stored_portfolios",
                self.wh.client().query(&sql).bind(hashes).fetch_all(),
            )
            .await
            .map_err(|e| HistoryError::Unavailable(e.to_string()))?;
        // Rows not merged yet are copies of one another: any one will do.
        Ok(rows
            .into_iter()
            .filter(|r| r.instruments.len() == r.quantities.len())
            .map(|r| {
                let positions = r
                    .instruments
                    .into_iter()
                    .zip(r.quantities)
                    .map(|(instrument, quantity)| RecordedPosition {
                        instrument,
                        quantity,
                    })
                    .collect();
                (r.hash, positions)
            })
            .collect())
    }
}

impl Writer {
    async fn ensure_table(&mut self) -> Result<(), DbError> {
        if self.table_ready {
            return Ok(());
        }
        let version = create_events_table(&self.wh, &self.table).await?;
        tracing::info!(%version, table = %format!("{}.{}", self.wh.database(), self.table), codecs = version.has_codecs(), "score events table ready");
        self.table_ready = true;
        Ok(())
    }

    async fn insert(&mut self, events: &[ScoreEvent]) -> Result<(), DbError> {
        self.ensure_table().await?;
        let stored = self.insert_portfolios(events).await?;
        let client = self.wh.client();
        let table = self.table.clone();
        let span = tracing::info_span!("events_write", table = %table, events = events.len());
        self.wh
            .timed("insert_events", async move {
                let mut insert = client.insert::<EventRow<'_>>(&table).await?;
                for e in events {
                    insert.write(&EventRow::new(e)).await?;
                }
                insert.end().await
            })
            .instrument(span)
            .await?;
        // Remembered only once the events are in: a batch that goes to the
        // spool carries its positions again.
        for hash in stored {
            self.written.insert(hash, ());
        }
        Ok(())
    }

    /// Writes the positions the events carry that this writer has not
    /// stored yet, before the events that name them; answers their hashes.
    async fn insert_portfolios(&self, events: &[ScoreEvent]) -> Result<Vec<String>, DbError> {
        let mut fresh: Vec<(&str, &[super::RecordedPosition])> = Vec::new();
        for e in events {
            if let Some(positions) = &e.positions
                && !e.portfolio_hash.is_empty()
                && !self.written.contains_key(&e.portfolio_hash)
                && !fresh.iter().any(|(h, _)| *h == e.portfolio_hash)
            {
                fresh.push((&e.portfolio_hash, positions.as_slice()));
            }
        }
        if fresh.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.wh.client();
        let table = portfolios_table(&self.table);
        let ts = u32::try_from(Utc::now().timestamp().max(0)).unwrap_or(0);
        let rows = fresh.len();
        self.wh
            .timed("insert_portfolios", async {
                let mut insert = client.insert::<PortfolioRow<'_>>(&table).await?;
                for (hash, positions) in &fresh {
                    insert
                        .write(&PortfolioRow {
                            hash,
                            instruments: positions.iter().map(|p| p.instrument.as_str()).collect(),
                            quantities: positions.iter().map(|p| p.quantity).collect(),
                            ts,
                        })
                        .await?;
                }
                insert.end().await
            })
            .instrument(tracing::info_span!("portfolios_write", rows))
            .await?;
        Ok(fresh.into_iter().map(|(h, _)| h.to_owned()).collect())
    }

    fn spool_pending(&self) -> bool {
        self.spool.lock().map(|s| !s.is_empty()).unwrap_or(false)
    }

    /// Writes a batch: straight to ClickHouse when the spool is empty and
    /// ClickHouse answers, else to the spool.
    async fn write(&mut self, batch: Vec<ScoreEvent>) {
        let n = batch.len() as u64;
        if !self.spool_pending() {
            match self.insert(&batch).await {
                Ok(()) => {
                    metrics::counter!("riskhost_events_written_total").increment(n);
                    return;
                }
                Err(e) => {
                    tracing::warn!(events = n, "spooling score events: {e}");
                    self.retry_at = Instant::now() + self.backoff;
                }
            }
        }
        spill(&self.spool, &batch);
    }

    /// Replays spooled segments, oldest first, while ClickHouse accepts them.
    async fn replay(&mut self) {
        while Instant::now() >= self.retry_at {
            let next = match self.spool.lock() {
                Ok(mut spool) => spool.oldest(),
                Err(_) => return,
            };
            let (seq, events, bad) = match next {
                Ok(Some(segment)) => segment,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!("cannot read the event spool: {e}");
                    self.retry_at = Instant::now() + BACKOFF_MAX;
                    return;
                }
            };
            if bad > 0 {
                metrics::counter!("riskhost_events_failed_total").increment(bad);
                tracing::warn!(lines = bad, "skipped unreadable lines of the event spool");
            }
            match self.insert(&events).await {
                Ok(()) => {
                    let n = events.len() as u64;
                    metrics::counter!("riskhost_events_written_total").increment(n);
                    if let Ok(mut spool) = self.spool.lock() {
                        if let Err(e) = spool.remove(seq, n + bad) {
                            tracing::error!("cannot delete a replayed spool segment: {e}");
                        }
                        metrics::gauge!("riskhost_events_spool_pending")
                            .set(spool.pending() as f64);
                        if spool.is_empty() {
                            tracing::info!("event spool replayed into ClickHouse");
                        }
                    }
                    self.backoff = BACKOFF_MIN;
                }
                Err(e) => {
                    tracing::debug!("event spool replay postponed: {e}");
                    self.retry_at = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                    return;
                }
            }
        }
    }

    fn take(&self, events: &[ScoreEvent]) {
        let (n, bytes) = (events.len() as u64, queued_bytes(events));
        let left = self
            .counters
            .queued
            .fetch_sub(n, Ordering::AcqRel)
            .saturating_sub(n);
        let held = self
            .counters
            .queued_bytes
            .fetch_sub(bytes, Ordering::AcqRel)
            .saturating_sub(bytes);
        metrics::gauge!("riskhost_events_queued").set(left as f64);
        metrics::gauge!("riskhost_events_queued_bytes").set(held as f64);
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Message>) {
        let mut buffer: Vec<ScoreEvent> = Vec::new();
        let mut waiting: VecDeque<oneshot::Sender<()>> = VecDeque::new();
        let mut deadline = Instant::now() + self.flush_every;
        loop {
            // Durable mode replays the spool once per interval, in inserts
            // of everything appended meanwhile, not as fast as it grows.
            let wake = if self.spool_pending() && !self.durable {
                deadline.min(self.retry_at.max(Instant::now()))
            } else {
                deadline
            };
            let message = tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => Some(m),
                    None => break,
                },
                () = tokio::time::sleep_until(wake.into()) => None,
            };
            let mut flush_now = false;
            match message {
                Some(Message::Events(events)) => {
                    self.take(&events);
                    buffer.extend(events);
                }
                Some(Message::Flush(done)) => {
                    waiting.push_back(done);
                    flush_now = true;
                }
                None => {}
            }
            let due = Instant::now() >= deadline;
            if buffer.len() >= self.batch_max || (due && !buffer.is_empty()) || flush_now {
                while !buffer.is_empty() {
                    let rest = buffer.split_off(buffer.len().min(self.batch_max));
                    let batch = std::mem::replace(&mut buffer, rest);
                    self.write(batch).await;
                }
            }
            if due {
                deadline = Instant::now() + self.flush_every;
            }
            if self.spool_pending() {
                if flush_now {
                    // A flush (shutdown) tries the spool once more at once.
                    self.retry_at = Instant::now();
                }
                self.replay().await;
            }
            if flush_now {
                if let Ok(mut spool) = self.spool.lock()
                    && let Err(e) = spool.rotate()
                {
                    tracing::error!("cannot sync the event spool: {e}");
                }
                for done in waiting.drain(..) {
                    let _ = done.send(());
                }
            }
        }
        // Senders gone: whatever is buffered goes to ClickHouse or the spool.
        if !buffer.is_empty() {
            self.write(std::mem::take(&mut buffer)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_follows_the_server_version() {
        let old = create_table_sql("db", "t", ServerVersion(18, 16));
        assert!(!old.contains("CODEC"));
        assert!(old.contains("LowCardinality(String)"));
        assert!(old.contains("PARTITION BY toYYYYMMDD(ts)"));
        assert!(old.contains("ORDER BY (portfolio_id, model, ts)"));
        let new = create_table_sql("db", "t", ServerVersion(23, 8));
        assert!(new.contains("CODEC(DoubleDelta, LZ4)") && new.contains("CODEC(Gorilla, LZ4)"));
    }

    #[test]
    fn rows_split_the_timestamp() {
        let e = ScoreEvent {
            ts_us: 1_545_000_000_123_456,
            request_id: "r".into(),
            portfolio_id: "p".into(),
            model: "m".into(),
            version: "v".into(),
            digest: "d".into(),
            params_hash: "h".into(),
            as_of: NaiveDate::from_ymd_opt(2018, 12, 31),
            value: None,
            unit: "u".into(),
            cached: true,
            latency_us: 5,
            error_code: "x".into(),
            path: "single".into(),
            snapshot: "s".into(),
            key_id: "svc".into(),
            seed: 7,
            ..ScoreEvent::default()
        };
        let row = EventRow::new(&e);
        assert_eq!((row.ts, row.ts_us), (1_545_000_000, 123_456));
        assert_eq!(row.as_of, 17896);
        assert!(row.value.is_nan());
        assert_eq!(row.cached, 1);
        assert_eq!(row.seed, 7);
    }
}

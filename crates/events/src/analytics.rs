//! Score analytics: per-day and per-hour aggregates of the score-events
//! table, kept by ClickHouse materialized views, and the queries that read
//! them (`GET /v1/portfolios/{id}/stats`, `GET /v1/models/{name}/stats`).
//!
//! The one place of their DDL. Four AggregatingMergeTree tables, named after
//! the events table `T`: `T_portfolio_day`, `T_portfolio_hour` (key
//! `(portfolio_id, model, bucket, error_code)`) and `T_model_day`,
//! `T_model_hour` (key `(model, version, bucket, error_code)`), each fed by a
//! materialized view `…_mv` (`CREATE MATERIALIZED VIEW … TO …`). Every row
//! holds aggregate *states* (`countState`, `min/max/avgIfState`,
//! `quantilesTDigestIfState(0.5, 0.95, 0.99)`, `sumState(cached)`), which
//! merges combine and queries finish with the `-Merge` combinators.
//!
//! Why t-digest states and a small index granularity: a query reads whole
//! granules of states, and `quantiles`' reservoir state holds up to 8,192
//! values (64 KiB) per row, so a 90-day read of one model merged tens of
//! MiB; t-digest states are a few KiB at most (within ClickHouse's stated
//! 1 % error), and granules of 256 rows keep what a query reads next to
//! what it asked for (scenario 12 of BENCHMARKS.md: 86 → 7 ms).
//!
//! Why these shapes, on ClickHouse 18.16: it has no `Map` type and its
//! `sumMap` takes only numeric keys, so error counts by code are the
//! `error_code` key column (`''` = a score) rather than a map column; value
//! statistics are `-If` states over the rows without an error (a failed
//! score's value is NaN); buckets are `toDateTime(intDiv(toUInt32(ts), N) * N)`,
//! plain epoch arithmetic, so they are UTC whatever the server's time zone
//! (18.16's `toStartOfHour`/`toDate` follow the server's zone).
//!
//! Exactly once: each view keeps only events with `ts >=` the *cutoff*, the
//! time it was created, written into its own definition (and read back
//! from `system.tables`); [`backfill_analytics`] (`riskhost db migrate`)
//! inserts the aggregates of the events before the cutoff once and records
//! that in `T_analytics_state`, so a second migrate adds nothing. An event
//! stamped before the cutoff that reaches ClickHouse after the backfill
//! (a spool replayed after an outage that spans the migration) is in the
//! raw table but not in the aggregates.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::HistoryError;
use riskhost_db::{DbError, Warehouse, WarehouseSettings, validate_clickhouse_name};

/// How long the backfill of one aggregate table may take.
const BACKFILL_TIMEOUT: Duration = Duration::from_secs(3600);

/// The width of a statistics bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    Day,
    Hour,
}

impl Bucket {
    /// Seconds in one bucket.
    pub fn seconds(self) -> i64 {
        match self {
            Bucket::Day => 86_400,
            Bucket::Hour => 3_600,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Bucket::Day => "day",
            Bucket::Hour => "hour",
        }
    }

    /// The start of the bucket holding `t`.
    pub fn floor(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let s = self.seconds();
        DateTime::from_timestamp(t.timestamp().div_euclid(s) * s, 0).unwrap_or(t)
    }

    /// The end of the bucket holding the instant just before `t` (so a
    /// bucket-aligned `t` stays itself).
    pub fn ceil(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let s = self.seconds();
        let secs = t.timestamp() + i64::from(t.timestamp_subsec_nanos() > 0);
        let up = secs.div_euclid(s) * s + if secs.rem_euclid(s) > 0 { s } else { 0 };
        DateTime::from_timestamp(up, 0).unwrap_or(t)
    }
}

impl std::str::FromStr for Bucket {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "day" => Ok(Bucket::Day),
            "hour" => Ok(Bucket::Hour),
            other => Err(format!("unknown bucket {other:?}: use day or hour")),
        }
    }
}

/// Whose statistics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StatsSubject {
    /// One portfolio, optionally one model of it.
    Portfolio { id: String, model: Option<String> },
    /// One model, optionally one version of it.
    Model {
        name: String,
        version: Option<String>,
    },
}

/// A statistics request, its bounds already aligned to `bucket`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatsQuery {
    pub subject: StatsSubject,
    pub bucket: Bucket,
    /// Inclusive, a bucket start.
    pub from: DateTime<Utc>,
    /// Exclusive, a bucket start.
    pub to: DateTime<Utc>,
}

/// The aggregates of one bucket of one series (a portfolio's model, or a
/// model's version).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct StatsBucket {
    /// The bucket's start (UTC).
    pub start: DateTime<Utc>,
    pub model: String,
    /// Only in a model's statistics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Events recorded: scores and errors.
    pub count: u64,
    /// Events with a value (no error).
    pub scores: u64,
    /// Errors by code.
    pub errors: std::collections::BTreeMap<String, u64>,
    /// Events answered from the memo.
    pub cache_hits: u64,
    /// `cache_hits / count`.
    pub cache_hit_share: f64,
    /// Value statistics over `scores`; absent when there were none.
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
    /// ClickHouse's `quantilesTDigest` (t-digest, merged across rows:
    /// approximate, within ClickHouse's stated 1 %; values kept as Float32).
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

/// The four aggregate tables of an events table, and their bucket widths.
fn targets(table: &str) -> [(String, Bucket, bool); 4] {
    [
        (format!("{table}_portfolio_day"), Bucket::Day, true),
        (format!("{table}_portfolio_hour"), Bucket::Hour, true),
        (format!("{table}_model_day"), Bucket::Day, false),
        (format!("{table}_model_hour"), Bucket::Hour, false),
    ]
}

fn target_name(table: &str, subject: &StatsSubject, bucket: Bucket) -> String {
    let kind = match subject {
        StatsSubject::Portfolio { .. } => "portfolio",
        StatsSubject::Model { .. } => "model",
    };
    format!("{table}_{kind}_{}", bucket.suffix())
}

/// The aggregate columns, as the target table declares them.
const STATE_COLUMNS: &str = "n AggregateFunction(count),
            hits AggregateFunction(sum, UInt8),
            vmin AggregateFunction(minIf, Float64, UInt8),
            vmax AggregateFunction(maxIf, Float64, UInt8),
            vavg AggregateFunction(avgIf, Float64, UInt8),
            vq AggregateFunction(quantilesTDigestIf(0.5, 0.95, 0.99), Float64, UInt8)";

/// The aggregate columns, as the view's (and the backfill's) SELECT makes them.
const STATE_SELECT: &str = "countState() AS n,
            sumState(cached) AS hits,
            minIfState(value, error_code = '') AS vmin,
            maxIfState(value, error_code = '') AS vmax,
            avgIfState(value, error_code = '') AS vavg,
            quantilesTDigestIfState(0.5, 0.95, 0.99)(value, error_code = '') AS vq";

fn keys(by_portfolio: bool) -> &'static str {
    if by_portfolio {
        "portfolio_id, model"
    } else {
        "model, version"
    }
}

fn create_target_sql(db: &str, target: &str, by_portfolio: bool) -> String {
    // The events' own types: a view pushes its columns as they are, and
    // 18.16 refuses a LowCardinality column into a String one (failing the
    // events' insert with it).
    let key_columns = if by_portfolio {
        "portfolio_id String, model LowCardinality(String)"
    } else {
        "model LowCardinality(String), version LowCardinality(String)"
    };
    format!(
        "CREATE TABLE IF NOT EXISTS {db}.{target} (
            bucket DateTime,
            {key_columns},
            error_code LowCardinality(String),
            {STATE_COLUMNS}
        ) ENGINE = AggregatingMergeTree
        PARTITION BY toYYYYMM(bucket)
        ORDER BY ({keys}, bucket, error_code)
        SETTINGS index_granularity = 256",
        keys = keys(by_portfolio)
    )
}

/// The SELECT of a view (`ts >= cutoff`) or of the backfill (`ts < cutoff`).
fn aggregate_select(
    db: &str,
    table: &str,
    bucket: Bucket,
    by_portfolio: bool,
    filter: &str,
) -> String {
    let s = bucket.seconds();
    let keys = keys(by_portfolio);
    format!(
        "SELECT toDateTime(intDiv(toUInt32(ts), {s}) * {s}) AS bucket, {keys}, error_code,
            {STATE_SELECT}
        FROM {db}.{table} WHERE {filter}
        GROUP BY bucket, {keys}, error_code"
    )
}

fn create_view_sql(
    db: &str,
    table: &str,
    target: &str,
    bucket: Bucket,
    by_portfolio: bool,
    cutoff: u32,
) -> String {
    format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{target}_mv TO {db}.{target} AS {}",
        aggregate_select(
            db,
            table,
            bucket,
            by_portfolio,
            &format!("{CUTOFF_PREFIX}{cutoff})")
        )
    )
}

/// How a view's definition names its cutoff (read back by [`view_cutoff`]).
const CUTOFF_PREFIX: &str = "ts >= toDateTime(";

/// The cutoff written in a view's definition.
fn view_cutoff(create_query: &str) -> Option<u32> {
    let rest = &create_query[create_query.rfind(CUTOFF_PREFIX)? + CUTOFF_PREFIX.len()..];
    rest[..rest.find(')')?].trim().parse().ok()
}

/// Creates the aggregate tables and their views for the events `table`
/// (which must exist), keeping a view's cutoff once it has one. Answers the
/// cutoff (seconds since the epoch): events from it on are aggregated by
/// the views. Called by [`create_events_table`](super::create_events_table).
pub(crate) async fn create_analytics(wh: &Warehouse, table: &str) -> Result<u32, DbError> {
    let db = wh.database();
    wh.execute(
        "create_analytics_state",
        &format!(
            "CREATE TABLE IF NOT EXISTS {db}.{table}_analytics_state
             (step String, cutoff DateTime, done DateTime) ENGINE = TinyLog"
        ),
    )
    .await?;
    let now: u32 = wh
        .timed(
            "analytics_now",
            wh.client()
                .query("SELECT toUInt32(now())")
                .fetch_one::<u32>(),
        )
        .await?;
    // A view's own columns take the events' LowCardinality types, which
    // 18.16 creates only when told to.
    let client = if wh.server_version().await?.low_cardinality_is_experimental() {
        wh.bare_client()
            .clone()
            .with_setting("allow_experimental_low_cardinality_type", "1")
    } else {
        wh.bare_client().clone()
    };
    let mut cutoff = None;
    for (target, bucket, by_portfolio) in targets(table) {
        let ddl = create_target_sql(db, &target, by_portfolio);
        wh.timed("create_analytics_table", client.query(&ddl).execute())
            .await?;
        let existing = existing_cutoff(wh, &format!("{target}_mv")).await?;
        // Every view shares the first one's cutoff, so the backfill's one
        // bound fits them all.
        let c = *cutoff.get_or_insert(existing.unwrap_or(now));
        if existing.is_none() {
            let ddl = create_view_sql(db, table, &target, bucket, by_portfolio, c);
            wh.timed("create_analytics_view", client.query(&ddl).execute())
                .await?;
        }
    }
    Ok(cutoff.unwrap_or(now))
}

async fn existing_cutoff(wh: &Warehouse, view: &str) -> Result<Option<u32>, DbError> {
    let rows: Vec<String> = wh
        .timed(
            "analytics_view",
            wh.client()
                .query(
                    "SELECT create_table_query FROM system.tables WHERE database = ? AND name = ?",
                )
                .bind(wh.database())
                .bind(view)
                .fetch_all::<String>(),
        )
        .await?;
    match rows.first() {
        None => Ok(None),
        Some(q) => view_cutoff(q).map(Some).ok_or_else(|| {
            DbError::Invalid(format!(
                "the view {view} names no cutoff; drop it and migrate again"
            ))
        }),
    }
}

/// What [`backfill_analytics`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backfill {
    /// The views aggregate events from this second on (epoch seconds).
    pub cutoff: u32,
    /// Events before the cutoff aggregated now; `None` if an earlier
    /// migrate already did.
    pub events: Option<u64>,
}

/// Aggregates the events recorded before the views' cutoff into the
/// aggregate tables, once: the state table records each table's backfill,
/// and a table already backfilled is skipped. Run by `riskhost db migrate`
/// after [`create_events_table`](super::create_events_table); not safe to
/// run twice *concurrently*.
pub async fn backfill_analytics(wh: &Warehouse, table: &str) -> Result<Backfill, DbError> {
    validate_clickhouse_name("table", table)?;
    // An `INSERT … SELECT` over months of events takes far longer than one
    // query may (`--clickhouse-timeout-ms`), and one abandoned by its client
    // runs on in ClickHouse without its record: so it is waited for.
    let wh = &Warehouse::new(WarehouseSettings {
        timeout: BACKFILL_TIMEOUT,
        ..wh.settings().clone()
    })?;
    let db = wh.database();
    let cutoff = create_analytics(wh, table).await?;
    let done: Vec<String> = wh
        .timed(
            "analytics_state",
            wh.client()
                .query(&format!(
                    "SELECT step FROM {db}.{table}_analytics_state WHERE step LIKE 'backfill:%'"
                ))
                .fetch_all::<String>(),
        )
        .await?;
    let mut filled = None;
    for (target, bucket, by_portfolio) in targets(table) {
        let step = format!("backfill:{target}");
        if done.contains(&step) {
            continue;
        }
        // A backfill that ran without its record (interrupted) left rows
        // in buckets that end before the cutoff, which no view writes: refuse
        // rather than count them twice.
        let before =
            bucket.floor(DateTime::from_timestamp(i64::from(cutoff), 0).unwrap_or_default());
        let partial: u64 = wh
            .timed(
                "analytics_backfill_check",
                wh.client()
                    .query(&format!(
                        "SELECT count() FROM {db}.{target} WHERE bucket < toDateTime(?)"
                    ))
                    .bind(u32::try_from(before.timestamp()).unwrap_or(0))
                    .fetch_one::<u64>(),
            )
            .await?;
        if partial > 0 {
            return Err(DbError::Invalid(format!(
                "{db}.{target} already holds aggregates from before the cutoff but no record of a backfill (an interrupted migrate?): drop the {table}_* aggregate tables, their _mv views and {table}_analytics_state, then migrate again"
            )));
        }
        let filter = format!("ts < toDateTime({cutoff})");
        wh.execute(
            "analytics_backfill",
            &format!(
                "INSERT INTO {db}.{target} {}",
                aggregate_select(db, table, bucket, by_portfolio, &filter)
            ),
        )
        .await?;
        wh.execute(
            "analytics_state",
            &format!(
                "INSERT INTO {db}.{table}_analytics_state (step, cutoff, done)
                 VALUES ('{step}', toDateTime({cutoff}), now())"
            ),
        )
        .await?;
        if filled.is_none() {
            let n: u64 = wh
                .timed(
                    "analytics_backfill_count",
                    wh.client()
                        .query(&format!(
                            "SELECT count() FROM {db}.{table} WHERE ts < toDateTime({cutoff})"
                        ))
                        .fetch_one::<u64>(),
                )
                .await?;
            filled = Some(n);
        }
    }
    Ok(Backfill {
        cutoff,
        events: filled,
    })
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct StatsRow {
    bucket: u32,
    model: String,
    version: String,
    error_code: String,
    n: u64,
    cached: u64,
    vmin: f64,
    vmax: f64,
    vavg: f64,
    /// `quantilesTDigest` answers Float32.
    vq: Vec<f32>,
}

/// Reads the aggregates for `q` from the tables of the events `table`.
pub(crate) async fn query_stats(
    wh: &Warehouse,
    table: &str,
    q: &StatsQuery,
) -> Result<Vec<StatsBucket>, HistoryError> {
    let db = wh.database();
    let target = target_name(table, &q.subject, q.bucket);
    let (subject_filter, series, version) = match &q.subject {
        StatsSubject::Portfolio { model, .. } => (
            if model.is_some() {
                "portfolio_id = ? AND model = ?"
            } else {
                "portfolio_id = ?"
            },
            "model",
            "''",
        ),
        StatsSubject::Model { version, .. } => (
            if version.is_some() {
                "model = ? AND version = ?"
            } else {
                "model = ?"
            },
            "model, version",
            "version",
        ),
    };
    let sql = format!(
        "SELECT toUInt32(bucket) AS b, model, {version} AS v, error_code,
                countMerge(n), sumMerge(hits), minIfMerge(vmin), maxIfMerge(vmax),
                avgIfMerge(vavg), quantilesTDigestIfMerge(0.5, 0.95, 0.99)(vq)
         FROM {db}.{target}
         WHERE {subject_filter} AND bucket >= toDateTime(?) AND bucket < toDateTime(?)
         GROUP BY b, {series}, v, error_code
         ORDER BY b, {series}, v, error_code"
    );
    let mut query = wh.client().query(&sql);
    match &q.subject {
        StatsSubject::Portfolio { id, model } => {
            query = query.bind(id);
            if let Some(m) = model {
                query = query.bind(m);
            }
        }
        StatsSubject::Model { name, version } => {
            query = query.bind(name);
            if let Some(v) = version {
                query = query.bind(v);
            }
        }
    }
    let secs = |t: &DateTime<Utc>| u32::try_from(t.timestamp().max(0)).unwrap_or(u32::MAX);
    let query = query.bind(secs(&q.from)).bind(secs(&q.to));
    let rows: Vec<StatsRow> = wh
        .timed("score_stats", query.fetch_all())
        .await
        .map_err(|e| HistoryError::Unavailable(e.to_string()))?;
    let with_version = matches!(q.subject, StatsSubject::Model { .. });
    Ok(combine(rows, with_version))
}

/// One bucket per (bucket, model, version) from its rows per error code
/// (the rows arrive sorted, so each group's rows are adjacent).
fn combine(rows: Vec<StatsRow>, with_version: bool) -> Vec<StatsBucket> {
    let mut out: Vec<StatsBucket> = Vec::new();
    for r in rows {
        let same = out.last().is_some_and(|b| {
            b.start.timestamp() == i64::from(r.bucket)
                && b.model == r.model
                && b.version.as_deref().unwrap_or("") == r.version
        });
        if !same {
            out.push(StatsBucket {
                start: DateTime::from_timestamp(i64::from(r.bucket), 0).unwrap_or_default(),
                model: r.model.clone(),
                version: with_version.then(|| r.version.clone()),
                count: 0,
                scores: 0,
                errors: Default::default(),
                cache_hits: 0,
                cache_hit_share: 0.0,
                min: None,
                max: None,
                mean: None,
                p50: None,
                p95: None,
                p99: None,
            });
        }
        let Some(b) = out.last_mut() else { continue };
        b.count += r.n;
        b.cache_hits += r.cached;
        b.cache_hit_share = if b.count > 0 {
            b.cache_hits as f64 / b.count as f64
        } else {
            0.0
        };
        if r.error_code.is_empty() {
            b.scores = r.n;
            if r.n > 0 {
                let finite = |v: f64| v.is_finite().then_some(v);
                b.min = finite(r.vmin);
                b.max = finite(r.vmax);
                b.mean = finite(r.vavg);
                let q = |i: usize| r.vq.get(i).map(|&v| f64::from(v)).and_then(finite);
                b.p50 = q(0);
                b.p95 = q(1);
                b.p99 = q(2);
            }
        } else {
            *b.errors.entry(r.error_code).or_default() += r.n;
        }
    }
    out
}

/// Answers kept in memory: a range of closed buckets never changes (but
/// for late events, below), the current bucket changes every second.
pub(crate) struct StatsCache {
    cache: moka::sync::Cache<StatsQuery, (Arc<Vec<StatsBucket>>, Duration)>,
    closed_ttl: Duration,
    open_ttl: Duration,
}

struct PerEntry;

impl moka::Expiry<StatsQuery, (Arc<Vec<StatsBucket>>, Duration)> for PerEntry {
    fn expire_after_create(
        &self,
        _key: &StatsQuery,
        value: &(Arc<Vec<StatsBucket>>, Duration),
        _now: Instant,
    ) -> Option<Duration> {
        Some(value.1)
    }
}

/// Memory the answer cache may hold (by the estimate below).
const CACHE_BYTES: u64 = 32 << 20;
/// About what one bucket takes in memory (strings and an error or two).
const BUCKET_BYTES: usize = 256;

/// How long a closed range's answer is kept: events replayed from a spool
/// after an outage can still land in a closed bucket, so not forever.
pub(crate) const CLOSED_TTL: Duration = Duration::from_secs(30 * 60);
/// How long an answer that includes the current bucket is kept.
pub(crate) const OPEN_TTL: Duration = Duration::from_secs(5);

impl StatsCache {
    pub(crate) fn new() -> StatsCache {
        StatsCache {
            // Bounded in bytes, not answers: one answer may hold 1,000
            // buckets for each of many series.
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_BYTES)
                .weigher(
                    |_q: &StatsQuery, (answer, _): &(Arc<Vec<StatsBucket>>, Duration)| {
                        u32::try_from(256 + answer.len() * BUCKET_BYTES).unwrap_or(u32::MAX)
                    },
                )
                .expire_after(PerEntry)
                .build(),
            closed_ttl: CLOSED_TTL,
            open_ttl: OPEN_TTL,
        }
    }

    pub(crate) fn get(&self, q: &StatsQuery) -> Option<Arc<Vec<StatsBucket>>> {
        self.cache.get(q).map(|(v, _)| v)
    }

    /// Keeps `answer`, for long when every bucket of `q` had closed when
    /// the query started (`now`).
    pub(crate) fn put(&self, q: StatsQuery, answer: Arc<Vec<StatsBucket>>, now: DateTime<Utc>) {
        let ttl = if q.to <= q.bucket.floor(now) {
            self.closed_ttl
        } else {
            self.open_ttl
        };
        self.cache.insert(q, (answer, ttl));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn buckets_align_in_utc() {
        let t = at("2026-12-07T23:30:00.5Z");
        assert_eq!(Bucket::Day.floor(t), at("2026-12-07T00:00:00Z"));
        assert_eq!(Bucket::Day.ceil(t), at("2026-12-08T00:00:00Z"));
        assert_eq!(Bucket::Hour.floor(t), at("2026-12-07T23:00:00Z"));
        assert_eq!(Bucket::Hour.ceil(t), at("2026-12-08T00:00:00Z"));
        let aligned = at("2026-12-07T00:00:00Z");
        assert_eq!(Bucket::Day.ceil(aligned), aligned);
        assert_eq!("hour".parse::<Bucket>(), Ok(Bucket::Hour));
        assert!("week".parse::<Bucket>().is_err());
    }

    #[test]
    fn the_ddl_fits_clickhouse_18_16() {
        let t = create_target_sql("db", "e_portfolio_day", true);
        assert!(
            t.contains("AggregatingMergeTree") && t.contains("quantilesTDigestIf(0.5, 0.95, 0.99)")
        );
        assert!(!t.contains("Map(") && !t.contains("DateTime64"));
        let v = create_view_sql(
            "db",
            "e",
            "e_model_hour",
            Bucket::Hour,
            false,
            1_700_000_000,
        );
        assert!(v.contains("TO db.e_model_hour") && v.contains("intDiv(toUInt32(ts), 3600)"));
        assert_eq!(view_cutoff(&v), Some(1_700_000_000));
        assert_eq!(view_cutoff("CREATE VIEW x AS SELECT 1"), None);
    }

    #[test]
    fn rows_per_error_code_make_one_bucket() {
        let row = |code: &str, n, cached, v: f64| StatsRow {
            bucket: 86_400,
            model: "m".into(),
            version: String::new(),
            error_code: code.into(),
            n,
            cached,
            vmin: v,
            vmax: v,
            vavg: v,
            vq: vec![v as f32; 3],
        };
        let out = combine(vec![row("", 3, 1, 2.0), row("boom", 1, 1, f64::NAN)], false);
        assert_eq!(out.len(), 1);
        let b = &out[0];
        assert_eq!((b.count, b.scores), (4, 3));
        assert_eq!(b.errors.get("boom"), Some(&1));
        assert!((b.cache_hit_share - 0.5).abs() < 1e-12);
        assert_eq!((b.min, b.p99), (Some(2.0), Some(2.0)));
        assert_eq!(b.version, None);
        let only_errors = combine(vec![row("boom", 2, 0, 0.0)], true);
        assert_eq!(only_errors[0].min, None);
        assert_eq!(only_errors[0].version.as_deref(), Some(""));
    }
}

//! Challenger comparisons in ClickHouse: one row per live cell scored by
//! both a model's active version and its challenger
//! (`challenger_comparisons`, a MergeTree by model and time), written in
//! batches by the challenger worker. They are evidence, not served data:
//! a batch ClickHouse refuses is counted and logged, never spooled.

use chrono::NaiveDate;
use serde::Serialize;

use riskhost_db::{DbError, Warehouse};

/// The comparison table.
pub const COMPARISONS_TABLE: &str = "challenger_comparisons";

/// One compared cell.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub ts_us: i64,
    pub request_id: String,
    pub model: String,
    pub champion_digest: String,
    pub challenger_digest: String,
    /// Empty when the portfolio had no id.
    pub portfolio_id: String,
    pub as_of: NaiveDate,
    /// The resolved parameter vector both were scored with.
    pub params: Vec<f64>,
    pub champion: Option<f64>,
    pub challenger: Option<f64>,
    /// Empty when that side scored.
    pub champion_error: String,
    pub challenger_error: String,
    pub abs_diff: Option<f64>,
    pub rel_diff: Option<f64>,
    pub diverged: bool,
}

#[derive(clickhouse::Row, Serialize)]
struct ComparisonRow<'a> {
    ts: u32,
    ts_us: u32,
    request_id: &'a str,
    model: &'a str,
    champion_digest: &'a str,
    challenger_digest: &'a str,
    portfolio_id: &'a str,
    as_of: u16,
    params: &'a [f64],
    champion: Option<f64>,
    challenger: Option<f64>,
    champion_error: &'a str,
    challenger_error: &'a str,
    abs_diff: Option<f64>,
    rel_diff: Option<f64>,
    diverged: u8,
}

/// Creates the comparison table if it is missing (18.16-compatible: no
/// codecs, plain strings, `DateTime` plus microseconds).
pub(crate) async fn create_comparisons_table(wh: &Warehouse) -> Result<(), DbError> {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {db}.{COMPARISONS_TABLE} (
             ts DateTime,
             ts_us UInt32,
             request_id String,
             model String,
             champion_digest String,
             challenger_digest String,
             portfolio_id String,
             as_of Date,
             params Array(Float64),
             champion Nullable(Float64),
             challenger Nullable(Float64),
             champion_error String,
             challenger_error String,
             abs_diff Nullable(Float64),
             rel_diff Nullable(Float64),
             diverged UInt8
         ) ENGINE = MergeTree
         PARTITION BY toYYYYMM(ts)
         ORDER BY (model, challenger_digest, ts)",
        db = wh.database()
    );
    wh.execute("create_challenger_comparisons", &sql).await
}

/// Inserts `comparisons` into the table.
pub(crate) async fn insert_comparisons(
    wh: &Warehouse,
    comparisons: &[Comparison],
) -> Result<(), DbError> {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    let client = wh.client();
    wh.timed("insert_challenger_comparisons", async move {
        let mut insert = client
            .insert::<ComparisonRow<'_>>(COMPARISONS_TABLE)
            .await?;
        for c in comparisons {
            insert
                .write(&ComparisonRow {
                    ts: u32::try_from(c.ts_us.div_euclid(1_000_000)).unwrap_or(0),
                    ts_us: c.ts_us.rem_euclid(1_000_000) as u32,
                    request_id: &c.request_id,
                    model: &c.model,
                    champion_digest: &c.champion_digest,
                    challenger_digest: &c.challenger_digest,
                    portfolio_id: &c.portfolio_id,
                    as_of: u16::try_from((c.as_of - epoch).num_days()).unwrap_or(0),
                    params: &c.params,
                    champion: c.champion,
                    challenger: c.challenger,
                    champion_error: &c.champion_error,
                    challenger_error: &c.challenger_error,
                    abs_diff: c.abs_diff,
                    rel_diff: c.rel_diff,
                    diverged: u8::from(c.diverged),
                })
                .await?;
        }
        insert.end().await
    })
    .await
}

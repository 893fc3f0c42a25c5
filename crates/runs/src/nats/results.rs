//! Run results of the NATS backend in ClickHouse: `run_results`, a
//! `ReplacingMergeTree` keyed by (run, portfolio index, model). A chunk
//! delivered twice inserts its rows twice; reads use `FINAL`, which keeps
//! one row per key, and merges drop the copy for good. Partitions are the
//! runs' submission months (a run's rows share one, which `FINAL` and the
//! merges need), so old runs leave with `ALTER TABLE … DROP PARTITION`.
//!
//! Each row keeps the result line verbatim (`line`, what
//! `GET /v1/runs/{id}/results` streams) next to columns for SQL: the
//! portfolio, model, digest, value and error code.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use futures::StreamExt;
use serde::Serialize;

use super::super::chunk::append_result_line;
use super::super::{ResultLines, RunError};
use riskhost_db::{DbError, Warehouse};
use riskhost_scoring::{BatchCell, CellOutcome};

/// The results table.
const TABLE: &str = "run_results";

#[derive(clickhouse::Row, Serialize)]
struct ResultRow<'a> {
    run_id: &'a str,
    /// Days since 1970-01-01 of the run's submission (`Date`).
    run_date: u16,
    portfolio_index: u64,
    model: &'a str,
    portfolio_id: &'a str,
    digest: &'a str,
    value: Option<f64>,
    error_code: &'a str,
    line: &'a str,
    /// Seconds since the epoch (`DateTime`): the newer copy wins a merge.
    written_at: u32,
}

/// Where run results are written and read.
pub(crate) struct ResultStore {
    warehouse: Warehouse,
}

fn unavailable(error: DbError) -> RunError {
    RunError::Unavailable(error.to_string())
}

fn days_since_epoch(date: NaiveDate) -> u16 {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    u16::try_from((date - epoch).num_days()).unwrap_or(0)
}

impl ResultStore {
    pub(crate) fn new(warehouse: Warehouse) -> ResultStore {
        ResultStore { warehouse }
    }

    /// Creates the database and the table if they are missing.
    pub(crate) async fn create_table(&self) -> Result<(), RunError> {
        let database = self.warehouse.database();
        self.warehouse
            .timed(
                "create_database",
                self.warehouse
                    .bare_client()
                    .query(&format!("CREATE DATABASE IF NOT EXISTS {database}"))
                    .execute(),
            )
            .await
            .map_err(unavailable)?;
        // 18.16 knows neither LowCardinality outside the experimental flag
        // nor codecs: plain columns keep one layout for every version.
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {database}.{TABLE} (
                 run_id String,
                 run_date Date,
                 portfolio_index UInt64,
                 model String,
                 portfolio_id String,
                 digest String,
                 value Nullable(Float64),
                 error_code String,
                 line String,
                 written_at DateTime
             ) ENGINE = ReplacingMergeTree(written_at)
             PARTITION BY toYYYYMM(run_date)
             ORDER BY (run_id, portfolio_index, model)"
        );
        self.warehouse
            .execute("create_run_results", &sql)
            .await
            .map_err(unavailable)
    }

    /// Inserts the rows of one chunk's cells.
    pub(crate) async fn write(
        &self,
        run_id: &str,
        submitted_at: DateTime<Utc>,
        cells: &[BatchCell],
    ) -> Result<(), RunError> {
        let run_date = days_since_epoch(submitted_at.date_naive());
        let written_at = u32::try_from(Utc::now().timestamp()).unwrap_or(u32::MAX);
        let mut lines = Vec::with_capacity(cells.len());
        for cell in cells {
            let mut line = Vec::with_capacity(256);
            append_result_line(&mut line, run_id, cell)?;
            line.pop();
            // serde_json writes UTF-8.
            lines.push(String::from_utf8(line).map_err(|e| RunError::store("a result line", e))?);
        }
        let client = self.warehouse.client();
        self.warehouse
            .timed("insert_run_results", async move {
                let mut insert = client.insert::<ResultRow<'_>>(TABLE).await?;
                for (cell, line) in cells.iter().zip(&lines) {
                    let (digest, value, error_code) = match &cell.outcome {
                        CellOutcome::Score(score) => (score.digest.as_str(), Some(score.value), ""),
                        CellOutcome::Error { error } => ("", None, error.code),
                    };
                    insert
                        .write(&ResultRow {
                            run_id,
                            run_date,
                            portfolio_index: cell.portfolio_index as u64,
                            model: &cell.model,
                            portfolio_id: cell.portfolio_id.as_deref().unwrap_or_default(),
                            digest,
                            value,
                            error_code,
                            line,
                            written_at,
                        })
                        .await?;
                }
                insert.end().await
            })
            .await
            .map_err(unavailable)
    }

    /// The run's result lines, one per (portfolio, model), in portfolio
    /// order, streamed from ClickHouse as it sends them.
    pub(crate) async fn lines(
        &self,
        run_id: &str,
        submitted_at: DateTime<Utc>,
    ) -> Result<ResultLines, RunError> {
        // The partition bound lets ClickHouse read one month's parts only.
        let month = submitted_at.year() * 100 + submitted_at.month() as i32;
        let cursor = self
            .warehouse
            .client()
            .query(&format!(
                "SELECT line FROM {TABLE} FINAL
                 WHERE run_id = ? AND toYYYYMM(run_date) = ?
                 ORDER BY portfolio_index, model"
            ))
            .bind(run_id)
            .bind(month)
            .fetch_bytes("TabSeparatedRaw")
            .map_err(|e| RunError::Unavailable(format!("ClickHouse: {e}")))?;
        // ClickHouse sends blocks cut anywhere; each item here ends at a
        // line's end, as the CSV conversion needs.
        let stream = futures::stream::unfold(Some((cursor, Vec::new())), |state| async move {
            let (mut cursor, mut partial) = state?;
            loop {
                match cursor.next().await {
                    Ok(Some(bytes)) => {
                        partial.extend_from_slice(&bytes);
                        let Some(end) = partial.iter().rposition(|b| *b == b'\n') else {
                            continue;
                        };
                        let rest = partial.split_off(end + 1);
                        return Some((Ok(partial), Some((cursor, rest))));
                    }
                    Ok(None) if partial.is_empty() => return None,
                    Ok(None) => return Some((Ok(partial), None)),
                    Err(e) => {
                        let error = RunError::Unavailable(format!(
                            "ClickHouse stopped sending the run's results: {e}"
                        ));
                        return Some((Err(error), None));
                    }
                }
            }
        });
        Ok(stream.boxed())
    }
}

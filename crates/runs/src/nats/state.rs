//! Run state of the NATS backend in PostgreSQL (migration 0006): a row per
//! run with its spec, status and counters, a row per chunk with its
//! portfolios and state. Every change of a counter is one statement that
//! also moves the chunk out of `pending`, so a chunk delivered twice is
//! counted once, and a run's status follows from its counters in the same
//! statement.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};

use super::super::chunk::PlannedChunk;
use super::super::{CellCounts, ChunkCounts, ChunkFailure, RunError, RunSpec, RunStatus, RunView};
use riskhost_db::{DbError, PgPool};

/// The run state tables of one schema.
pub(crate) struct RunStore {
    pool: PgPool,
    schema: String,
}

/// What a worker needs to score a chunk.
pub(crate) struct ChunkWork {
    pub status: RunStatus,
    pub spec: RunSpec,
    /// When the run was submitted: its results' partition.
    pub submitted_at: DateTime<Utc>,
    pub first_index: u64,
    pub input: Vec<u8>,
    pub pending: bool,
    /// Times a worker began scoring it.
    pub starts: u32,
    pub last_error: Option<String>,
}

/// A run with chunks not yet on the stream.
pub(crate) struct Unpublished {
    pub id: String,
    pub from: u64,
    pub to: u64,
}

fn unavailable(error: DbError) -> RunError {
    RunError::Unavailable(error.to_string())
}

const VIEW_COLUMNS: &str = "id, status, digests::text, params::text, as_of, portfolios, chunks_total, chunks_done, chunks_failed, cells_ok, cells_failed, submitted_at, started_at, finished_at";

fn status_of(text: &str) -> RunStatus {
    RunStatus::ALL
        .into_iter()
        .find(|s| s.as_str() == text)
        .unwrap_or(RunStatus::Planned)
}

fn count(row: &tokio_postgres::Row, index: usize) -> u64 {
    u64::try_from(row.get::<_, i64>(index)).unwrap_or(0)
}

fn view_of(row: &tokio_postgres::Row) -> RunView {
    let id: String = row.get(0);
    let digests: String = row.get(2);
    let params: String = row.get(3);
    RunView {
        status: status_of(row.get(1)),
        digests: serde_json::from_str(&digests).unwrap_or_default(),
        params: serde_json::from_str(&params).unwrap_or_default(),
        as_of: row.get(4),
        portfolios: count(row, 5),
        chunks: ChunkCounts {
            total: count(row, 6),
            done: count(row, 7),
            failed: count(row, 8),
        },
        cells: CellCounts {
            ok: count(row, 9),
            failed: count(row, 10),
        },
        submitted_at: row.get(11),
        started_at: row.get(12),
        finished_at: row.get(13),
        failures: Vec::new(),
        status_url: format!("/v1/runs/{id}"),
        cells_per_second: None,
        id,
    }
}

/// The `status` a run has once `chunks_done`/`chunks_failed` are the
/// values named: final when every chunk is done or failed.
fn next_status(done: &str, failed: &str) -> String {
    format!(
        "CASE WHEN status IN ('planned', 'running') AND {done} + {failed} >= chunks_total
              THEN CASE WHEN {failed} = 0 THEN 'completed' ELSE 'completed_with_failures' END
              ELSE status END"
    )
}

impl RunStore {
    pub(crate) fn new(pool: PgPool) -> RunStore {
        let schema = pool.schema();
        RunStore { pool, schema }
    }

    /// Creates a run, not yet accepted, before its chunks are read.
    pub(crate) async fn create(
        &self,
        id: &str,
        key_id: &str,
        spec: &RunSpec,
    ) -> Result<(), RunError> {
        let sql = format!(
            "INSERT INTO {}.runs (id, key_id, digests, params, as_of) VALUES ($1, $2, $3::text::jsonb, $4::text::jsonb, $5)",
            self.schema
        );
        let (id, key_id) = (id.to_owned(), key_id.to_owned());
        let digests =
            serde_json::to_string(&spec.digests).map_err(|e| RunError::store("encode", e))?;
        let params =
            serde_json::to_string(&spec.params).map_err(|e| RunError::store("encode", e))?;
        let as_of = spec.as_of;
        self.pool
            .run("run_create", move |client| {
                Box::pin(async move {
                    client
                        .execute(&sql, &[&id, &key_id, &digests, &params, &as_of])
                        .await
                })
            })
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Stores one planned chunk of run `id`.
    pub(crate) async fn add_chunk(&self, id: &str, chunk: PlannedChunk) -> Result<(), RunError> {
        let sql = format!(
            "INSERT INTO {}.run_chunks (run_id, chunk, first_index, portfolios, input) VALUES ($1, $2, $3, $4, $5)",
            self.schema
        );
        let id = id.to_owned();
        self.pool
            .run("run_add_chunk", move |client| {
                Box::pin(async move {
                    client
                        .execute(
                            &sql,
                            &[
                                &id,
                                &(chunk.number as i64),
                                &(chunk.first_index as i64),
                                &(chunk.portfolios as i32),
                                &chunk.lines,
                            ],
                        )
                        .await
                })
            })
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Marks a planned run accepted with its totals: from now on it is
    /// listed, published and worked.
    pub(crate) async fn accept(
        &self,
        id: &str,
        portfolios: u64,
        chunks: u64,
    ) -> Result<RunView, RunError> {
        let sql = format!(
            "UPDATE {}.runs SET accepted = true, portfolios = $2, chunks_total = $3 WHERE id = $1 RETURNING {VIEW_COLUMNS}",
            self.schema
        );
        let id = id.to_owned();
        let row = self
            .pool
            .run("run_accept", move |client| {
                Box::pin(async move {
                    client
                        .query_one(&sql, &[&id, &(portfolios as i64), &(chunks as i64)])
                        .await
                })
            })
            .await
            .map_err(unavailable)?;
        Ok(view_of(&row))
    }

    /// Deletes a run that was refused while it was planned.
    pub(crate) async fn discard(&self, id: &str) {
        let sql = format!("DELETE FROM {}.runs WHERE id = $1", self.schema);
        let id = id.to_owned();
        let deleted = self
            .pool
            .run("run_discard", move |client| {
                Box::pin(async move { client.execute(&sql, &[&id]).await })
            })
            .await;
        if let Err(error) = deleted {
            tracing::warn!(%error, "cannot delete a refused run; it is deleted with the abandoned ones");
        }
    }

    /// Deletes runs never accepted whose planning began over `age` ago:
    /// their planner died mid-upload, and no client ever got their id.
    pub(crate) async fn delete_abandoned(&self, age: std::time::Duration) -> Result<u64, RunError> {
        let sql = format!(
            "DELETE FROM {}.runs WHERE NOT accepted AND submitted_at < clock_timestamp() - make_interval(secs => $1)",
            self.schema
        );
        let secs = age.as_secs_f64();
        self.pool
            .run("run_delete_abandoned", move |client| {
                Box::pin(async move { client.execute(&sql, &[&secs]).await })
            })
            .await
            .map_err(unavailable)
    }

    /// A run of `key_id`'s, with its failures; another key's run reads as
    /// no run at all.
    pub(crate) async fn view(&self, key_id: &str, id: &str) -> Result<RunView, RunError> {
        let run_sql = format!(
            "SELECT {VIEW_COLUMNS} FROM {}.runs WHERE id = $1 AND key_id = $2 AND accepted",
            self.schema
        );
        let failures_sql = format!(
            "SELECT failure::text FROM {}.run_chunks WHERE run_id = $1 AND state = 'failed' ORDER BY chunk",
            self.schema
        );
        let (run_id, key_id) = (id.to_owned(), key_id.to_owned());
        let found = self
            .pool
            .run("run_view", move |client| {
                Box::pin(async move {
                    let Some(row) = client.query_opt(&run_sql, &[&run_id, &key_id]).await? else {
                        return Ok(None);
                    };
                    let failures = client.query(&failures_sql, &[&run_id]).await?;
                    Ok(Some((row, failures)))
                })
            })
            .await
            .map_err(unavailable)?;
        let Some((row, failures)) = found else {
            return Err(RunError::UnknownRun(id.to_owned()));
        };
        let mut view = view_of(&row);
        view.failures = failures
            .iter()
            .filter_map(|row| {
                let text: Option<String> = row.get(0);
                text.and_then(|t| serde_json::from_str::<ChunkFailure>(&t).ok())
            })
            .collect();
        Ok(view)
    }

    /// `key_id`'s runs, newest first (at most `limit`).
    pub(crate) async fn list(&self, key_id: &str, limit: i64) -> Result<Vec<RunView>, RunError> {
        let sql = format!(
            "SELECT {VIEW_COLUMNS} FROM {}.runs WHERE key_id = $1 AND accepted ORDER BY submitted_at DESC LIMIT $2",
            self.schema
        );
        let key_id = key_id.to_owned();
        let rows = self
            .pool
            .run("run_list", move |client| {
                Box::pin(async move { client.query(&sql, &[&key_id, &limit]).await })
            })
            .await
            .map_err(unavailable)?;
        Ok(rows.iter().map(view_of).collect())
    }

    /// Cancels a run of `key_id`'s that is not final; answers whether it
    /// changed.
    pub(crate) async fn cancel(&self, key_id: &str, id: &str) -> Result<bool, RunError> {
        let sql = format!(
            "UPDATE {}.runs SET status = 'cancelled', finished_at = clock_timestamp()
             WHERE id = $1 AND key_id = $2 AND accepted AND status IN ('planned', 'running')",
            self.schema
        );
        let (id, key_id) = (id.to_owned(), key_id.to_owned());
        let changed = self
            .pool
            .run("run_cancel", move |client| {
                Box::pin(async move { client.execute(&sql, &[&id, &key_id]).await })
            })
            .await
            .map_err(unavailable)?;
        Ok(changed > 0)
    }

    /// Records that chunks `0..through` of run `id` are on the stream.
    pub(crate) async fn mark_published(&self, id: &str, through: u64) -> Result<(), RunError> {
        let sql = format!(
            "UPDATE {}.runs SET chunks_published = GREATEST(chunks_published, $2) WHERE id = $1",
            self.schema
        );
        let id = id.to_owned();
        self.pool
            .run("run_mark_published", move |client| {
                Box::pin(async move { client.execute(&sql, &[&id, &(through as i64)]).await })
            })
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Accepted, unfinished runs with chunks not yet on the stream.
    pub(crate) async fn unpublished(&self) -> Result<Vec<Unpublished>, RunError> {
        let sql = format!(
            "SELECT id, chunks_published, chunks_total FROM {}.runs
             WHERE accepted AND status IN ('planned', 'running') AND chunks_published < chunks_total
             ORDER BY submitted_at",
            self.schema
        );
        let rows = self
            .pool
            .run("run_unpublished", move |client| {
                Box::pin(async move { client.query(&sql, &[]).await })
            })
            .await
            .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|row| Unpublished {
                id: row.get(0),
                from: count(row, 1),
                to: count(row, 2),
            })
            .collect())
    }

    /// Pending chunks of unfinished runs that are all on the stream, by
    /// run: what NATS must hold, for when it holds nothing.
    pub(crate) async fn published_pending(&self) -> Result<Vec<(String, Vec<u64>)>, RunError> {
        let sql = format!(
            "SELECT c.run_id, array_agg(c.chunk ORDER BY c.chunk)
             FROM {s}.run_chunks c JOIN {s}.runs r ON r.id = c.run_id
             WHERE r.accepted AND r.status IN ('planned', 'running')
               AND r.chunks_published = r.chunks_total AND c.state = 'pending'
             GROUP BY c.run_id",
            s = self.schema
        );
        let rows = self
            .pool
            .run("run_published_pending", move |client| {
                Box::pin(async move { client.query(&sql, &[]).await })
            })
            .await
            .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|row| {
                let chunks: Vec<i64> = row.get(1);
                (
                    row.get(0),
                    chunks
                        .into_iter()
                        .filter_map(|c| u64::try_from(c).ok())
                        .collect(),
                )
            })
            .collect())
    }

    /// The chunk `chunk` of run `id` and what the run scores, if both exist.
    pub(crate) async fn chunk_work(
        &self,
        id: &str,
        chunk: u64,
    ) -> Result<Option<ChunkWork>, RunError> {
        let sql = format!(
            "SELECT r.status, r.digests::text, r.params::text, r.as_of, r.submitted_at,
                    c.first_index, c.input, c.state, c.last_error, c.starts
             FROM {s}.runs r JOIN {s}.run_chunks c ON c.run_id = r.id
             WHERE r.id = $1 AND c.chunk = $2 AND r.accepted",
            s = self.schema
        );
        let id = id.to_owned();
        let row = self
            .pool
            .run("run_chunk_work", move |client| {
                Box::pin(async move { client.query_opt(&sql, &[&id, &(chunk as i64)]).await })
            })
            .await
            .map_err(unavailable)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let digests: String = row.get(1);
        let params: String = row.get(2);
        let as_of: NaiveDate = row.get(3);
        let spec = RunSpec {
            digests: serde_json::from_str::<BTreeMap<String, String>>(&digests)
                .map_err(|e| RunError::store("the run's digests", e))?,
            params: serde_json::from_str(&params)
                .map_err(|e| RunError::store("the run's params", e))?,
            as_of,
        };
        let state: &str = row.get(7);
        Ok(Some(ChunkWork {
            status: status_of(row.get(0)),
            spec,
            submitted_at: row.get(4),
            first_index: count(&row, 5),
            input: row.get(6),
            pending: state == "pending",
            last_error: row.get(8),
            starts: u32::try_from(row.get::<_, i32>(9)).unwrap_or(0),
        }))
    }

    /// A worker begins scoring a pending chunk: counts the start, and
    /// moves the run from `planned` to `running`. Answers the chunk's
    /// starts, or `None` if it is no longer pending.
    pub(crate) async fn begin_chunk(&self, id: &str, chunk: u64) -> Result<Option<u32>, RunError> {
        let sql = format!(
            "WITH began AS (
                 UPDATE {s}.run_chunks SET starts = starts + 1
                 WHERE run_id = $1 AND chunk = $2 AND state = 'pending' RETURNING starts),
             started AS (
                 UPDATE {s}.runs SET status = 'running', started_at = clock_timestamp()
                 WHERE id = $1 AND status = 'planned' AND EXISTS (SELECT 1 FROM began))
             SELECT starts FROM began",
            s = self.schema
        );
        let id = id.to_owned();
        let row = self
            .pool
            .run("run_begin_chunk", move |client| {
                Box::pin(async move { client.query_opt(&sql, &[&id, &(chunk as i64)]).await })
            })
            .await
            .map_err(unavailable)?;
        Ok(row.map(|row| u32::try_from(row.get::<_, i32>(0)).unwrap_or(0)))
    }

    /// Takes back a start whose results could not be stored (PostgreSQL or
    /// ClickHouse away): that is not the chunk's fault. Best effort.
    pub(crate) async fn unbegin_chunk(&self, id: &str, chunk: u64) {
        let sql = format!(
            "UPDATE {}.run_chunks SET starts = starts - 1 WHERE run_id = $1 AND chunk = $2 AND state = 'pending' AND starts > 0",
            self.schema
        );
        let id = id.to_owned();
        let _ = self
            .pool
            .run("run_unbegin_chunk", move |client| {
                Box::pin(async move { client.execute(&sql, &[&id, &(chunk as i64)]).await })
            })
            .await;
    }

    /// Records a chunk's results as written: counted once, however often
    /// it is delivered; answers whether this call counted it.
    pub(crate) async fn complete_chunk(
        &self,
        id: &str,
        chunk: u64,
        cells: &CellCounts,
    ) -> Result<bool, RunError> {
        let status = next_status("chunks_done + 1", "chunks_failed");
        let sql = format!(
            "WITH moved AS (
                 UPDATE {s}.run_chunks SET state = 'done', cells_ok = $3, cells_failed = $4
                 WHERE run_id = $1 AND chunk = $2 AND state = 'pending' RETURNING 1)
             UPDATE {s}.runs SET
                 chunks_done = chunks_done + 1,
                 cells_ok = cells_ok + $3,
                 cells_failed = cells_failed + $4,
                 status = {status},
                 finished_at = CASE WHEN {status} <> status THEN clock_timestamp() ELSE finished_at END
             WHERE id = $1 AND EXISTS (SELECT 1 FROM moved)",
            s = self.schema
        );
        let id = id.to_owned();
        let (ok, failed) = (cells.ok as i32, cells.failed as i32);
        let counted = self
            .pool
            .run("run_complete_chunk", move |client| {
                Box::pin(async move {
                    client
                        .execute(&sql, &[&id, &(chunk as i64), &ok, &failed])
                        .await
                })
            })
            .await
            .map_err(unavailable)?;
        Ok(counted > 0)
    }

    /// Keeps why a delivery of a chunk failed, for its quarantine report.
    pub(crate) async fn record_attempt(
        &self,
        id: &str,
        chunk: u64,
        reason: &str,
    ) -> Result<(), RunError> {
        let sql = format!(
            "UPDATE {}.run_chunks SET last_error = $3 WHERE run_id = $1 AND chunk = $2",
            self.schema
        );
        let (id, reason) = (id.to_owned(), reason.to_owned());
        self.pool
            .run("run_record_attempt", move |client| {
                Box::pin(
                    async move { client.execute(&sql, &[&id, &(chunk as i64), &reason]).await },
                )
            })
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Records a chunk as quarantined with its failed cells: counted once;
    /// answers whether this call counted it.
    pub(crate) async fn quarantine_chunk(
        &self,
        id: &str,
        failure: &ChunkFailure,
        failed_cells: u64,
    ) -> Result<bool, RunError> {
        let status = next_status("chunks_done", "chunks_failed + 1");
        let sql = format!(
            "WITH moved AS (
                 UPDATE {s}.run_chunks SET state = 'failed', cells_failed = $3, failure = $4::text::jsonb
                 WHERE run_id = $1 AND chunk = $2 AND state = 'pending' RETURNING 1)
             UPDATE {s}.runs SET
                 chunks_failed = chunks_failed + 1,
                 cells_failed = cells_failed + $3,
                 status = {status},
                 finished_at = CASE WHEN {status} <> status THEN clock_timestamp() ELSE finished_at END
             WHERE id = $1 AND EXISTS (SELECT 1 FROM moved)",
            s = self.schema
        );
        let id = id.to_owned();
        let chunk = failure.chunk as i64;
        let failed = i32::try_from(failed_cells).unwrap_or(i32::MAX);
        let failure = serde_json::to_string(failure).map_err(|e| RunError::store("encode", e))?;
        let counted = self
            .pool
            .run("run_quarantine_chunk", move |client| {
                Box::pin(async move {
                    client
                        .execute(&sql, &[&id, &chunk, &failed, &failure])
                        .await
                })
            })
            .await
            .map_err(unavailable)?;
        Ok(counted > 0)
    }

    /// Accepted runs by status, for the `riskhost_runs` gauge.
    pub(crate) async fn status_counts(&self) -> Result<Vec<(RunStatus, i64)>, RunError> {
        let sql = format!(
            "SELECT status, count(*) FROM {}.runs WHERE accepted GROUP BY status",
            self.schema
        );
        let rows = self
            .pool
            .run("run_status_counts", move |client| {
                Box::pin(async move { client.query(&sql, &[]).await })
            })
            .await
            .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|row| (status_of(row.get(0)), row.get(1)))
            .collect())
    }
}

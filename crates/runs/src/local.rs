//! `--runs local`: runs on one process, kept in the data directory.
//!
//! Each run is a directory `runs/<id>/`: `run.json` (what it scores and
//! where it is), and per chunk `chunks/<n>.in.ndjson` (its portfolios, one
//! per line, written while the submission is read), then `<n>.out.ndjson`
//! (its result lines, written whole and renamed into place, so a chunk
//! scored again replaces its own results) or, after its last delivery,
//! `<n>.failed.json`. Chunks wait in an in-process queue; workers pull them,
//! score them through the batch engine, and requeue a failed one with a
//! backoff until `max_deliveries`. A restart requeues every chunk of an
//! unfinished run that has no results yet. Memory holds counters per run,
//! never a portfolio beyond the chunk being written or scored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::chunk::{
    chunk_failure, parse_portfolios, plan_chunks, quarantined_cells, result_lines, score_chunk,
};
use super::plan::pin;
use super::{
    CellCounts, ChunkCounts, ResultLines, RunError, RunSpec, RunStatus, RunView, Runs, Submission,
};
use riskhost_scoring::{PortfolioInput, ScoringService};

/// Settings of the local backend.
#[derive(Debug, Clone)]
pub struct LocalRunsSettings {
    /// `<data dir>/runs`.
    pub dir: PathBuf,
    pub workers: usize,
    pub chunk_size: usize,
    pub max_portfolios: u64,
    pub max_deliveries: u32,
    /// Wait before a failed chunk's next delivery, times its deliveries.
    pub backoff: Duration,
}

/// What `run.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunRecord {
    key_id: String,
    spec: RunSpec,
    view: RunView,
}

struct RunState {
    record: RunRecord,
    dir: PathBuf,
}

/// One chunk to score.
#[derive(Debug, Clone)]
struct ChunkJob {
    run: String,
    chunk: u64,
    deliveries: u32,
}

struct Shared {
    settings: LocalRunsSettings,
    scoring: Arc<ScoringService>,
    runs: Mutex<HashMap<String, RunState>>,
    /// Serialises writes of `run.json`.
    writing: tokio::sync::Mutex<()>,
    /// Set at shutdown: workers start no chunk after it.
    draining: AtomicBool,
    /// Chunks being scored now.
    in_flight: AtomicUsize,
    queue: mpsc::UnboundedSender<ChunkJob>,
}

/// The local backend; its workers end when it is dropped and the queue
/// drains (the server drops it at shutdown).
pub struct LocalRuns {
    shared: Arc<Shared>,
    max_models: usize,
}

impl LocalRuns {
    /// Opens the run directory, resumes every unfinished run and starts the
    /// workers.
    pub async fn open(
        settings: LocalRunsSettings,
        scoring: Arc<ScoringService>,
        max_models: usize,
    ) -> Result<LocalRuns, RunError> {
        tokio::fs::create_dir_all(&settings.dir)
            .await
            .map_err(|e| RunError::store("cannot create the run directory", e))?;
        let (queue, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            settings,
            scoring,
            runs: Mutex::new(HashMap::new()),
            writing: tokio::sync::Mutex::new(()),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            queue,
        });
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        for _ in 0..shared.settings.workers.max(1) {
            let shared = Arc::downgrade(&shared);
            let receiver = receiver.clone();
            tokio::spawn(async move {
                loop {
                    let job = receiver.lock().await.recv().await;
                    let (Some(job), Some(shared)) = (job, shared.upgrade()) else {
                        break;
                    };
                    shared.work(job).await;
                }
            });
        }
        let resumed = shared.resume().await?;
        if resumed > 0 {
            tracing::info!(chunks = resumed, "resumed unfinished runs");
        }
        Ok(LocalRuns { shared, max_models })
    }
}

fn chunk_path(dir: &Path, chunk: u64, suffix: &str) -> PathBuf {
    dir.join("chunks").join(format!("{chunk:08}.{suffix}"))
}

impl Shared {
    fn queue_chunk(&self, job: ChunkJob) {
        metrics::gauge!("riskhost_run_chunks_pending").increment(1.0);
        // The receiver lives as long as the workers, which live as long as
        // `self`: a send cannot fail while `self` exists.
        let _ = self.queue.send(job);
    }

    /// Requeues the chunks without results of every run that is not final.
    async fn resume(&self) -> Result<u64, RunError> {
        let mut entries = tokio::fs::read_dir(&self.settings.dir)
            .await
            .map_err(|e| RunError::store("cannot read the run directory", e))?;
        let mut queued = 0;
        while let Ok(Some(entry)) = entries.next_entry().await {
            let dir = entry.path();
            let Ok(bytes) = tokio::fs::read(dir.join("run.json")).await else {
                continue;
            };
            let Ok(mut record) = serde_json::from_slice::<RunRecord>(&bytes) else {
                tracing::warn!(dir = %dir.display(), "unreadable run.json; the run is left as it is");
                continue;
            };
            let id = record.view.id.clone();
            let mut pending = Vec::new();
            if !record.view.status.is_final() {
                // Counters from the files: results written before the stop count.
                let (mut done, mut failed, mut cells) = (0, 0, CellCounts::default());
                for chunk in 0..record.view.chunks.total {
                    if chunk_path(&dir, chunk, "failed.json").exists() {
                        failed += 1;
                    } else if let Ok(out) =
                        tokio::fs::read(chunk_path(&dir, chunk, "out.ndjson")).await
                    {
                        done += 1;
                        count_cells(&out, &mut cells);
                    } else {
                        pending.push(chunk);
                    }
                }
                record.view.chunks.done = done;
                record.view.chunks.failed = failed;
                record.view.cells = cells;
                // Its last chunk may have landed just before the stop.
                finish_if_done(&mut record);
            }
            metrics::gauge!("riskhost_runs", "status" => record.view.status.as_str())
                .increment(1.0);
            if let Ok(mut runs) = self.runs.lock() {
                runs.insert(id.clone(), RunState { record, dir });
            }
            // Queued once the run is known: a worker drops a chunk of a run
            // it cannot find.
            for chunk in pending {
                self.queue_chunk(ChunkJob {
                    run: id.clone(),
                    chunk,
                    deliveries: 0,
                });
                queued += 1;
            }
        }
        Ok(queued)
    }

    fn view(&self, key_id: &str, id: &str) -> Result<(RunView, PathBuf), RunError> {
        let runs = self
            .runs
            .lock()
            .map_err(|_| RunError::store("runs", "poisoned"))?;
        match runs.get(id) {
            // Another key's run reads as no run at all.
            Some(state) if state.record.key_id == key_id => {
                Ok((state.record.view.clone(), state.dir.clone()))
            }
            _ => Err(RunError::UnknownRun(id.to_owned())),
        }
    }

    /// Applies `change` to a run's record and writes `run.json` again.
    async fn update(&self, id: &str, change: impl FnOnce(&mut RunRecord)) -> Option<RunView> {
        let (record, dir, before, after) = {
            let mut runs = self.runs.lock().ok()?;
            let state = runs.get_mut(id)?;
            let before = state.record.view.status;
            change(&mut state.record);
            let after = state.record.view.status;
            (state.record.clone(), state.dir.clone(), before, after)
        };
        if before != after {
            metrics::gauge!("riskhost_runs", "status" => before.as_str()).decrement(1.0);
            metrics::gauge!("riskhost_runs", "status" => after.as_str()).increment(1.0);
        }
        // One writer at a time, writing the newest record: two updates'
        // writes must not land in the opposite order.
        let _writing = self.writing.lock().await;
        let newest = self
            .runs
            .lock()
            .ok()
            .and_then(|runs| runs.get(id).map(|state| state.record.clone()))
            .unwrap_or(record);
        if let Err(error) = write_json(&dir.join("run.json"), &newest).await {
            tracing::error!(run = %id, %error, "cannot write run.json");
        }
        Some(newest.view)
    }

    /// Scores one chunk and keeps its results, or requeues it, or after
    /// its last delivery quarantines it.
    async fn work(self: &Arc<Self>, job: ChunkJob) {
        metrics::gauge!("riskhost_run_chunks_pending").decrement(1.0);
        // Shutting down: the chunk has no results, so a restart requeues it.
        if self.draining.load(Ordering::Acquire) {
            return;
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.work_on(job).await;
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    async fn work_on(self: &Arc<Self>, job: ChunkJob) {
        let found = self.runs.lock().ok().and_then(|runs| {
            runs.get(&job.run).map(|state| {
                (
                    state.record.spec.clone(),
                    state.dir.clone(),
                    state.record.view.status,
                )
            })
        });
        let Some((spec, dir, status)) = found else {
            return;
        };
        if status.is_final() {
            return;
        }
        if status == RunStatus::Planned {
            self.update(&job.run, |record| {
                if record.view.status == RunStatus::Planned {
                    record.view.status = RunStatus::Running;
                    record.view.started_at = Some(Utc::now());
                }
            })
            .await;
        }
        metrics::gauge!("riskhost_run_chunks_in_flight").increment(1.0);
        let first_index = job.chunk * self.settings.chunk_size as u64;
        let outcome = self.score_and_write(&job, &spec, &dir, first_index).await;
        metrics::gauge!("riskhost_run_chunks_in_flight").decrement(1.0);
        match outcome {
            Ok(cells) => {
                self.update(&job.run, |record| {
                    record.view.chunks.done += 1;
                    record.view.cells.ok += cells.ok;
                    record.view.cells.failed += cells.failed;
                    finish_if_done(record);
                })
                .await;
                metrics::counter!("riskhost_run_cells_total", "outcome" => "ok")
                    .increment(cells.ok);
                metrics::counter!("riskhost_run_cells_total", "outcome" => "failed")
                    .increment(cells.failed);
            }
            Err(reason) if job.deliveries + 1 < self.settings.max_deliveries => {
                tracing::warn!(run = %job.run, chunk = job.chunk, deliveries = job.deliveries + 1, %reason, "a run chunk failed; it will be delivered again");
                let shared = Arc::clone(self);
                let wait = self.settings.backoff * (job.deliveries + 1);
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    shared.queue_chunk(ChunkJob {
                        deliveries: job.deliveries + 1,
                        ..job
                    });
                });
            }
            Err(reason) => {
                self.quarantine(&job, &spec, &dir, first_index, reason)
                    .await
            }
        }
    }

    /// Scores a chunk's portfolios with the run's pinned models and writes
    /// its result lines; answers their counts, or why the chunk failed as a
    /// whole.
    async fn score_and_write(
        &self,
        job: &ChunkJob,
        spec: &RunSpec,
        dir: &Path,
        first_index: u64,
    ) -> Result<CellCounts, String> {
        let portfolios = read_chunk(dir, job.chunk).await?;
        let scored = score_chunk(&self.scoring, &job.run, spec, portfolios, first_index).await?;
        let out = result_lines(&job.run, &scored.cells).map_err(|e| e.to_string())?;
        write_whole(&chunk_path(dir, job.chunk, "out.ndjson"), &out)
            .await
            .map_err(|e| e.to_string())?;
        Ok(scored.counts)
    }

    /// After its last delivery: error cells for each of the chunk's
    /// portfolios × models, and the failure in the run's status.
    async fn quarantine(
        &self,
        job: &ChunkJob,
        spec: &RunSpec,
        dir: &Path,
        first_index: u64,
        reason: String,
    ) {
        tracing::error!(run = %job.run, chunk = job.chunk, deliveries = job.deliveries + 1, %reason, "a run chunk is quarantined");
        let portfolios = read_chunk(dir, job.chunk).await.unwrap_or_default();
        let failure = chunk_failure(
            job.chunk,
            first_index,
            &portfolios,
            reason,
            job.deliveries + 1,
        );
        let cells = quarantined_cells(spec, &portfolios, first_index, &failure);
        let written = match result_lines(&job.run, &cells) {
            Ok(out) => write_whole(&chunk_path(dir, job.chunk, "out.ndjson"), &out).await,
            Err(e) => Err(e),
        };
        let written = match written {
            Ok(()) => write_json(&chunk_path(dir, job.chunk, "failed.json"), &failure).await,
            Err(e) => Err(e),
        };
        if let Err(error) = written {
            tracing::error!(run = %job.run, chunk = job.chunk, %error, "cannot record a quarantined chunk");
        }
        let failed_cells = cells.len() as u64;
        metrics::counter!("riskhost_run_chunks_quarantined_total").increment(1);
        metrics::counter!("riskhost_run_cells_total", "outcome" => "failed")
            .increment(failed_cells);
        self.update(&job.run, |record| {
            record.view.chunks.failed += 1;
            record.view.cells.failed += failed_cells;
            record.view.failures.push(failure);
            finish_if_done(record);
        })
        .await;
    }
}

/// Marks a run whose every chunk is done or quarantined as finished.
fn finish_if_done(record: &mut RunRecord) {
    let view = &mut record.view;
    if view.status.is_final() || view.chunks.done + view.chunks.failed < view.chunks.total {
        return;
    }
    view.status = if view.chunks.failed == 0 {
        RunStatus::Completed
    } else {
        RunStatus::CompletedWithFailures
    };
    view.finished_at = Some(Utc::now());
}

/// A chunk's portfolios, from its input file.
async fn read_chunk(dir: &Path, chunk: u64) -> Result<Vec<PortfolioInput>, String> {
    let path = chunk_path(dir, chunk, "in.ndjson");
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_portfolios(&bytes, &path.display().to_string())
}

#[async_trait::async_trait]
impl Runs for LocalRuns {
    fn backend(&self) -> &'static str {
        "local"
    }

    async fn submit(&self, submission: Submission) -> Result<RunView, RunError> {
        let shared = &self.shared;
        let spec = pin(&submission.request, &shared.scoring, self.max_models).await?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = shared.settings.dir.join(&id);
        tokio::fs::create_dir_all(dir.join("chunks"))
            .await
            .map_err(|e| RunError::store("cannot create the run's directory", e))?;
        let planned = plan_chunks(
            submission.portfolios,
            shared.settings.chunk_size,
            shared.settings.max_portfolios,
            |chunk| {
                let path = chunk_path(&dir, chunk.number, "in.ndjson");
                async move {
                    tokio::fs::write(&path, &chunk.lines).await.map_err(|e| {
                        RunError::store(&format!("cannot write {}", path.display()), e)
                    })
                }
            },
        )
        .await;
        let (portfolios, chunks) = planned.inspect_err(|_| {
            // Nothing of a refused run stays behind.
            let _ = std::fs::remove_dir_all(&dir);
        })?;
        let view = RunView {
            id: id.clone(),
            status: RunStatus::Planned,
            digests: spec.digests.clone(),
            as_of: spec.as_of,
            params: spec.params.clone(),
            portfolios,
            chunks: ChunkCounts {
                total: chunks,
                done: 0,
                failed: 0,
            },
            cells: CellCounts::default(),
            submitted_at: Utc::now(),
            started_at: None,
            finished_at: None,
            failures: Vec::new(),
            status_url: format!("/v1/runs/{id}"),
            cells_per_second: None,
        };
        let record = RunRecord {
            key_id: submission.key_id,
            spec,
            view: view.clone(),
        };
        write_json(&dir.join("run.json"), &record).await?;
        if let Ok(mut runs) = shared.runs.lock() {
            runs.insert(id.clone(), RunState { record, dir });
        }
        metrics::gauge!("riskhost_runs", "status" => RunStatus::Planned.as_str()).increment(1.0);
        metrics::counter!("riskhost_run_portfolios_total").increment(portfolios);
        for chunk in 0..chunks {
            shared.queue_chunk(ChunkJob {
                run: id.clone(),
                chunk,
                deliveries: 0,
            });
        }
        tracing::info!(run = %id, portfolios, chunks, "run submitted");
        Ok(view)
    }

    async fn status(&self, key_id: &str, id: &str) -> Result<RunView, RunError> {
        Ok(self.shared.view(key_id, id)?.0)
    }

    async fn list(&self, key_id: &str) -> Result<Vec<RunView>, RunError> {
        let runs = self
            .shared
            .runs
            .lock()
            .map_err(|_| RunError::store("runs", "poisoned"))?;
        let mut views: Vec<RunView> = runs
            .values()
            .filter(|state| state.record.key_id == key_id)
            .map(|state| state.record.view.clone())
            .collect();
        views.sort_by_key(|view| std::cmp::Reverse(view.submitted_at));
        Ok(views)
    }

    async fn cancel(&self, key_id: &str, id: &str) -> Result<RunView, RunError> {
        let (view, _) = self.shared.view(key_id, id)?;
        if view.status.is_final() {
            return Ok(view);
        }
        self.shared
            .update(id, |record| {
                if !record.view.status.is_final() {
                    record.view.status = RunStatus::Cancelled;
                    record.view.finished_at = Some(Utc::now());
                }
            })
            .await
            .ok_or_else(|| RunError::UnknownRun(id.to_owned()))
    }

    fn stop_pulling(&self) {
        self.shared.draining.store(true, Ordering::Release);
    }

    async fn drained(&self, deadline: tokio::time::Instant) -> usize {
        super::wait_drained(&self.shared.in_flight, deadline).await
    }

    async fn results(&self, key_id: &str, id: &str) -> Result<ResultLines, RunError> {
        let (view, dir) = self.shared.view(key_id, id)?;
        let lines = futures::stream::iter(0..view.chunks.total)
            .then(move |chunk| {
                let path = chunk_path(&dir, chunk, "out.ndjson");
                async move {
                    match tokio::fs::read(&path).await {
                        Ok(bytes) => Some(Ok(bytes)),
                        // Not scored yet: the lines so far.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                        Err(e) => Some(Err(RunError::store(
                            &format!("cannot read {}", path.display()),
                            e,
                        ))),
                    }
                }
            })
            .filter_map(std::future::ready);
        Ok(lines.boxed())
    }
}

/// Counts the ok and failed cells of result lines (a failed cell has an
/// `error`).
fn count_cells(lines: &[u8], cells: &mut CellCounts) {
    for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let failed = serde_json::from_slice::<serde_json::Value>(line)
            .map_or(true, |cell| cell.get("error").is_some());
        if failed {
            cells.failed += 1;
        } else {
            cells.ok += 1;
        }
    }
}

/// Writes `value` as JSON to `path` through a temporary file and a rename,
/// so a reader never sees half of it.
async fn write_json(path: &Path, value: &impl Serialize) -> Result<(), RunError> {
    let bytes = serde_json::to_vec(value).map_err(|e| RunError::store("encode", e))?;
    write_whole(path, &bytes).await
}

async fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    let tmp = path.with_extension("tmp");
    tokio::fs::write(&tmp, bytes)
        .await
        .map_err(|e| RunError::store(&format!("cannot write {}", tmp.display()), e))?;
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(|e| RunError::store(&format!("cannot rename {}", tmp.display()), e))
}

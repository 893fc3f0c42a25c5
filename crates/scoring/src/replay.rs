//! Replay: the recorded scores of one request computed again, from what
//! their score events recorded (`docs/replay.md`), and compared bit for bit.
//!
//! Each recorded score is re-run on the version that computed it (by
//! digest, loaded from the model store when it is no longer active), with
//! its recorded parameters, canonical positions and as-of date, on its
//! recorded market-data snapshot, so its memo key, and with it the job's
//! seed, is the recorded one. Nothing is read from or written to the memo,
//! and replays record no score events. Data that moved since
//! ([`ReplayError::SnapshotUnavailable`]) or a version purged since
//! ([`ReplayError::VersionGone`]) refuses the replay as a whole: it never
//! runs against other data or another version.
//!
//! Every recorded score runs as a one-job call (as an uncoalesced single
//! request does), with one price window per model version, as-of date and
//! lookback. A model that draws only from `job.seed` (what the SDK asks)
//! replays identically whatever call it was first computed in; one that
//! also draws from WASI randomness, which is one stream per call, replays
//! identically only scores first computed alone, and `identical: false`
//! says so for the others.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::NaiveDate;
use futures::stream::{self, StreamExt};
use serde::Serialize;

use super::batch::CellError;
use super::jobs::{DataPin, Lane, PreparedJob};
use super::{ScoreError, ScoringService, overloaded};
use riskhost_cache::{CanonicalPosition, score_key};
use riskhost_events::{HistoryError, RecordedScore};
use riskhost_market::{DataError, SnapshotId};
use riskhost_models::ModelEntry;

/// The most recorded scores one replay re-runs (a request has at most the
/// batch limits' portfolios × models, a backtest more).
pub const MAX_REPLAY_CELLS: usize = 100_000;

/// One-job calls of a replay in flight at once (each also waits for a
/// place in its model's bulkhead).
const CALLS_IN_FLIGHT: usize = 4;

/// `POST /v1/replay`'s answer.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ReplayResponse {
    pub request_id: String,
    /// One per recorded score of the request, oldest first.
    pub cells: Vec<ReplayCell>,
}

/// One recorded score and its replay.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ReplayCell {
    pub model: String,
    pub version: String,
    /// The version that computed the score, and computed it again.
    pub digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub portfolio_id: Option<String>,
    /// `single`, `batch` or `backtest`: the route that served the score.
    pub path: String,
    pub as_of: NaiveDate,
    /// The market-data snapshot the score was computed on, and replayed on.
    pub snapshot: String,
    /// The job's seed, the recorded one (the replayed job's is the same,
    /// or the cell is not identical and says why).
    pub seed: u64,
    /// The value served then.
    pub recorded: f64,
    /// The value computed now; absent when the replay failed (`error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed: Option<f64>,
    /// Whether `replayed` has the bits of `recorded`.
    pub identical: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<CellError>,
}

/// Why a request cannot be replayed (as opposed to one of its cells).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplayError {
    #[error(
        "replay reads recorded score events: start riskhost with --clickhouse-url (or RISKHOST_CLICKHOUSE_URL) to store them"
    )]
    NotRecorded,
    #[error("the score events cannot be read: {0}")]
    Unavailable(String),
    #[error("no recorded score has request id `{0}`")]
    UnknownRequest(String),
    #[error(
        "request `{request_id}` recorded more than {MAX_REPLAY_CELLS} scores; replay re-runs at most {MAX_REPLAY_CELLS}"
    )]
    TooLarge { request_id: String },
    #[error("{model}'s score of {as_of} cannot be replayed: {reason}")]
    NotReplayable {
        model: String,
        as_of: String,
        reason: String,
    },
    #[error(
        "the scores were computed on market-data snapshot {recorded}, which can no longer be served: the source now serves {current} ({what}); replay never runs on other data"
    )]
    SnapshotUnavailable {
        recorded: String,
        current: String,
        what: String,
    },
    #[error(
        "{model} {digest}, which computed the recorded scores, is no longer stored (the model was deleted with purge)"
    )]
    VersionGone { model: String, digest: String },
    #[error(transparent)]
    Score(#[from] ScoreError),
}

impl ReplayError {
    pub fn code(&self) -> &'static str {
        match self {
            ReplayError::NotRecorded => "replay_not_configured",
            ReplayError::Unavailable(_) => "data_unavailable",
            ReplayError::UnknownRequest(_) => "unknown_request",
            ReplayError::TooLarge { .. } => "replay_too_large",
            ReplayError::NotReplayable { .. } => "not_replayable",
            ReplayError::SnapshotUnavailable { .. } => "snapshot_unavailable",
            ReplayError::VersionGone { .. } => "version_gone",
            ReplayError::Score(e) => e.code(),
        }
    }
}

/// What moved between two snapshots of one source, in words: for
/// `epoch.version` snapshots (the database sources) how many changes of
/// the data lie between them.
fn what_changed(recorded: &str, current: &SnapshotId) -> String {
    let Some((source, version)) = recorded.split_once('@') else {
        return "the recorded snapshot names no source".into();
    };
    if source != current.source {
        return format!("another source: {source} then, {} now", current.source);
    }
    let counter = |v: &str| -> Option<(String, u64)> {
        let (epoch, n) = v.rsplit_once('.')?;
        Some((epoch.to_owned(), n.parse().ok()?))
    };
    match (counter(version), counter(&current.version)) {
        (Some((e1, n1)), Some((e2, n2))) if e1 == e2 && n2 > n1 => format!(
            "prices or instruments were changed {} time{} since: restated, inserted or deleted",
            n2 - n1,
            if n2 - n1 == 1 { "" } else { "s" }
        ),
        (Some((e1, _)), Some((e2, _))) if e1 != e2 => {
            "the database was re-created since (another epoch)".into()
        }
        _ => "the data's content version differs".into(),
    }
}

/// Changes named in the message of a refused replay, at most.
const CHANGES_NAMED: usize = 20;

/// A recorded score made ready to run again.
struct ReplayJob {
    cell: usize,
    entry: Arc<ModelEntry>,
    job: PreparedJob,
}

impl ScoringService {
    /// Re-runs every recorded score of `request_id` and compares it with
    /// what was served.
    pub async fn replay(&self, request_id: &str) -> Result<ReplayResponse, ReplayError> {
        if !self.events.keeps_replay_data() {
            return Err(ReplayError::NotRecorded);
        }
        let records = self
            .events
            .recorded(request_id, MAX_REPLAY_CELLS + 1)
            .await
            .map_err(|e| match e {
                HistoryError::NotConfigured => ReplayError::NotRecorded,
                HistoryError::Unavailable(m) => ReplayError::Unavailable(m),
            })?;
        if records.is_empty() {
            return Err(ReplayError::UnknownRequest(request_id.to_owned()));
        }
        if records.len() > MAX_REPLAY_CELLS {
            return Err(ReplayError::TooLarge {
                request_id: request_id.to_owned(),
            });
        }
        for r in &records {
            replayable(r)?;
        }

        // Every version that computed a score, by digest, whether or not
        // it is active now.
        let mut versions: HashMap<(String, String), Arc<ModelEntry>> = HashMap::new();
        for r in &records {
            let key = (r.model.clone(), r.digest.clone());
            if versions.contains_key(&key) {
                continue;
            }
            let entry = self
                .registry
                .resolve_recorded(&r.model, &r.digest)
                .await
                .map_err(ScoreError::from)?
                .ok_or_else(|| ReplayError::VersionGone {
                    model: r.model.clone(),
                    digest: r.digest.clone(),
                })?;
            versions.insert(key, entry);
        }

        // The recorded snapshots must be the one served now.
        let current = self.market.snapshot();
        let now = current.to_string();
        if let Some(r) = records.iter().find(|r| r.snapshot != now) {
            let mut what = what_changed(&r.snapshot, &current);
            if let Some(changes) = self.changes_since(&r.snapshot, &current).await {
                what.push_str(": ");
                what.push_str(&changes);
            }
            return Err(ReplayError::SnapshotUnavailable {
                what,
                recorded: r.snapshot.clone(),
                current: now,
            });
        }

        let mut cells: Vec<ReplayCell> = records.iter().map(recorded_cell).collect();
        let mut jobs: Vec<ReplayJob> = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            let Some(entry) = versions.get(&(r.model.clone(), r.digest.clone())) else {
                continue;
            };
            match prepare(entry, r, &current) {
                Ok(job) if job.key.seed() == r.seed => jobs.push(ReplayJob {
                    cell: i,
                    entry: entry.clone(),
                    job,
                }),
                Ok(job) => {
                    cells[i].error = Some(CellError {
                        code: "seed_mismatch",
                        message: format!(
                            "the recorded inputs give seed {}, not the recorded {}: they do not describe the job that was scored",
                            job.key.seed(),
                            r.seed
                        ),
                    })
                }
                Err(error) => cells[i].error = Some(cell_error(&error)),
            }
        }

        // One window per version, as-of date and lookback: the window each
        // of its jobs fetched when scored alone.
        let mut groups: BTreeMap<(String, NaiveDate, usize), Vec<ReplayJob>> = BTreeMap::new();
        for job in jobs {
            let as_of = cells[job.cell].as_of;
            groups
                .entry((job.entry.model.digest.clone(), as_of, job.job.lookback))
                .or_default()
                .push(job);
        }
        for ((_, as_of, _), group) in groups {
            let pin = DataPin {
                as_of,
                snapshot: current.clone(),
            };
            let refs: Vec<&PreparedJob> = group.iter().map(|j| &j.job).collect();
            let (window, errors) = self.executor.prefetch(&pin, &refs).await;
            if let Some(moved) = errors.iter().flatten().find(|e| e.is_snapshot_moved()) {
                return Err(snapshot_moved(
                    &cells[0].snapshot,
                    moved,
                    &self.market.snapshot(),
                ));
            }
            let mut runnable = Vec::with_capacity(group.len());
            for (job, error) in group.into_iter().zip(errors) {
                match error {
                    Some(e) => cells[job.cell].error = Some(cell_error(&e)),
                    None => runnable.push(job),
                }
            }
            let Some(window) = window else {
                continue;
            };
            let results: Vec<(usize, Result<f64, ScoreError>)> = stream::iter(runnable)
                .map(|j| {
                    let (executor, window) = (self.executor.clone(), window.clone());
                    async move {
                        let outcome = match j.entry.bulkhead.enter_owned().await {
                            Ok(slot) => executor
                                .run(j.entry.clone(), window, vec![j.job], slot, Lane::Live)
                                .await
                                .pop()
                                .unwrap_or_else(|| {
                                    Err(ScoreError::Internal("the model returned no result".into()))
                                }),
                            Err(source) => Err(overloaded(&j.entry, source)),
                        };
                        let value = outcome.and_then(|o| {
                            o.map(|score| score.value).map_err(|error| {
                                ScoreError::from_model_error(j.entry.model.name(), error)
                            })
                        });
                        (j.cell, value)
                    }
                })
                .buffer_unordered(CALLS_IN_FLIGHT)
                .collect()
                .await;
            for (cell, value) in results {
                match value {
                    Ok(v) => {
                        cells[cell].identical = v.to_bits() == cells[cell].recorded.to_bits();
                        cells[cell].replayed = Some(v);
                    }
                    Err(e) if e.is_snapshot_moved() => {
                        return Err(snapshot_moved(
                            &cells[cell].snapshot,
                            &e,
                            &self.market.snapshot(),
                        ));
                    }
                    Err(e) => cells[cell].error = Some(cell_error(&e)),
                }
            }
        }
        Ok(ReplayResponse {
            request_id: request_id.to_owned(),
            cells,
        })
    }
}

/// Refuses a record that lacks what replay needs.
fn replayable(r: &RecordedScore) -> Result<(), ReplayError> {
    let refuse = |reason: &str| ReplayError::NotReplayable {
        model: r.model.clone(),
        as_of: r.as_of.map(|d| d.to_string()).unwrap_or_default(),
        reason: reason.to_owned(),
    };
    if r.params.is_empty() || r.portfolio_hash.is_empty() {
        return Err(refuse(
            "its event was recorded by a riskhost without replay (no parameters or portfolio hash)",
        ));
    }
    if r.positions.is_none() {
        return Err(refuse(&format!(
            "the positions of portfolio hash {} are not stored",
            r.portfolio_hash
        )));
    }
    if r.as_of.is_none() || r.digest.is_empty() {
        return Err(refuse("its event names no as-of date or model digest"));
    }
    Ok(())
}

/// A cell holding what was recorded, before its replay.
fn recorded_cell(r: &RecordedScore) -> ReplayCell {
    ReplayCell {
        model: r.model.clone(),
        version: r.version.clone(),
        digest: r.digest.clone(),
        portfolio_id: (!r.portfolio_id.is_empty()).then(|| r.portfolio_id.clone()),
        path: r.path.clone(),
        as_of: r.as_of.unwrap_or_default(),
        snapshot: r.snapshot.clone(),
        seed: r.seed,
        recorded: r.value,
        replayed: None,
        identical: false,
        error: None,
    }
}

/// The job a record describes, on `snapshot` (the recorded one).
fn prepare(
    entry: &ModelEntry,
    r: &RecordedScore,
    snapshot: &SnapshotId,
) -> Result<PreparedJob, ScoreError> {
    let named: BTreeMap<String, f64> = serde_json::from_str(&r.params)
        .map_err(|e| ScoreError::Internal(format!("the recorded parameters do not parse: {e}")))?;
    let params = entry.model.description.resolve_params(&named)?;
    let positions: Vec<CanonicalPosition> = r
        .positions
        .iter()
        .flatten()
        .map(|p| CanonicalPosition {
            instrument: p.instrument.clone(),
            quantity: p.quantity,
        })
        .collect();
    let as_of = r.as_of.unwrap_or_default();
    let key = score_key(&entry.model.digest, &params, &positions, snapshot, as_of);
    Ok(PreparedJob {
        key,
        portfolio_id: (!r.portfolio_id.is_empty()).then(|| r.portfolio_id.clone()),
        lookback: entry.model.description.lookback_for(&params),
        positions: Arc::new(positions),
        params,
    })
}

impl ScoringService {
    /// The source's record of what changed in the prices between the
    /// `recorded` snapshot and `current`, in words (`SPX: 1 close restated
    /// on 2018-12-31 (2506.85 → 2600)`); `None` when it keeps no record of
    /// them or cannot be asked.
    async fn changes_since(&self, recorded: &str, current: &SnapshotId) -> Option<String> {
        let (source, version) = recorded.split_once('@')?;
        let recorded = SnapshotId {
            source: source.to_owned(),
            version: version.to_owned(),
        };
        let changes = match self
            .market
            .changes_between(&recorded, current, CHANGES_NAMED + 1)
            .await
        {
            Ok(changes) => changes,
            Err(error) => {
                tracing::warn!(%error, "cannot read what changed in the market data");
                return None;
            }
        };
        if changes.is_empty() {
            return None;
        }
        let mut named: Vec<String> = changes
            .iter()
            .take(CHANGES_NAMED)
            .map(ToString::to_string)
            .collect();
        if changes.len() > CHANGES_NAMED {
            named.push("and more".into());
        }
        Some(named.join("; "))
    }
}

fn cell_error(error: &ScoreError) -> CellError {
    CellError {
        code: error.code(),
        message: error.to_string(),
    }
}

/// The data moved while the replay read it.
fn snapshot_moved(recorded: &str, error: &ScoreError, now: &SnapshotId) -> ReplayError {
    let current = match error {
        ScoreError::Data(e) => match e.as_ref() {
            DataError::SnapshotMoved { now, .. } => now.clone(),
            _ => now.to_string(),
        },
        _ => now.to_string(),
    };
    ReplayError::SnapshotUnavailable {
        what: format!("the data changed while the replay read it: {error}"),
        recorded: recorded.to_owned(),
        current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(source: &str, version: &str) -> SnapshotId {
        SnapshotId {
            source: source.into(),
            version: version.into(),
        }
    }

    #[test]
    fn what_changed_counts_the_changes_between_versions() {
        assert_eq!(
            what_changed("postgres@ab12.42", &snapshot("postgres", "ab12.44")),
            "prices or instruments were changed 2 times since: restated, inserted or deleted"
        );
        assert!(
            what_changed("postgres@ab12.42", &snapshot("postgres", "cd34.1"))
                .contains("re-created")
        );
        assert!(
            what_changed("embedded@x", &snapshot("postgres", "ab.1")).contains("another source")
        );
        assert!(what_changed("csv@1f", &snapshot("csv", "2e")).contains("differs"));
    }
}

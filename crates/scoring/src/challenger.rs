//! Challenger (shadow) scoring: a stored version of a model scored beside
//! the live one on a sample of its live cells, off the request path, and
//! compared cell by cell.
//!
//! The live path only *offers* a sampled cell to a bounded queue
//! (`try_send`: a full queue drops the cell and counts it), so a challenger
//! never delays, fails or changes a live answer. One worker
//! ([`ScoringService::start_challengers`]) scores the queued cells one at a
//! time through the ordinary pinned path: the same snapshot, as-of date,
//! parameters and canonical positions as the live cell, the challenger's
//! own bulkhead, and the memo under the challenger's digest (so its scores
//! serve at once if it is promoted). One call at a time is the challenger's
//! priority: live calls keep every other slot of the machine.
//!
//! A cell *diverges* when `|challenger − champion| > abs + rel·|champion|`
//! (the tolerance given with the challenger). Each comparison updates the
//! challenger's evidence (what `GET /v1/models/{name}/challenger` shows),
//! the `riskhost_challenger_*` metrics, and, when score events go to
//! ClickHouse, a row of `challenger_comparisons`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{CellOutcome, PreparedPortfolio, ScoreError, ScoringService};
use crate::jobs::{DataPin, Lane};
use riskhost_events::{Comparison, current_request_id};
use riskhost_models::{ChallengerSetting, ModelEntry, ResolveError};

/// Cells waiting for the challenger; past it, sampled cells are dropped.
const QUEUE: usize = 4096;
/// Most cells the worker takes from the queue at once.
const ROUND: usize = 256;
/// Cells listed as the worst divergences.
const WORST: usize = 20;

/// How far a challenger may be from the champion and still agree.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Tolerance {
    /// Absolute difference allowed.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schema(minimum = 0.0))]
    pub abs: f64,
    /// Difference allowed relative to the champion's value.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schema(minimum = 0.0))]
    pub rel: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance {
            abs: 1e-9,
            rel: 1e-9,
        }
    }
}

/// Why a challenger cannot be set.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChallengerError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("{0}")]
    Invalid(String),
    /// The version named is the one serving: there is nothing to challenge.
    #[error("{reference} is {model}'s active version; a challenger must be another stored version")]
    IsActive { model: String, reference: String },
}

/// One compared cell among the worst.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct WorstCell {
    pub request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub portfolio_id: Option<String>,
    #[cfg_attr(feature = "schema", schema(value_type = String, format = Date))]
    pub as_of: NaiveDate,
    pub champion_digest: String,
    pub champion: f64,
    pub challenger: f64,
    pub abs_diff: f64,
    pub rel_diff: f64,
}

/// Cells where one side failed and the other did not, by error code.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ErrorAsymmetry {
    /// The challenger failed where the champion scored.
    pub challenger_only: BTreeMap<String, u64>,
    /// The champion failed where the challenger scored.
    pub champion_only: BTreeMap<String, u64>,
    /// Both failed (not a divergence).
    pub both: u64,
}

/// `GET /v1/models/{name}/challenger`: the challenger and its evidence.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ChallengerView {
    pub model: String,
    /// The challenger's version and digest.
    pub version: String,
    pub digest: String,
    pub sample: f64,
    pub tolerance: Tolerance,
    #[cfg_attr(feature = "schema", schema(value_type = String, format = DateTime))]
    pub since: DateTime<Utc>,
    /// Cells scored by both and compared.
    pub compared: u64,
    /// Compared cells over the tolerance.
    pub diverged: u64,
    /// Sampled cells dropped because the challenger's queue was full.
    pub dropped: u64,
    pub mean_abs_diff: f64,
    pub max_abs_diff: f64,
    pub mean_rel_diff: f64,
    pub max_rel_diff: f64,
    pub errors: ErrorAsymmetry,
    /// The cells with the largest relative difference, largest first.
    pub worst: Vec<WorstCell>,
}

/// The evidence gathered so far.
#[derive(Debug, Default)]
struct Evidence {
    compared: u64,
    diverged: u64,
    sum_abs: f64,
    max_abs: f64,
    sum_rel: f64,
    max_rel: f64,
    errors: ErrorAsymmetry,
    worst: Vec<WorstCell>,
}

/// A model's challenger.
pub(crate) struct Challenger {
    model: String,
    version: String,
    digest: String,
    sample: f64,
    tolerance: Tolerance,
    since: DateTime<Utc>,
    /// Live cells seen; sampling takes cell n when ⌊(n+1)·sample⌋ > ⌊n·sample⌋,
    /// so `sample: 1.0` takes every cell and 0.1 every tenth.
    seen: AtomicU64,
    dropped: AtomicU64,
    evidence: Mutex<Evidence>,
}

impl Challenger {
    fn sampled(&self) -> bool {
        let n = self.seen.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * self.sample).floor() > (n * self.sample).floor()
    }

    fn view(&self) -> ChallengerView {
        let evidence = self.evidence.lock().unwrap_or_else(|p| p.into_inner());
        let mean = |sum: f64| {
            if evidence.compared == 0 {
                0.0
            } else {
                sum / evidence.compared as f64
            }
        };
        ChallengerView {
            model: self.model.clone(),
            version: self.version.clone(),
            digest: self.digest.clone(),
            sample: self.sample,
            tolerance: self.tolerance,
            since: self.since,
            compared: evidence.compared,
            diverged: evidence.diverged,
            dropped: self.dropped.load(Ordering::Relaxed),
            mean_abs_diff: mean(evidence.sum_abs),
            max_abs_diff: evidence.max_abs,
            mean_rel_diff: mean(evidence.sum_rel),
            max_rel_diff: evidence.max_rel,
            errors: evidence.errors.clone(),
            worst: evidence.worst.clone(),
        }
    }
}

/// The champion's side of a sampled cell: its value or its error code.
pub(crate) type ChampionOutcome = Result<f64, &'static str>;
/// The challenger's side, likewise.
type ChallengerOutcome = Result<f64, &'static str>;

/// A sampled live cell, for the challenger to score.
pub(crate) struct ShadowJob {
    challenger: Arc<Challenger>,
    champion_digest: String,
    champion: ChampionOutcome,
    params: Vec<f64>,
    portfolio: PreparedPortfolio,
    pin: DataPin,
    request_id: String,
}

/// Every model's challenger, and the queue to the worker.
pub(crate) struct Challengers {
    by_model: RwLock<HashMap<String, Arc<Challenger>>>,
    queue: mpsc::Sender<ShadowJob>,
    receiver: Mutex<Option<mpsc::Receiver<ShadowJob>>>,
}

impl Challengers {
    pub(crate) fn new() -> Challengers {
        let (queue, receiver) = mpsc::channel(QUEUE);
        Challengers {
            by_model: RwLock::new(HashMap::new()),
            queue,
            receiver: Mutex::new(Some(receiver)),
        }
    }

    fn get(&self, model: &str) -> Option<Arc<Challenger>> {
        let by_model = self.by_model.read().unwrap_or_else(|p| p.into_inner());
        if by_model.is_empty() {
            return None;
        }
        by_model.get(model).cloned()
    }
}

impl ScoringService {
    /// Sets `model`'s challenger: `reference` (`1.2.0` or `sha256:…`) must
    /// name a stored version of it other than the active one. Replaces any
    /// challenger it had, and its evidence.
    pub async fn set_challenger(
        &self,
        model: &str,
        reference: &str,
        sample: f64,
        tolerance: Tolerance,
    ) -> Result<ChallengerView, ChallengerError> {
        if !(sample > 0.0 && sample <= 1.0) {
            return Err(ChallengerError::Invalid(format!(
                "`sample`: {sample} is not in (0, 1]"
            )));
        }
        let finite = |x: f64| x.is_finite() && x >= 0.0;
        if !finite(tolerance.abs) || !finite(tolerance.rel) {
            return Err(ChallengerError::Invalid(
                "`tolerance`: `abs` and `rel` must be finite and not negative".into(),
            ));
        }
        let active = self.registry.resolve(model).await?;
        let entry = self
            .registry
            .resolve(&format!("{model}@{reference}"))
            .await?;
        if entry.model.digest == active.model.digest {
            return Err(ChallengerError::IsActive {
                model: model.to_owned(),
                reference: reference.to_owned(),
            });
        }
        let challenger = Arc::new(Challenger {
            model: model.to_owned(),
            version: entry.model.version().to_owned(),
            digest: entry.model.digest.clone(),
            sample,
            tolerance,
            since: Utc::now(),
            seen: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            evidence: Mutex::new(Evidence::default()),
        });
        let view = challenger.view();
        self.challengers
            .by_model
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(model.to_owned(), challenger);
        tracing::info!(model, version = %view.version, digest = %view.digest, sample, "challenger set");
        Ok(view)
    }

    /// `model`'s challenger and its evidence, if it has one.
    pub fn challenger(&self, model: &str) -> Option<ChallengerView> {
        self.challengers.get(model).map(|c| c.view())
    }

    /// Stops `model`'s challenger; answers its last evidence.
    pub fn clear_challenger(&self, model: &str) -> Option<ChallengerView> {
        let removed = self
            .challengers
            .by_model
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(model);
        removed.map(|c| {
            tracing::info!(model, digest = %c.digest, "challenger stopped");
            c.view()
        })
    }

    /// Makes this replica's challengers the fleet's `wanted` ones: sets
    /// those that are new or changed (a challenger left as it was keeps
    /// its evidence) and stops the others.
    pub async fn follow_challengers(&self, wanted: BTreeMap<String, ChallengerSetting>) {
        let current: Vec<String> = self
            .challengers
            .by_model
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for name in current.iter().filter(|name| !wanted.contains_key(*name)) {
            self.clear_challenger(name);
        }
        for (name, setting) in wanted {
            let tolerance = Tolerance {
                abs: setting.tolerance_abs,
                rel: setting.tolerance_rel,
            };
            let unchanged = self.challengers.get(&name).is_some_and(|c| {
                c.digest == setting.digest && c.sample == setting.sample && c.tolerance == tolerance
            });
            if unchanged {
                continue;
            }
            if let Err(error) = self
                .set_challenger(&name, &setting.digest, setting.sample, tolerance)
                .await
            {
                tracing::warn!(model = %name, digest = %setting.digest, %error, "cannot set the fleet's challenger here");
            }
        }
    }

    /// Offers a live cell to `entry`'s challenger, if it has one and the
    /// cell is sampled. Never waits.
    pub(crate) fn offer_to_challenger(
        &self,
        entry: &ModelEntry,
        params: &[f64],
        portfolio: &PreparedPortfolio,
        pin: &DataPin,
        champion: ChampionOutcome,
    ) {
        let Some(challenger) = self.challengers.get(entry.model.name()) else {
            return;
        };
        // A request pinned to the challenger itself is not compared.
        if entry.model.digest == challenger.digest || !challenger.sampled() {
            return;
        }
        let job = ShadowJob {
            challenger: challenger.clone(),
            champion_digest: entry.model.digest.clone(),
            champion,
            params: params.to_vec(),
            portfolio: PreparedPortfolio {
                id: portfolio.id.clone(),
                positions: portfolio.positions.clone(),
            },
            pin: pin.clone(),
            request_id: current_request_id(),
        };
        if self.challengers.queue.try_send(job).is_err() {
            challenger.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("riskhost_challenger_dropped_total", "model" => challenger.model.clone())
                .increment(1);
        }
    }

    /// Starts the challenger worker; it ends when the service is dropped.
    /// A second call does nothing.
    pub fn start_challengers(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let mut receiver = self
            .challengers
            .receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        let service: Weak<ScoringService> = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut written = Vec::new();
            let mut last_write = tokio::time::Instant::now();
            loop {
                let first =
                    tokio::time::timeout(std::time::Duration::from_secs(1), receiver.recv()).await;
                let Some(service) = service.upgrade() else {
                    break;
                };
                match first {
                    Ok(Some(first)) => {
                        // Whatever queued meanwhile is scored with it.
                        let mut round = vec![first];
                        while round.len() < ROUND {
                            match receiver.try_recv() {
                                Ok(job) => round.push(job),
                                Err(_) => break,
                            }
                        }
                        written.extend(service.compare_round(round).await);
                    }
                    Ok(None) => break,
                    Err(_) => {}
                }
                if !written.is_empty()
                    && (written.len() >= 256 || last_write.elapsed().as_secs() >= 1)
                {
                    service
                        .events
                        .record_comparisons(std::mem::take(&mut written))
                        .await;
                    last_write = tokio::time::Instant::now();
                }
            }
        }))
    }

    /// Scores a round of sampled cells with their challengers and records
    /// the comparisons. Cells of one challenger, snapshot, as-of date and
    /// parameter vector go through the batch engine together, on the
    /// background lane: one call for many cells, as the dynamic batcher
    /// does for live ones, and never ahead of a live call.
    async fn compare_round(&self, round: Vec<ShadowJob>) -> Vec<Comparison> {
        let mut groups: Vec<Vec<ShadowJob>> = Vec::new();
        for job in round {
            // Stopped or replaced since the cell was sampled.
            let current = self.challengers.get(&job.challenger.model);
            if !current.is_some_and(|c| Arc::ptr_eq(&c, &job.challenger)) {
                continue;
            }
            let together = |other: &ShadowJob| {
                Arc::ptr_eq(&other.challenger, &job.challenger)
                    && other.pin == job.pin
                    && other.params.len() == job.params.len()
                    && other
                        .params
                        .iter()
                        .zip(&job.params)
                        .all(|(a, b)| a.to_bits() == b.to_bits())
            };
            match groups.iter_mut().find(|group| together(&group[0])) {
                Some(group) => group.push(job),
                None => groups.push(vec![job]),
            }
        }
        let mut comparisons = Vec::new();
        for group in groups {
            let outcomes = self.score_for_challenger(&group).await;
            for (job, outcome) in group.into_iter().zip(outcomes) {
                comparisons.extend(self.record(job, outcome));
            }
        }
        comparisons
    }

    /// The challenger's outcome for each cell of `group` (one challenger,
    /// pin and parameter vector); `None` for a cell it could not be asked
    /// about (the data moved since, or live calls had the machine).
    async fn score_for_challenger(&self, group: &[ShadowJob]) -> Vec<Option<ChallengerOutcome>> {
        let first = &group[0];
        let challenger = &first.challenger;
        let entry = match self
            .registry
            .resolve(&format!("{}@{}", challenger.model, challenger.digest))
            .await
        {
            Ok(entry) => entry,
            Err(error) => {
                let code = ScoreError::from(error).code();
                return vec![Some(Err(code)); group.len()];
            }
        };
        let lookback = entry.model.description.lookback_for(&first.params);
        let models = [(entry, first.params.clone(), lookback)];
        let portfolios: Vec<(Option<String>, Result<PreparedPortfolio, ScoreError>)> = group
            .iter()
            .map(|job| {
                let portfolio = PreparedPortfolio {
                    id: job.portfolio.id.clone(),
                    positions: job.portfolio.positions.clone(),
                };
                (job.portfolio.id.clone(), Ok(portfolio))
            })
            .collect();
        let Some(cells) = self
            .score_cells(
                &models,
                &portfolios,
                &first.pin,
                None,
                Lane::Background,
                false,
            )
            .await
        else {
            return vec![None; group.len()];
        };
        cells
            .into_iter()
            .map(|cell| match cell {
                Some(CellOutcome::Score(score)) => Some(Ok(score.value)),
                Some(CellOutcome::Error { error })
                    if error.code == "starved" || error.code == "overloaded" =>
                {
                    None
                }
                Some(CellOutcome::Error { error }) => Some(Err(error.code)),
                None => Some(Err("internal_error")),
            })
            .collect()
    }

    /// Compares one cell's champion and challenger outcomes into the
    /// challenger's evidence and metrics; `None` (and counted as dropped)
    /// when the challenger could not be asked.
    fn record(&self, job: ShadowJob, outcome: Option<ChallengerOutcome>) -> Option<Comparison> {
        let challenger = &job.challenger;
        let model = challenger.model.clone();
        let Some(outcome) = outcome else {
            challenger.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("riskhost_challenger_dropped_total", "model" => model).increment(1);
            return None;
        };
        let mut comparison = Comparison {
            ts_us: riskhost_events::now_us(),
            request_id: job.request_id.clone(),
            model: model.clone(),
            champion_digest: job.champion_digest.clone(),
            challenger_digest: challenger.digest.clone(),
            portfolio_id: job.portfolio.id.clone().unwrap_or_default(),
            as_of: job.pin.as_of,
            params: job.params.clone(),
            champion: job.champion.ok(),
            challenger: outcome.ok(),
            champion_error: job.champion.err().unwrap_or_default().to_owned(),
            challenger_error: outcome.err().unwrap_or_default().to_owned(),
            abs_diff: None,
            rel_diff: None,
            diverged: false,
        };
        let mut evidence = challenger
            .evidence
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match (job.champion, outcome) {
            (Ok(champion), Ok(value)) => {
                let abs = (value - champion).abs();
                let rel = abs / champion.abs().max(f64::MIN_POSITIVE);
                let diverged =
                    abs > challenger.tolerance.abs + challenger.tolerance.rel * champion.abs();
                evidence.compared += 1;
                evidence.sum_abs += abs;
                evidence.sum_rel += rel;
                evidence.max_abs = evidence.max_abs.max(abs);
                evidence.max_rel = evidence.max_rel.max(rel);
                metrics::counter!("riskhost_challenger_compared_total", "model" => model.clone())
                    .increment(1);
                metrics::histogram!("riskhost_challenger_relative_difference", "model" => model.clone())
                    .record(rel);
                if diverged {
                    evidence.diverged += 1;
                    metrics::counter!("riskhost_challenger_diverged_total", "model" => model.clone())
                        .increment(1);
                }
                let cell = WorstCell {
                    request_id: job.request_id,
                    portfolio_id: job.portfolio.id,
                    as_of: job.pin.as_of,
                    champion_digest: job.champion_digest,
                    champion,
                    challenger: value,
                    abs_diff: abs,
                    rel_diff: rel,
                };
                keep_worst(&mut evidence.worst, cell);
                (
                    comparison.abs_diff,
                    comparison.rel_diff,
                    comparison.diverged,
                ) = (Some(abs), Some(rel), diverged);
            }
            (Ok(_), Err(code)) => {
                *evidence
                    .errors
                    .challenger_only
                    .entry(code.to_owned())
                    .or_default() += 1;
                metrics::counter!("riskhost_challenger_errors_total", "model" => model.clone(), "side" => "challenger_only", "code" => code)
                    .increment(1);
            }
            (Err(code), Ok(_)) => {
                *evidence
                    .errors
                    .champion_only
                    .entry(code.to_owned())
                    .or_default() += 1;
                metrics::counter!("riskhost_challenger_errors_total", "model" => model.clone(), "side" => "champion_only", "code" => code)
                    .increment(1);
            }
            (Err(_), Err(_)) => evidence.errors.both += 1,
        }
        drop(evidence);
        Some(comparison)
    }
}

/// Keeps the [`WORST`] cells of largest relative difference, largest first.
fn keep_worst(worst: &mut Vec<WorstCell>, cell: WorstCell) {
    if worst.len() == WORST && worst.last().is_some_and(|w| w.rel_diff >= cell.rel_diff) {
        return;
    }
    let at = worst.partition_point(|w| w.rel_diff >= cell.rel_diff);
    worst.insert(at, cell);
    worst.truncate(WORST);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenger(sample: f64) -> Challenger {
        Challenger {
            model: "m".into(),
            version: "2".into(),
            digest: "sha256:x".into(),
            sample,
            tolerance: Tolerance::default(),
            since: Utc::now(),
            seen: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            evidence: Mutex::new(Evidence::default()),
        }
    }

    #[test]
    fn sampling_takes_exactly_the_fraction_asked() {
        for (sample, expected) in [(1.0, 1000), (0.1, 100), (0.25, 250), (0.001, 1)] {
            let c = challenger(sample);
            let taken = (0..1000).filter(|_| c.sampled()).count();
            assert_eq!(taken, expected, "sample {sample}");
        }
    }

    #[test]
    fn the_worst_cells_are_the_largest_relative_differences_in_order() {
        let mut worst = Vec::new();
        for i in 0..50u32 {
            let rel = f64::from((i * 37) % 50);
            keep_worst(
                &mut worst,
                WorstCell {
                    request_id: i.to_string(),
                    portfolio_id: None,
                    as_of: NaiveDate::default(),
                    champion_digest: String::new(),
                    champion: 1.0,
                    challenger: 1.0 + rel,
                    abs_diff: rel,
                    rel_diff: rel,
                },
            );
        }
        let rels: Vec<f64> = worst.iter().map(|w| w.rel_diff).collect();
        let expected: Vec<f64> = (30..50).rev().map(f64::from).collect();
        assert_eq!(rels, expected);
    }
}

//! Jobs ready to run, and how a set of them becomes sandboxed calls.
//!
//! Every scoring path (single request, dynamic batch, batch API, offline
//! file) ends here: the union of the jobs' instruments is fetched once as a
//! price window, each call gets the series its jobs hold, and a call that
//! fails as a whole is re-run job by job, so one bad job fails alone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use super::ScoreError;
use chrono::NaiveDate;
use riskhost_cache::{CanonicalPosition, ScoreKey, days_since_epoch};
use riskhost_engine::bindings::{
    self, Job, MarketData, ModelError, Portfolio, Position, PriceSeries,
};
use riskhost_engine::{CallError, Determinism, ModelEngine};

use crate::background::BackgroundLane;
use riskhost_market::{DataError, MarketDataSource, PriceWindow, SnapshotId, WindowSeries};
use riskhost_models::ModelEntry;
use tracing::Instrument as _;

/// The largest gross exposure (Σ |quantity × close|) a job may hold. Far
/// beyond any real book, and below √f64::MAX (≈ 1.3e154), so that a model
/// can square valuations (variances, covariances) without overflowing to a
/// non-finite score.
pub(crate) const MAX_GROSS_EXPOSURE: f64 = 1e150;

/// The data a request is scored on: its valuation date and the market-data
/// snapshot its memo keys name. Windows are fetched at the pin only, so a
/// score is always computed on the data its key says (a source that moved
/// on answers [`DataError::SnapshotMoved`], and the request pins again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPin {
    pub as_of: NaiveDate,
    pub snapshot: SnapshotId,
}

/// How often a request re-pins when its snapshot moves while it is scored:
/// only a source updated faster than a window can be read exhausts it.
pub(crate) const SNAPSHOT_ATTEMPTS: usize = 3;

/// One (portfolio, model) computation with everything resolved.
#[derive(Debug, Clone)]
pub struct PreparedJob {
    pub key: ScoreKey,
    pub portfolio_id: Option<String>,
    /// Shared when one portfolio is scored by several models.
    pub positions: Arc<Vec<CanonicalPosition>>,
    pub params: Vec<f64>,
    /// Daily returns the job needs (from the model's data needs).
    pub lookback: usize,
}

/// Runs prepared jobs: owns the engine, the data source and the lane for
/// calls nobody waits on.
pub struct Executor {
    pub engine: Arc<ModelEngine>,
    pub market: Arc<dyn MarketDataSource>,
    background: BackgroundLane,
}

/// Whom a call serves, and so which threads it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// A request, a batch or a run is waiting: tokio's blocking pool.
    Live,
    /// Nobody waits (challenger cells): one thread at the lowest priority.
    Background,
}

/// A price window with its instruments indexed.
pub struct IndexedWindow {
    window: PriceWindow,
    by_instrument: HashMap<String, usize>,
}

impl IndexedWindow {
    fn new(window: PriceWindow) -> Self {
        let by_instrument = window
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| (s.instrument.clone(), i))
            .collect();
        IndexedWindow {
            window,
            by_instrument,
        }
    }

    pub fn as_of(&self) -> NaiveDate {
        self.window.as_of
    }

    pub(crate) fn dates(&self) -> &[NaiveDate] {
        &self.window.dates
    }

    /// The closes of `instrument` over [`Self::dates`].
    pub(crate) fn closes(&self, instrument: &str) -> Option<&[f64]> {
        let series = self.by_instrument.get(instrument)?;
        Some(&self.window.series[*series].closes)
    }

    /// The window a request valued at `dates()[end]` needing `lookback`
    /// returns fetches itself: the same dates and closes (a window's fill
    /// carries closes in from before its first date, so a cut equals a
    /// fetch), cut from this longer one.
    pub(crate) fn cut(&self, end: usize, lookback: usize) -> IndexedWindow {
        let start = end.saturating_sub(lookback);
        IndexedWindow::new(PriceWindow {
            as_of: self.window.dates[end],
            dates: self.window.dates[start..=end].to_vec(),
            series: self
                .window
                .series
                .iter()
                .map(|s| WindowSeries {
                    instrument: s.instrument.clone(),
                    closes: s.closes[start..=end].to_vec(),
                })
                .collect(),
        })
    }

    /// The largest |close| of each series over its last `lookback + 1`
    /// closes, in series order.
    fn largest_closes(&self, lookback: usize) -> Vec<f64> {
        self.window
            .series
            .iter()
            .map(|s| {
                // NaN (before an instrument's first close) is ignored by max.
                s.closes[s.closes.len().saturating_sub(lookback + 1)..]
                    .iter()
                    .fold(0.0_f64, |max, c| max.max(c.abs()))
            })
            .collect()
    }

    /// Refuses a job whose gross exposure, Σ |quantity| × the largest close
    /// over the job's own lookback, exceeds [`MAX_GROSS_EXPOSURE`]: no model
    /// could value it (the request's fault, 422), so it never runs.
    /// `largest` is [`Self::largest_closes`] of the job's lookback: the
    /// jobs of a batch share a few lookbacks, and scanning the window per
    /// position was a sixth of a 30,000-job batch's CPU.
    fn check_exposure(&self, job: &PreparedJob, largest: &[f64]) -> Result<(), ScoreError> {
        let mut gross = 0.0_f64;
        // The position that contributes most, to name it.
        let mut largest_position: Option<(&CanonicalPosition, f64, f64)> = None;
        for p in job.positions.iter() {
            let Some(&series) = self.by_instrument.get(&p.instrument) else {
                continue;
            };
            let close = largest[series];
            let exposure = p.quantity.abs() * close;
            gross += exposure;
            if largest_position.is_none_or(|(_, _, e)| exposure > e) {
                largest_position = Some((p, close, exposure));
            }
        }
        match largest_position {
            Some((p, close, _)) if gross > MAX_GROSS_EXPOSURE => {
                Err(ScoreError::Portfolio(format!(
                    "the gross exposure Σ|quantity × close| over the window is {gross:e}, more than the {MAX_GROSS_EXPOSURE:e} a model can value; most of it is the position in {} (quantity {:e}, closes up to {close})",
                    p.instrument, p.quantity
                )))
            }
            _ => Ok(()),
        }
    }

    /// The contract's market data and jobs for one call: the union of the
    /// jobs' instruments, in first-seen order, over the whole window.
    pub fn call_inputs(&self, jobs: &[&PreparedJob]) -> Result<(MarketData, Vec<Job>), ScoreError> {
        let mut series_of_call: HashMap<&str, u32> = HashMap::new();
        let mut series = Vec::new();
        let mut call_jobs = Vec::with_capacity(jobs.len());
        for job in jobs {
            let mut positions = Vec::with_capacity(job.positions.len());
            for p in job.positions.iter() {
                let index = match series_of_call.get(p.instrument.as_str()) {
                    Some(i) => *i,
                    None => {
                        let source = self.by_instrument.get(&p.instrument).ok_or_else(|| {
                            ScoreError::Internal(format!(
                                "{} is missing from the prefetched window",
                                p.instrument
                            ))
                        })?;
                        let s = &self.window.series[*source];
                        let i = u32::try_from(series.len())
                            .map_err(|_| ScoreError::Internal("too many series".into()))?;
                        series.push(PriceSeries {
                            instrument: s.instrument.clone(),
                            closes: s.closes.clone(),
                        });
                        series_of_call.insert(p.instrument.as_str(), i);
                        i
                    }
                };
                positions.push(Position {
                    series: index,
                    quantity: p.quantity,
                });
            }
            call_jobs.push(Job {
                portfolio: Portfolio {
                    id: job.portfolio_id.clone().unwrap_or_default(),
                    positions,
                },
                params: job.params.clone(),
                seed: job.key.seed(),
            });
        }
        let market = MarketData {
            as_of: self.window.as_of.format("%Y-%m-%d").to_string(),
            dates: self
                .window
                .dates
                .iter()
                .map(|d| days_since_epoch(*d))
                .collect(),
            series,
        };
        Ok((market, call_jobs))
    }
}

/// What the model answered for one job: a score or its own error. Both are
/// deterministic in the job, so the memo may keep either (per policy).
pub(crate) type ModelOutcome = Result<bindings::Score, ModelError>;

/// The outcome of one job: the model's answer, or why there is none (the
/// call failed, the data was unavailable, …), which is never memoized. The
/// model's error stays a `ModelError` until a response is written, so it is
/// converted once, there.
pub(crate) type JobResult = Result<ModelOutcome, ScoreError>;

impl Executor {
    pub fn new(engine: Arc<ModelEngine>, market: Arc<dyn MarketDataSource>) -> Self {
        Executor {
            engine,
            market,
            background: BackgroundLane::default(),
        }
    }

    /// Fetches one window for all `jobs` (union of instruments, longest
    /// lookback). Jobs holding unknown instruments get their own error and the
    /// rest proceed; any other data error fails every job.
    pub async fn prefetch(
        &self,
        pin: &DataPin,
        jobs: &[&PreparedJob],
    ) -> (Option<Arc<IndexedWindow>>, Vec<Option<ScoreError>>) {
        let mut errors: Vec<Option<ScoreError>> = vec![None; jobs.len()];
        for _attempt in 0..2 {
            // Deduplicated before sorting: a batch names the same few
            // instruments hundreds of thousands of times, and sorting them
            // all took 7 % of its serial CPU.
            let mut instruments: Vec<&str> = jobs
                .iter()
                .zip(&errors)
                .filter(|(_, e)| e.is_none())
                .flat_map(|(j, _)| j.positions.iter().map(|p| p.instrument.as_str()))
                .collect::<HashSet<&str>>()
                .into_iter()
                .collect();
            if instruments.is_empty() {
                return (None, errors);
            }
            instruments.sort_unstable();
            let lookback = jobs.iter().map(|j| j.lookback).max().unwrap_or(0);
            let started = Instant::now();
            let span = tracing::info_span!(
                "market_fetch",
                source = %self.market.snapshot().source,
                instruments = instruments.len(),
                lookback,
                as_of = %pin.as_of,
            );
            let fetched = self
                .market
                .price_window(&instruments, pin.as_of, lookback, &pin.snapshot)
                .instrument(span.clone())
                .await;
            span.in_scope(|| tracing::debug!(ok = fetched.is_ok(), "market data fetched"));
            metrics::histogram!("riskhost_data_fetch_duration_seconds", "what" => "price_window")
                .record(started.elapsed().as_secs_f64());
            match fetched {
                Ok(window) => {
                    let window = IndexedWindow::new(window);
                    let mut largest_by_lookback: HashMap<usize, Vec<f64>> = HashMap::new();
                    for (job, error) in jobs.iter().zip(errors.iter_mut()) {
                        if error.is_none() {
                            let largest = largest_by_lookback
                                .entry(job.lookback)
                                .or_insert_with(|| window.largest_closes(job.lookback));
                            *error = window.check_exposure(job, largest).err();
                        }
                    }
                    return (Some(Arc::new(window)), errors);
                }
                Err(DataError::UnknownInstruments(unknown)) => {
                    for (job, error) in jobs.iter().zip(errors.iter_mut()) {
                        let held: Vec<String> = job
                            .positions
                            .iter()
                            .filter(|p| unknown.contains(&p.instrument))
                            .map(|p| p.instrument.clone())
                            .collect();
                        if error.is_none() && !held.is_empty() {
                            *error = Some(DataError::UnknownInstruments(held).into());
                        }
                    }
                }
                Err(other) => {
                    let shared: ScoreError = other.into();
                    return (
                        None,
                        errors
                            .into_iter()
                            .map(|e| Some(e.unwrap_or_else(|| shared.clone())))
                            .collect(),
                    );
                }
            }
        }
        let unexpected = ScoreError::Internal("the data source kept rejecting instruments".into());
        (
            None,
            errors
                .into_iter()
                .map(|e| Some(e.unwrap_or_else(|| unexpected.clone())))
                .collect(),
        )
    }

    /// Runs `jobs` of one model version in one call on `lane`, holding
    /// `slot` (a place in the model's bulkhead) until done. When the call
    /// fails as a whole and holds several jobs, each job is re-run alone.
    pub async fn run<Slot: Send + 'static>(
        &self,
        entry: Arc<ModelEntry>,
        window: Arc<IndexedWindow>,
        jobs: Vec<PreparedJob>,
        slot: Slot,
        lane: Lane,
    ) -> Vec<JobResult> {
        let engine = self.engine.clone();
        let count = jobs.len();
        let model = entry.model.name().to_owned();
        // The call's thread does not inherit the caller's span: carry it.
        let span = tracing::Span::current();
        let call = move || {
            let _span = span.entered();
            let _slot = slot;
            let refs: Vec<&PreparedJob> = jobs.iter().collect();
            match call_once(&engine, &entry, &window, &refs) {
                Err(ScoreError::Call { error, model }) if refs.len() > 1 => {
                    tracing::info!(%model, %error, jobs = refs.len(), "batch call failed; re-running each job alone");
                    refs.iter()
                        .map(|job| {
                            call_once(&engine, &entry, &window, std::slice::from_ref(job))
                                .and_then(single)
                        })
                        .collect()
                }
                Err(error) => vec![Err(error); refs.len()],
                Ok(results) => results,
            }
        };
        let panicked = || vec![Err(ScoreError::Internal("a model call panicked".into())); count];
        match lane {
            Lane::Live => tokio::task::spawn_blocking(call)
                .await
                .unwrap_or_else(|_| panicked()),
            Lane::Background => match self.background.run(call).await {
                Some((results, times)) if times.starved() => results
                    .into_iter()
                    .map(|result| match result {
                        // The deadline is wall time: a call that spent it
                        // waiting for a core says nothing about the model.
                        Err(ScoreError::Call {
                            error: CallError::Timeout(_),
                            ..
                        }) => Err(ScoreError::Starved {
                            model: model.clone(),
                        }),
                        other => other,
                    })
                    .collect(),
                Some((results, _)) => results,
                None => panicked(),
            },
        }
    }
}

fn single(mut results: Vec<JobResult>) -> JobResult {
    results
        .pop()
        .unwrap_or_else(|| Err(ScoreError::Internal("the model returned no result".into())))
}

/// One sandboxed call; records its metrics.
fn call_once(
    engine: &ModelEngine,
    entry: &ModelEntry,
    window: &IndexedWindow,
    jobs: &[&PreparedJob],
) -> Result<Vec<JobResult>, ScoreError> {
    let name = entry.model.name();
    let _span = tracing::info_span!(
        "model_call",
        model = name,
        version = entry.model.version(),
        digest = %entry.model.digest,
        jobs = jobs.len(),
    )
    .entered();
    let (market, call_jobs) = window.call_inputs(jobs)?;
    let determinism = call_determinism(jobs, window.as_of());
    let labels = [
        ("model", name.to_owned()),
        ("version", entry.model.version().to_owned()),
    ];
    let started = Instant::now();
    let outcome = engine.call(&entry.model, &market, &call_jobs, determinism);
    let elapsed = started.elapsed();
    tracing::debug!(
        elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        ok = outcome.is_ok(),
        "model call finished"
    );
    metrics::histogram!("riskhost_model_call_duration_seconds", &labels)
        .record(elapsed.as_secs_f64());
    metrics::histogram!("riskhost_model_batch_size", &labels).record(jobs.len() as f64);
    match outcome {
        Ok(outcome) => Ok(outcome
            .results
            .into_iter()
            .map(|result| {
                let outcome = job_outcome(&result);
                metrics::counter!("riskhost_model_jobs_total", "model" => name.to_owned(), "version" => entry.model.version().to_owned(), "outcome" => outcome).increment(1);
                Ok(result)
            })
            .collect()),
        Err(error) => {
            tracing::warn!(model = name, digest = %entry.model.digest, code = error.code(), %error, jobs = jobs.len(), "model call failed");
            metrics::counter!("riskhost_model_errors_total", "model" => name.to_owned(), "version" => entry.model.version().to_owned(), "kind" => error.code()).increment(1);
            Err(ScoreError::Call { model: name.to_owned(), error })
        }
    }
}

/// The `outcome` label of `riskhost_model_jobs_total`.
fn job_outcome(result: &ModelOutcome) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(ModelError::InvalidInput(_)) => "invalid_input",
        Err(ModelError::InsufficientData(_)) => "insufficient_data",
        Err(ModelError::Internal(_)) => "internal",
    }
}

/// Every value [`job_outcome`] answers.
const JOB_OUTCOMES: [&str; 4] = ["ok", "invalid_input", "insufficient_data", "internal"];

/// Creates a loaded version's per-model counters at 0, every label value
/// included (the registry calls this at each load, through
/// `ModelRegistry::on_load`): a series that first appears at 1 is no
/// increase to `rate()`, so an alert would miss the first error.
pub(crate) fn register_metrics(entry: &ModelEntry) {
    let (name, version) = (entry.model.name(), entry.model.version());
    for outcome in JOB_OUTCOMES {
        metrics::counter!("riskhost_model_jobs_total", "model" => name.to_owned(), "version" => version.to_owned(), "outcome" => outcome).increment(0);
    }
    for kind in riskhost_engine::CallError::CODES {
        metrics::counter!("riskhost_model_errors_total", "model" => name.to_owned(), "version" => version.to_owned(), "kind" => kind).increment(0);
    }
    metrics::counter!("riskhost_model_rejected_total", "model" => name.to_owned()).increment(0);
    metrics::counter!("riskhost_cache_coalesced_total", "model" => name.to_owned()).increment(0);
}

/// What a call of `jobs` valued at `as_of` may observe: the clock frozen at
/// `as_of` and WASI randomness seeded from the jobs. Models should use each
/// job's own seed, which does not depend on the batch (see docs).
pub fn call_determinism(jobs: &[&PreparedJob], as_of: NaiveDate) -> Determinism {
    let seed = jobs
        .iter()
        .fold(0u64, |acc, j| acc.rotate_left(5) ^ j.key.seed());
    Determinism {
        as_of_unix_seconds: i64::from(days_since_epoch(as_of)) * 86_400,
        seed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_outcome_is_listed() {
        let outcomes: [ModelOutcome; 4] = [
            Ok(bindings::Score {
                value: 0.0,
                unit: bindings::Unit::CurrencyAmount,
                breakdown: Vec::new(),
            }),
            Err(ModelError::InvalidInput(String::new())),
            Err(ModelError::InsufficientData(String::new())),
            Err(ModelError::Internal(String::new())),
        ];
        let answered: Vec<_> = outcomes.iter().map(job_outcome).collect();
        assert_eq!(answered, JOB_OUTCOMES);
    }

    fn window() -> IndexedWindow {
        let start = NaiveDate::from_ymd_opt(2024, 1, 1).expect("date");
        let dates: Vec<NaiveDate> = (0..5).map(|d| start + chrono::Days::new(d)).collect();
        let series = |instrument: &str, closes: [f64; 5]| WindowSeries {
            instrument: instrument.to_owned(),
            closes: closes.to_vec(),
        };
        IndexedWindow::new(PriceWindow {
            as_of: dates[4],
            dates,
            series: vec![
                // The largest close is outside a lookback of 2 (3 closes).
                series("AAA", [90.0, 20.0, -30.0, 10.0, 5.0]),
                // Not quoted yet at the start: NaN is ignored.
                series("BBB", [f64::NAN, f64::NAN, 2.0, 3.0, 1e149]),
            ],
        })
    }

    fn job(lookback: usize, positions: &[(&str, f64)]) -> PreparedJob {
        PreparedJob {
            key: ScoreKey([0; 32]),
            portfolio_id: None,
            positions: Arc::new(
                positions
                    .iter()
                    .map(|(instrument, quantity)| CanonicalPosition {
                        instrument: (*instrument).to_owned(),
                        quantity: *quantity,
                    })
                    .collect(),
            ),
            params: Vec::new(),
            lookback,
        }
    }

    #[test]
    fn the_largest_closes_are_taken_over_each_lookback() {
        let window = window();
        assert_eq!(window.largest_closes(2), [30.0, 1e149]);
        assert_eq!(window.largest_closes(4), [90.0, 1e149]);
        // A lookback longer than the window takes all of it.
        assert_eq!(window.largest_closes(100), [90.0, 1e149]);
    }

    #[test]
    fn a_gross_exposure_past_the_bound_is_refused_naming_its_largest_position() {
        let window = window();
        let largest = window.largest_closes(2);
        let fine = job(2, &[("AAA", 1e6), ("BBB", 1.0)]);
        assert!(window.check_exposure(&fine, &largest).is_ok());
        // 20 × 1e149 = 2e150 > 1e150; AAA's part is negligible.
        let huge = job(2, &[("AAA", -3.0), ("BBB", -20.0)]);
        let error = window
            .check_exposure(&huge, &largest)
            .expect_err("over the bound");
        let message = error.to_string();
        assert!(message.contains("position in BBB"), "{message}");
        assert!(matches!(error, ScoreError::Portfolio(_)), "{error:?}");
    }
}

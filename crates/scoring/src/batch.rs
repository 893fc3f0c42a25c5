//! The batch API: many portfolios × many models in one request.
//!
//! One request resolves every model and parameter set once, canonicalises
//! every portfolio, looks every (portfolio, model) cell up in the memo in one
//! round trip, fetches the price window for all misses once (union of
//! instruments, longest lookback), runs each model version's misses in
//! chunks spread over its bulkhead's slots, and writes every new score back
//! in one round trip. A bad portfolio or a failing job fails its own cells
//! only; the answer has one entry per (portfolio, model), portfolio-major, in
//! request order.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::NaiveDate;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};

use super::jobs::{DataPin, IndexedWindow, JobResult, Lane, PreparedJob, SNAPSHOT_ATTEMPTS};
use super::request::BreakdownEntry;
use super::{
    PortfolioInput, PreparedPortfolio, ScoreError, ScoringService, StoredPortfolios, overloaded,
};
use riskhost_cache::{CacheTier, CachedScore, score_key};
use riskhost_engine::bindings::{self, ModelError};
use riskhost_engine::{ParamError, unit_name};
use riskhost_market::DataError;
use riskhost_models::ModelEntry;

/// Bounds on one batch request.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_portfolios: usize,
    pub max_models: usize,
    /// Jobs per model call.
    pub chunk_size: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_portfolios: 10_000,
            max_models: 16,
            chunk_size: 256,
        }
    }
}

/// `POST /v1/score/batch`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Model references (`name`, `name@1.2.0`, `name@sha256:…`), each at most once.
    pub models: Vec<String>,
    pub portfolios: Vec<PortfolioInput>,
    /// Parameters for every model; a model ignores parameters it does not
    /// declare, but each one must be declared by at least one model.
    #[serde(default)]
    pub params: BTreeMap<String, f64>,
    #[serde(default)]
    pub as_of: Option<NaiveDate>,
    /// `false` answers every cell with an empty `breakdown`: for a big
    /// batch most of the answer's bytes are breakdowns.
    #[serde(default = "crate::request::with_breakdown")]
    #[cfg_attr(feature = "schema", schema(default = true))]
    pub breakdown: bool,
}

/// The answer: one cell per (portfolio, model), portfolio-major.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct BatchResponse {
    pub as_of: NaiveDate,
    /// The market-data snapshot (`source@version`) every cell was scored
    /// on: one per batch.
    pub snapshot: String,
    pub results: Vec<BatchCell>,
}

/// One (portfolio, model) cell: a score, or its own error.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct BatchCell {
    /// Position of the portfolio in the request.
    pub portfolio_index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub portfolio_id: Option<String>,
    /// The model's name.
    pub model: String,
    #[serde(flatten)]
    pub outcome: CellOutcome,
}

/// A cell's score, or why there is none.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum CellOutcome {
    Score(CellScore),
    Error { error: CellError },
}

/// A cell's score.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct CellScore {
    pub version: String,
    pub digest: String,
    pub value: f64,
    #[cfg_attr(feature = "schema", schema(value_type = String, example = "currency_amount"))]
    pub unit: &'static str,
    pub breakdown: Vec<BreakdownEntry>,
    pub cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_tier: Option<CacheTier>,
}

/// Why a cell has no score (the same codes as the single route's errors).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct CellError {
    #[cfg_attr(feature = "schema", schema(value_type = String))]
    pub code: &'static str,
    pub message: String,
}

impl CellOutcome {
    pub(crate) fn failed(error: &ScoreError) -> Self {
        CellOutcome::Error {
            error: CellError {
                code: error.code(),
                message: error.to_string(),
            },
        }
    }

    /// A memoized or fresh outcome: the score, or the model's own error.
    fn memoized(
        entry: &ModelEntry,
        outcome: &Result<bindings::Score, ModelError>,
        tier: Option<CacheTier>,
        breakdown: bool,
    ) -> Self {
        match outcome {
            Ok(score) => Self::scored(entry, score, tier, breakdown),
            Err(error) => Self::failed(&ScoreError::from_model_error(
                entry.model.name(),
                error.clone(),
            )),
        }
    }

    fn scored(
        entry: &ModelEntry,
        score: &bindings::Score,
        tier: Option<CacheTier>,
        breakdown: bool,
    ) -> Self {
        CellOutcome::Score(CellScore {
            version: entry.model.version().to_owned(),
            digest: entry.model.digest.clone(),
            value: score.value,
            unit: unit_name(score.unit),
            breakdown: if breakdown {
                breakdown_entries(score)
            } else {
                Vec::new()
            },
            cached: tier.is_some(),
            cache_tier: tier,
        })
    }
}

/// A score's breakdown as the API answers it.
pub(crate) fn breakdown_entries(score: &bindings::Score) -> Vec<BreakdownEntry> {
    score
        .breakdown
        .iter()
        .map(|c| BreakdownEntry {
            name: c.name.clone(),
            value: c.value,
        })
        .collect()
}

/// Why a whole batch request is refused (as opposed to one of its cells).
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    #[error("the batch has {got} {what}; the limit is {limit}")]
    TooLarge {
        what: &'static str,
        got: usize,
        limit: usize,
    },
    #[error("the batch needs at least one {0}")]
    Empty(&'static str),
    #[error("model `{0}` is listed twice")]
    DuplicateModel(String),
    #[error("parameter `{0}` is not accepted by any model of the batch")]
    UnusedParam(String),
    #[error("{model}: {error}")]
    Params { model: String, error: ParamError },
    #[error(transparent)]
    Score(#[from] ScoreError),
}

impl ScoringService {
    /// Scores every portfolio of the request with every model.
    pub async fn score_batch(&self, request: BatchRequest) -> Result<BatchResponse, BatchError> {
        self.score_batch_as(request, "batch").await
    }

    /// Scores a chunk of the risk run `run`: a batch whose score events say
    /// `run` and carry the run's id as their request id, so that
    /// `POST /v1/replay` with the run's id replays them.
    pub async fn score_run_chunk(
        &self,
        run: &str,
        request: BatchRequest,
    ) -> Result<BatchResponse, BatchError> {
        riskhost_events::with_request(Arc::from(run), self.score_batch_as(request, "run")).await
    }

    async fn score_batch_as(
        &self,
        request: BatchRequest,
        path: &'static str,
    ) -> Result<BatchResponse, BatchError> {
        let started = std::time::Instant::now();
        let limits = self.settings.batch;
        let breakdown = request.breakdown;
        if request.models.is_empty() {
            return Err(BatchError::Empty("model"));
        }
        if request.portfolios.is_empty() {
            return Err(BatchError::Empty("portfolio"));
        }
        if request.models.len() > limits.max_models {
            return Err(BatchError::TooLarge {
                what: "models",
                got: request.models.len(),
                limit: limits.max_models,
            });
        }
        if request.portfolios.len() > limits.max_portfolios {
            return Err(BatchError::TooLarge {
                what: "portfolios",
                got: request.portfolios.len(),
                limit: limits.max_portfolios,
            });
        }

        // Models and their parameters: request-level errors.
        let mut models: Vec<(Arc<ModelEntry>, Vec<f64>, usize)> =
            Vec::with_capacity(request.models.len());
        for reference in &request.models {
            let entry = self
                .registry
                .resolve(reference)
                .await
                .map_err(ScoreError::from)?;
            if models
                .iter()
                .any(|(m, _, _)| m.model.digest == entry.model.digest)
            {
                return Err(BatchError::DuplicateModel(reference.clone()));
            }
            let description = &entry.model.description;
            let own: BTreeMap<String, f64> = request
                .params
                .iter()
                .filter(|(name, _)| description.params.iter().any(|p| &p.name == *name))
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            let params = description
                .resolve_params(&own)
                .map_err(|error| BatchError::Params {
                    model: entry.model.name().to_owned(),
                    error,
                })?;
            let lookback = description.lookback_for(&params);
            models.push((entry, params, lookback));
        }
        if let Some(unused) = request.params.keys().find(|name| {
            !models
                .iter()
                .any(|(m, _, _)| m.model.description.params.iter().any(|p| &&p.name == name))
        }) {
            return Err(BatchError::UnusedParam(unused.clone()));
        }
        // Portfolios: errors are per portfolio, reported in each of its cells.
        // Stored ones (given by id alone) are fetched in one round trip.
        let stored = self.stored_portfolios(&request.portfolios).await;
        let mut portfolios = Vec::with_capacity(request.portfolios.len());
        for (index, input) in request.portfolios.into_iter().enumerate() {
            // Echoed in every cell of the portfolio and recorded once per
            // model: an id far over the limit (rejected below) is cut first.
            let id = input
                .id
                .as_deref()
                .map(|id| riskhost_events::bounded_field(id).into_owned());
            let prepared = self
                .prepare_portfolio(input, &stored)
                .await
                .map_err(|e| match e {
                    ScoreError::Portfolio(message) => {
                        ScoreError::Portfolio(format!("portfolio {index}: {message}"))
                    }
                    other => other,
                });
            portfolios.push((id, prepared));
        }

        // One snapshot for the whole batch, pinned again if the data moves
        // while its windows are read.
        let mut attempt = 0;
        let (pin, cells) = loop {
            attempt += 1;
            let as_of = self
                .market
                .resolve_as_of(request.as_of)
                .await
                .map_err(ScoreError::from)?;
            let pin = DataPin {
                as_of,
                snapshot: self.market.snapshot(),
            };
            match self
                .score_cells(&models, &portfolios, &pin, None, Lane::Live, breakdown)
                .await
            {
                Some(cells) => break (pin, cells),
                None if attempt < SNAPSHOT_ATTEMPTS => {
                    metrics::counter!("riskhost_snapshot_repins_total", "route" => "batch")
                        .increment(1);
                }
                None => {
                    let moved = ScoreError::from(DataError::Unavailable(format!(
                        "the market data changed {SNAPSHOT_ATTEMPTS} times while the batch was \
                         read; retry"
                    )));
                    let cells = (0..portfolios.len() * models.len())
                        .map(|_| Some(CellOutcome::failed(&moved)))
                        .collect();
                    break (pin, cells);
                }
            }
        };
        let per_portfolio = models.len();
        for (i, outcome) in cells.iter().enumerate() {
            let (portfolio, model) = (&portfolios[i / per_portfolio].1, &models[i % per_portfolio]);
            if let (Ok(portfolio), Some(outcome)) = (portfolio, outcome) {
                let champion = match outcome {
                    CellOutcome::Score(score) => Ok(score.value),
                    CellOutcome::Error { error } => Err(error.code),
                };
                self.offer_to_challenger(&model.0, &model.1, portfolio, &pin, champion);
            }
        }
        let (as_of, snapshot) = (pin.as_of, pin.snapshot);

        let results = cells
            .into_iter()
            .enumerate()
            .map(|(i, outcome)| {
                let (portfolio_index, model_index) = (i / per_portfolio, i % per_portfolio);
                BatchCell {
                    portfolio_index,
                    portfolio_id: portfolios[portfolio_index].0.clone(),
                    model: models[model_index].0.model.name().to_owned(),
                    outcome: outcome.unwrap_or_else(|| {
                        CellOutcome::failed(&ScoreError::Internal(
                            "the cell was never computed".into(),
                        ))
                    }),
                }
            })
            .collect::<Vec<_>>();
        if self.events.records() {
            let events = crate::events::batch(
                &results,
                &models,
                &portfolios,
                &DataPin {
                    as_of,
                    snapshot: snapshot.clone(),
                },
                started.elapsed(),
                path,
                self.events.keeps_replay_data(),
            );
            self.events.record(events).await;
        }
        Ok(BatchResponse {
            as_of,
            snapshot: snapshot.to_string(),
            results,
        })
    }

    /// Scores every cell of a batch on the data of `pin`: memo lookups, one
    /// window for the misses (`given`, or fetched), the calls. `None` when
    /// the data moved before the window was read (nothing was computed or
    /// stored). The calls run on `lane`; the cells carry breakdowns when
    /// `breakdown` is set.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn score_cells(
        &self,
        models: &[(Arc<ModelEntry>, Vec<f64>, usize)],
        portfolios: &[(Option<String>, Result<PreparedPortfolio, ScoreError>)],
        pin: &DataPin,
        given: Option<Arc<IndexedWindow>>,
        lane: Lane,
        breakdown: bool,
    ) -> Option<Vec<Option<CellOutcome>>> {
        let limits = self.settings.batch;
        // Every cell, its memo key, and one memo lookup for all of them.
        let mut cells: Vec<Option<CellOutcome>> =
            Vec::with_capacity(portfolios.len() * models.len());
        let mut jobs: Vec<Option<(usize, PreparedJob)>> = Vec::with_capacity(cells.capacity());
        for (id, prepared) in portfolios {
            for (model_index, (entry, params, lookback)) in models.iter().enumerate() {
                match prepared {
                    Err(error) => {
                        cells.push(Some(CellOutcome::failed(error)));
                        jobs.push(None);
                    }
                    Ok(portfolio) => {
                        let key = score_key(
                            &entry.model.digest,
                            params,
                            &portfolio.positions,
                            &pin.snapshot,
                            pin.as_of,
                        );
                        cells.push(None);
                        jobs.push(Some((
                            model_index,
                            PreparedJob {
                                key,
                                portfolio_id: id.clone(),
                                positions: portfolio.positions.clone(),
                                params: params.clone(),
                                lookback: *lookback,
                            },
                        )));
                    }
                }
            }
        }
        // One memo round trip per model for all of its cells.
        let mut misses: Vec<usize> = Vec::new();
        for (model_index, (entry, _, _)) in models.iter().enumerate() {
            let cells_of_model: Vec<usize> = (0..jobs.len())
                .filter(|c| jobs[*c].as_ref().is_some_and(|(m, _)| *m == model_index))
                .collect();
            if cells_of_model.is_empty() {
                continue;
            }
            let keys: Vec<_> = cells_of_model
                .iter()
                .filter_map(|c| jobs[*c].as_ref().map(|(_, j)| j.key))
                .collect();
            let hits = self.cache.get_many(entry.model.name(), &keys).await;
            for (cell, hit) in cells_of_model.into_iter().zip(hits) {
                match hit {
                    Some((memo, tier)) => {
                        cells[cell] = Some(CellOutcome::memoized(
                            entry,
                            &memo.outcome,
                            Some(tier),
                            breakdown,
                        ))
                    }
                    None => misses.push(cell),
                }
            }
        }
        misses.sort_unstable();

        // One price window for every miss of the batch.
        if !misses.is_empty() {
            let miss_jobs: Vec<&PreparedJob> = misses
                .iter()
                .filter_map(|c| jobs[*c].as_ref().map(|(_, j)| j))
                .collect();
            let (window, errors) = match given {
                Some(window) => (Some(window), vec![None; miss_jobs.len()]),
                None => self.executor.prefetch(pin, &miss_jobs).await,
            };
            if errors.iter().flatten().any(ScoreError::is_snapshot_moved) {
                return None;
            }
            let mut runnable: Vec<usize> = Vec::with_capacity(misses.len());
            for (cell, error) in misses.iter().zip(errors) {
                match error {
                    Some(e) => cells[*cell] = Some(CellOutcome::failed(&e)),
                    None => runnable.push(*cell),
                }
            }
            if let Some(window) = window {
                let mut calls = FuturesUnordered::new();
                for (model_index, (entry, _, _)) in models.iter().enumerate() {
                    let of_model: Vec<usize> = runnable
                        .iter()
                        .copied()
                        .filter(|c| jobs[*c].as_ref().is_some_and(|(m, _)| *m == model_index))
                        .collect();
                    for chunk in of_model.chunks(limits.chunk_size.max(1)) {
                        let chunk_jobs: Vec<PreparedJob> = chunk
                            .iter()
                            .filter_map(|c| jobs[*c].as_ref().map(|(_, j)| j.clone()))
                            .collect();
                        let (entry, window, executor) =
                            (entry.clone(), window.clone(), self.executor.clone());
                        let chunk = chunk.to_vec();
                        calls.push(async move {
                            let results: Vec<JobResult> = match entry.bulkhead.enter_owned().await {
                                Ok(slot) => {
                                    executor
                                        .run(entry.clone(), window, chunk_jobs, slot, lane)
                                        .await
                                }
                                Err(source) => vec![Err(overloaded(&entry, source)); chunk.len()],
                            };
                            (entry, chunk, results)
                        });
                    }
                }
                let mut fresh: BTreeMap<String, Vec<_>> = BTreeMap::new();
                while let Some((entry, chunk, results)) = calls.next().await {
                    let name = entry.model.name();
                    for (cell, result) in chunk.into_iter().zip(results) {
                        // Scores and the model's own (deterministic) errors are
                        // memoized as the policy allows; failed calls never.
                        let outcome = match result {
                            Ok(outcome) => outcome,
                            Err(failure) => {
                                cells[cell] = Some(CellOutcome::failed(&failure));
                                continue;
                            }
                        };
                        let memo = Arc::new(CachedScore { outcome });
                        cells[cell] = Some(CellOutcome::memoized(
                            &entry,
                            &memo.outcome,
                            None,
                            breakdown,
                        ));
                        if let (Some((_, job)), Some(ttl)) = (
                            &jobs[cell],
                            self.settings.cache.ttl_for(name, &memo.outcome),
                        ) {
                            fresh
                                .entry(name.to_owned())
                                .or_default()
                                .push((job.key, memo, ttl));
                        }
                    }
                }
                for (model, entries) in fresh {
                    self.cache.put_many(&model, entries).await;
                }
            }
        }
        Some(cells)
    }

    /// The stored portfolios named by id alone, in one data-source call;
    /// empty on any error (each portfolio then asks alone and reports its
    /// own error).
    pub(crate) async fn stored_portfolios(&self, inputs: &[PortfolioInput]) -> StoredPortfolios {
        let ids: Vec<&str> = inputs
            .iter()
            .filter_map(PortfolioInput::stored_id)
            .collect();
        if ids.len() < 2 {
            return StoredPortfolios::new();
        }
        self.market.portfolios(&ids).await.unwrap_or_default()
    }
}

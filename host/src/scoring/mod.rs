//! The scoring path: from a request to a served score.
//!
//! For every request the service resolves the model version, resolves the
//! parameters against the model's `info()`, canonicalises the portfolio,
//! resolves the as-of date, and derives the memo key. On a miss it fetches
//! the price window, calls the model in the sandbox behind the model's
//! bulkhead, and stores the result. All I/O happens here, never in a model.

pub mod request;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;

pub use request::{
    BreakdownEntry, PortfolioInput, PortfolioLimits, PositionInput, ScoreRequest, ScoreResponse,
};

use crate::cache::{
    CacheTier, CachedScore, CanonicalPosition, ScoreCache, key::days_since_epoch, score_key,
};
use crate::engine::bindings::{
    self, Job, MarketData, ModelError, Portfolio, Position, PriceSeries,
};
use crate::engine::{CallError, Determinism, ModelEngine, ParamError, unit_name};
use crate::market::{DataError, MarketDataSource, PriceWindow};
use crate::registry::{ModelEntry, ModelRegistry, Overloaded, ResolveError};

/// How an error should be answered; the HTTP layer maps it to a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request is malformed or does not fit the model or data (422).
    InvalidRequest,
    /// A named thing does not exist (404).
    NotFound,
    /// Try again shortly (503 with Retry-After).
    Overloaded,
    /// A dependency (data source) is down (503).
    Unavailable,
    /// The model ran out of time (504).
    Timeout,
    /// The model failed (500).
    ModelFailure,
    /// A bug in the host (500).
    Internal,
}

/// Why a score could not be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScoreError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Params(#[from] ParamError),
    #[error("invalid portfolio: {0}")]
    Portfolio(String),
    #[error("unknown portfolio `{0}`: give its positions, or store it in the data source")]
    UnknownPortfolio(String),
    #[error("{0}")]
    Data(Arc<DataError>),
    #[error("{model} rejected the input: {message}")]
    ModelInvalidInput { model: String, message: String },
    #[error("{model} has insufficient data: {message}")]
    InsufficientData { model: String, message: String },
    #[error("{model} failed internally: {message}")]
    ModelInternal { model: String, message: String },
    #[error("{model}: {error}")]
    Call { model: String, error: CallError },
    #[error("{model} is overloaded ({source}); retry shortly")]
    Overloaded {
        model: String,
        #[source]
        source: Overloaded,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<DataError> for ScoreError {
    fn from(e: DataError) -> Self {
        ScoreError::Data(Arc::new(e))
    }
}

impl ScoreError {
    pub fn code(&self) -> &'static str {
        match self {
            ScoreError::Resolve(ResolveError::UnknownModel { .. }) => "unknown_model",
            ScoreError::Resolve(ResolveError::UnknownVersion { .. }) => "unknown_model_version",
            ScoreError::Resolve(ResolveError::VersionUnavailable { .. }) => "model_unavailable",
            ScoreError::Params(_) => "invalid_params",
            ScoreError::Portfolio(_) => "invalid_portfolio",
            ScoreError::UnknownPortfolio(_) => "unknown_portfolio",
            ScoreError::Data(e) => match e.as_ref() {
                DataError::UnknownInstruments(_) => "unknown_instrument",
                DataError::AsOfOutOfRange { .. } => "as_of_out_of_range",
                DataError::Unavailable(_) => "data_unavailable",
                _ => "data_error",
            },
            ScoreError::ModelInvalidInput { .. } => "model_invalid_input",
            ScoreError::InsufficientData { .. } => "insufficient_data",
            ScoreError::ModelInternal { .. } => "model_internal_error",
            ScoreError::Call { error, .. } => error.code(),
            ScoreError::Overloaded { .. } => "overloaded",
            ScoreError::Internal(_) => "internal_error",
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            ScoreError::Resolve(ResolveError::VersionUnavailable { .. }) => ErrorClass::Unavailable,
            ScoreError::Resolve(_) | ScoreError::UnknownPortfolio(_) => ErrorClass::NotFound,
            ScoreError::Params(_)
            | ScoreError::Portfolio(_)
            | ScoreError::ModelInvalidInput { .. }
            | ScoreError::InsufficientData { .. } => ErrorClass::InvalidRequest,
            ScoreError::Data(e) if e.is_client_error() => ErrorClass::InvalidRequest,
            ScoreError::Data(_) => ErrorClass::Unavailable,
            ScoreError::ModelInternal { .. } => ErrorClass::ModelFailure,
            ScoreError::Call { error, .. } => match error {
                CallError::Timeout(_) => ErrorClass::Timeout,
                CallError::Instantiate(_) => ErrorClass::Overloaded,
                _ => ErrorClass::ModelFailure,
            },
            ScoreError::Overloaded { .. } => ErrorClass::Overloaded,
            ScoreError::Internal(_) => ErrorClass::Internal,
        }
    }

    fn from_model_error(model: &str, error: ModelError) -> Self {
        let model = model.to_owned();
        match error {
            ModelError::InvalidInput(message) => ScoreError::ModelInvalidInput { model, message },
            ModelError::InsufficientData(message) => {
                ScoreError::InsufficientData { model, message }
            }
            ModelError::Internal(message) => ScoreError::ModelInternal { model, message },
        }
    }
}

/// Settings of the scoring path.
#[derive(Debug, Clone)]
pub struct ScoringSettings {
    pub cache_ttl: Duration,
    pub portfolio_limits: PortfolioLimits,
}

impl Default for ScoringSettings {
    fn default() -> Self {
        ScoringSettings {
            cache_ttl: Duration::from_secs(3600),
            portfolio_limits: PortfolioLimits::default(),
        }
    }
}

/// Everything a request needs to be scored, shared by all handlers.
pub struct ScoringService {
    engine: Arc<ModelEngine>,
    registry: Arc<ModelRegistry>,
    market: Arc<dyn MarketDataSource>,
    cache: Arc<dyn ScoreCache>,
    settings: ScoringSettings,
}

/// A portfolio ready to score: canonical positions and the client's label.
struct PreparedPortfolio {
    id: Option<String>,
    positions: Vec<CanonicalPosition>,
}

impl ScoringService {
    pub fn new(
        engine: Arc<ModelEngine>,
        registry: Arc<ModelRegistry>,
        market: Arc<dyn MarketDataSource>,
        cache: Arc<dyn ScoreCache>,
        settings: ScoringSettings,
    ) -> Self {
        ScoringService {
            engine,
            registry,
            market,
            cache,
            settings,
        }
    }

    pub fn registry(&self) -> &Arc<ModelRegistry> {
        &self.registry
    }

    pub fn market(&self) -> &Arc<dyn MarketDataSource> {
        &self.market
    }

    /// Scores one portfolio with one model.
    pub async fn score(&self, request: ScoreRequest) -> Result<ScoreResponse, ScoreError> {
        let entry = self.registry.resolve(&request.model).await?;
        let description = &entry.model.description;
        let params = description.resolve_params(&request.params)?;
        let portfolio = self.prepare_portfolio(request.portfolio).await?;
        let as_of = self.market.resolve_as_of(request.as_of).await?;
        let snapshot = self.market.snapshot();
        let key = score_key(
            &entry.model.digest,
            &params,
            &portfolio.positions,
            &snapshot,
            as_of,
        );
        let named_params = description
            .params
            .iter()
            .zip(&params)
            .map(|(spec, value)| (spec.name.clone(), *value))
            .collect();
        let respond = |score: &bindings::Score, tier: Option<CacheTier>| ScoreResponse {
            model: entry.model.name().to_owned(),
            version: entry.model.version().to_owned(),
            digest: entry.model.digest.clone(),
            portfolio_id: portfolio.id.clone(),
            as_of,
            value: score.value,
            unit: unit_name(score.unit),
            breakdown: score
                .breakdown
                .iter()
                .map(|c| BreakdownEntry {
                    name: c.name.clone(),
                    value: c.value,
                })
                .collect(),
            params: BTreeMap::clone(&named_params),
            cached: tier.is_some(),
            cache_tier: tier,
        };

        if let Some(Some((hit, tier))) = self.cache.get_many(&[key]).await.pop() {
            record_cache(&entry, Some(tier));
            return Ok(respond(&hit.score, Some(tier)));
        }
        record_cache(&entry, None);

        let lookback = description.lookback_for(&params);
        let instruments: Vec<&str> = portfolio
            .positions
            .iter()
            .map(|p| p.instrument.as_str())
            .collect();
        let window = self
            .market
            .price_window(&instruments, as_of, lookback)
            .await?;
        let market = market_data(&window);
        let job = Job {
            portfolio: Portfolio {
                id: portfolio.id.clone().unwrap_or_default(),
                positions: (0u32..)
                    .zip(&portfolio.positions)
                    .map(|(series, p)| Position {
                        series,
                        quantity: p.quantity,
                    })
                    .collect(),
            },
            params,
            seed: key.seed(),
        };
        let determinism = Determinism {
            as_of_unix_seconds: i64::from(days_since_epoch(as_of)) * 86_400,
            seed: key.seed(),
        };
        let mut results = self
            .call_model(&entry, market, vec![job], determinism)
            .await?;
        let result = results
            .pop()
            .ok_or_else(|| ScoreError::Internal("the model returned no result".into()))?;
        let score = result.map_err(|e| ScoreError::from_model_error(entry.model.name(), e))?;
        let cached = Arc::new(CachedScore { score });
        self.cache
            .put_many(vec![(key, cached.clone(), self.settings.cache_ttl)])
            .await;
        Ok(respond(&cached.score, None))
    }

    async fn prepare_portfolio(
        &self,
        input: PortfolioInput,
    ) -> Result<PreparedPortfolio, ScoreError> {
        let limits = self.settings.portfolio_limits;
        if let Some(id) = &input.id
            && id.len() > limits.max_id_bytes
        {
            return Err(ScoreError::Portfolio(format!(
                "the portfolio id is {} bytes; the limit is {}",
                id.len(),
                limits.max_id_bytes
            )));
        }
        let positions = match (input.positions, &input.id) {
            (Some(positions), _) => positions,
            (None, Some(id)) => match self.market.portfolio(id).await? {
                Some(stored) => stored
                    .positions
                    .into_iter()
                    .map(|p| PositionInput {
                        instrument: p.instrument,
                        quantity: p.quantity,
                    })
                    .collect(),
                None => return Err(ScoreError::UnknownPortfolio(id.clone())),
            },
            (None, None) => {
                return Err(ScoreError::Portfolio(
                    "give `positions`, or the `id` of a stored portfolio".into(),
                ));
            }
        };
        let positions = request::canonicalize(&positions, limits).map_err(ScoreError::Portfolio)?;
        Ok(PreparedPortfolio {
            id: input.id,
            positions,
        })
    }

    /// Runs one batch call behind the model's bulkhead, off the async runtime.
    async fn call_model(
        &self,
        entry: &Arc<ModelEntry>,
        market: MarketData,
        jobs: Vec<Job>,
        determinism: Determinism,
    ) -> Result<Vec<Result<bindings::Score, ModelError>>, ScoreError> {
        let name = entry.model.name();
        let _slot = entry.bulkhead.enter().await.map_err(|source| {
            metrics::counter!("riskhost_model_rejected_total", "model" => name.to_owned())
                .increment(1);
            ScoreError::Overloaded {
                model: name.to_owned(),
                source,
            }
        })?;
        let engine = self.engine.clone();
        let call_entry = entry.clone();
        let jobs_len = jobs.len();
        let started = Instant::now();
        let outcome = tokio::task::spawn_blocking(move || {
            engine.call(&call_entry.model, &market, &jobs, determinism)
        })
        .await
        .map_err(|e| ScoreError::Internal(format!("the model call panicked: {e}")))?;
        let labels = [
            ("model", name.to_owned()),
            ("version", entry.model.version().to_owned()),
        ];
        metrics::histogram!("riskhost_model_call_duration_seconds", &labels)
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("riskhost_model_batch_size", &labels).record(jobs_len as f64);
        match outcome {
            Ok(outcome) => {
                for result in &outcome.results {
                    let outcome = match result {
                        Ok(_) => "ok",
                        Err(ModelError::InvalidInput(_)) => "invalid_input",
                        Err(ModelError::InsufficientData(_)) => "insufficient_data",
                        Err(ModelError::Internal(_)) => "internal",
                    };
                    metrics::counter!("riskhost_model_jobs_total", "model" => name.to_owned(), "version" => entry.model.version().to_owned(), "outcome" => outcome).increment(1);
                }
                Ok(outcome.results)
            }
            Err(error) => {
                tracing::warn!(model = name, digest = %entry.model.digest, code = error.code(), %error, "model call failed");
                metrics::counter!("riskhost_model_errors_total", "model" => name.to_owned(), "version" => entry.model.version().to_owned(), "kind" => error.code()).increment(1);
                Err(ScoreError::Call {
                    model: name.to_owned(),
                    error,
                })
            }
        }
    }
}

fn record_cache(entry: &ModelEntry, tier: Option<CacheTier>) {
    let (tier, result) = match tier {
        Some(t) => (t.as_str(), "hit"),
        None => ("all", "miss"),
    };
    metrics::counter!("riskhost_cache_lookups_total", "model" => entry.model.name().to_owned(), "tier" => tier, "result" => result).increment(1);
}

/// The contract's market data for a price window (series in window order).
fn market_data(window: &PriceWindow) -> MarketData {
    MarketData {
        as_of: window.as_of.format("%Y-%m-%d").to_string(),
        dates: window.dates.iter().map(|d| days_since_epoch(*d)).collect(),
        series: window
            .series
            .iter()
            .map(|s| PriceSeries {
                instrument: s.instrument.clone(),
                closes: s.closes.clone(),
            })
            .collect(),
    }
}

/// Parses an ISO date, for CLI flags.
pub fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|e| format!("`{s}` is not a YYYY-MM-DD date: {e}"))
}

//! The scoring path: from a request to a served score.
//!
//! For every request the service resolves the model version, resolves the
//! parameters against the model's `info()`, canonicalises the portfolio,
//! resolves the as-of date, and derives the memo key. Misses become
//! [`PreparedJob`]s (`jobs.rs`) that run in the sandbox behind the model's
//! bulkhead: a single request through the dynamic batcher (`batcher.rs`),
//! a batch request in chunks over one prefetched price window
//! ([`BatchRequest`], `batch.rs`), a backtest day by day over one window
//! cut per day ([`BacktestRequest`], `backtest.rs`). Concurrent identical misses share one
//! computation (`single_flight.rs`). A request's recorded scores are
//! computed again and compared bit for bit by [`ScoringService::replay`]
//! (`replay.rs`). All I/O happens here, never in a model.
//!
//! The crate's API is what this file defines and re-exports.

mod background;
mod backtest;
mod batch;
mod batcher;
mod challenger;
mod events;
mod jobs;
mod replay;
mod request;
mod single_flight;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::NaiveDate;

pub use self::backtest::{
    BacktestError, BacktestLimits, BacktestRequest, DAYS_IN_FLIGHT as BACKTEST_DAYS_IN_FLIGHT,
};
pub use self::batch::{
    BatchCell, BatchError, BatchLimits, BatchRequest, BatchResponse, CellError, CellOutcome,
    CellScore,
};
pub use self::batcher::DynamicBatching;
pub use self::challenger::{ChallengerError, ChallengerView, ErrorAsymmetry, Tolerance, WorstCell};
pub use self::jobs::{DataPin, Executor, IndexedWindow, Lane, PreparedJob, call_determinism};
pub use self::replay::{MAX_REPLAY_CELLS, ReplayCell, ReplayError, ReplayResponse};
pub use self::request::{
    BreakdownEntry, PortfolioInput, PortfolioLimits, PositionInput, ScoreRequest, ScoreResponse,
    canonicalize,
};

use batcher::Batchers;
use riskhost_cache::{
    CachePolicy, CacheTier, CachedScore, CanonicalPosition, ScoreCache, ScoreKey, score_key,
};
use riskhost_engine::bindings::{self, ModelError};
use riskhost_engine::{CallError, ModelEngine, ParamError, unit_name};
use riskhost_events::{EventSink, NoSink};
use riskhost_market::{DataError, MarketDataSource, SnapshotId, StoredPortfolio};
use riskhost_models::{ModelEntry, ModelRegistry, Overloaded, ResolveError};

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
    /// A background call ran out of its (wall-clock) deadline while live
    /// calls had the cores: nothing is known of the model.
    #[error("{model} was not scored in time at background priority: live calls had the machine")]
    Starved { model: String },
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
                DataError::Unavailable(_) | DataError::SnapshotMoved { .. } => "data_unavailable",
                _ => "data_error",
            },
            ScoreError::ModelInvalidInput { .. } => "model_invalid_input",
            ScoreError::InsufficientData { .. } => "insufficient_data",
            ScoreError::ModelInternal { .. } => "model_internal_error",
            ScoreError::Call { error, .. } => error.code(),
            ScoreError::Overloaded { .. } => "overloaded",
            ScoreError::Starved { .. } => "starved",
            ScoreError::Internal(_) => "internal_error",
        }
    }

    /// Whether the data moved under the request's pin: the request pins
    /// the new snapshot and runs again.
    pub(crate) fn is_snapshot_moved(&self) -> bool {
        matches!(self, ScoreError::Data(e) if matches!(e.as_ref(), DataError::SnapshotMoved { .. }))
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
            ScoreError::Overloaded { .. } | ScoreError::Starved { .. } => ErrorClass::Overloaded,
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
#[derive(Debug, Clone, Default)]
pub struct ScoringSettings {
    /// What is memoized and for how long.
    pub cache: CachePolicy,
    pub portfolio_limits: PortfolioLimits,
    pub batch: batch::BatchLimits,
    pub dynamic: batcher::DynamicBatching,
}

/// A miss's memo entry and, when it came from the in-process tier after
/// all, that tier.
type Computed = Result<(Arc<CachedScore>, Option<CacheTier>), ScoreError>;

/// Everything a request needs to be scored, shared by all handlers.
pub struct ScoringService {
    registry: Arc<ModelRegistry>,
    market: Arc<dyn MarketDataSource>,
    cache: Arc<dyn ScoreCache>,
    settings: ScoringSettings,
    executor: Arc<Executor>,
    batchers: Batchers,
    /// Concurrent identical misses run the model once (`single_flight.rs`).
    flights: single_flight::SingleFlight<ScoreKey, Computed>,
    /// Where a record of every score served goes (`riskhost_events`).
    events: Arc<dyn EventSink>,
    /// Models' challengers and the queue to their worker (`challenger.rs`).
    challengers: challenger::Challengers,
}

/// A portfolio ready to score: canonical positions and the client's label.
pub struct PreparedPortfolio {
    pub id: Option<String>,
    pub positions: Arc<Vec<CanonicalPosition>>,
}

impl ScoringService {
    pub fn new(
        engine: Arc<ModelEngine>,
        registry: Arc<ModelRegistry>,
        market: Arc<dyn MarketDataSource>,
        cache: Arc<dyn ScoreCache>,
        settings: ScoringSettings,
    ) -> Self {
        let executor = Arc::new(Executor::new(engine, market.clone()));
        let batchers = Batchers::new(settings.dynamic, executor.clone());
        // Each loaded version's counters exist at 0 from its load. Weak, so
        // the registry does not keep the cache (and its purge subscriber)
        // alive.
        let memo = Arc::downgrade(&cache);
        registry.on_load(Arc::new(move |entry: &ModelEntry| {
            jobs::register_metrics(entry);
            if let Some(memo) = memo.upgrade() {
                memo.register_model(entry.model.name());
            }
        }));
        ScoringService {
            registry,
            market,
            cache,
            settings,
            executor,
            batchers,
            flights: single_flight::SingleFlight::new(),
            events: Arc::new(NoSink),
            challengers: challenger::Challengers::new(),
        }
    }

    /// Records every score served into `sink`.
    pub fn with_events(mut self, sink: Arc<dyn EventSink>) -> Self {
        self.events = sink;
        self
    }

    pub fn events(&self) -> &Arc<dyn EventSink> {
        &self.events
    }

    /// The limits and policies this service scores under.
    pub fn settings(&self) -> &ScoringSettings {
        &self.settings
    }

    pub fn registry(&self) -> &Arc<ModelRegistry> {
        &self.registry
    }

    pub fn cache(&self) -> &Arc<dyn ScoreCache> {
        &self.cache
    }

    pub fn market(&self) -> &Arc<dyn MarketDataSource> {
        &self.market
    }

    /// Scores one portfolio with one model, and records the score event.
    pub async fn score(&self, request: ScoreRequest) -> Result<ScoreResponse, ScoreError> {
        if !self.events.records() {
            return self.score_unrecorded(request).await.0;
        }
        let started = std::time::Instant::now();
        let (model, id, params, as_of) = (
            request.model.clone(),
            request.portfolio.id.clone(),
            request.params.clone(),
            request.as_of,
        );
        let (result, snapshot, job) = self.score_unrecorded(request).await;
        let asked = events::Asked {
            model: &model,
            portfolio_id: id.as_deref(),
            params: &params,
            as_of,
        };
        // A request that failed before it pinned a snapshot is recorded
        // against the one the source serves now.
        let snapshot = snapshot.unwrap_or_else(|| self.market.snapshot());
        let replay = job
            .as_ref()
            .filter(|_| self.events.keeps_replay_data())
            .map(|(positions, key)| events::Replay {
                positions,
                seed: key.seed(),
            });
        let event = events::single(asked, &result, started.elapsed(), &snapshot, replay);
        self.events.record(vec![event]).await;
        result
    }

    /// Scores a request, pinning a snapshot again (up to
    /// [`jobs::SNAPSHOT_ATTEMPTS`] times) when the data moves under it.
    /// Also answers the snapshot the answer was computed on, once pinned,
    /// and the job's positions and memo key (what replay records).
    async fn score_unrecorded(
        &self,
        request: ScoreRequest,
    ) -> (
        Result<ScoreResponse, ScoreError>,
        Option<SnapshotId>,
        Option<(Arc<Vec<CanonicalPosition>>, ScoreKey)>,
    ) {
        let prepared = async {
            let entry = self.registry.resolve(&request.model).await?;
            let params = entry.model.description.resolve_params(&request.params)?;
            let portfolio = self
                .prepare_portfolio(request.portfolio, &StoredPortfolios::new())
                .await?;
            Ok::<_, ScoreError>((entry, params, portfolio))
        };
        let (entry, params, portfolio) = match prepared.await {
            Ok(prepared) => prepared,
            Err(error) => return (Err(error), None, None),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let pin = match self.market.resolve_as_of(request.as_of).await {
                Ok(as_of) => DataPin {
                    as_of,
                    snapshot: self.market.snapshot(),
                },
                Err(error) => return (Err(error.into()), None, None),
            };
            let key = score_key(
                &entry.model.digest,
                &params,
                &portfolio.positions,
                &pin.snapshot,
                pin.as_of,
            );
            let result = self
                .score_pinned(
                    &entry,
                    params.clone(),
                    &portfolio,
                    &pin,
                    key,
                    request.breakdown,
                )
                .await;
            match result {
                Err(error) if error.is_snapshot_moved() && attempt < jobs::SNAPSHOT_ATTEMPTS => {
                    metrics::counter!("riskhost_snapshot_repins_total", "route" => "score")
                        .increment(1);
                }
                result => {
                    let champion = result.as_ref().map(|r| r.value).map_err(|e| e.code());
                    self.offer_to_challenger(&entry, &params, &portfolio, &pin, champion);
                    return (
                        result,
                        Some(pin.snapshot),
                        Some((portfolio.positions.clone(), key)),
                    );
                }
            }
        }
    }

    /// Scores a prepared request on exactly the data of `pin`.
    async fn score_pinned(
        &self,
        entry: &Arc<ModelEntry>,
        params: Vec<f64>,
        portfolio: &PreparedPortfolio,
        pin: &DataPin,
        key: ScoreKey,
        breakdown: bool,
    ) -> Result<ScoreResponse, ScoreError> {
        let description = &entry.model.description;
        let as_of = pin.as_of;
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
            snapshot: pin.snapshot.to_string(),
            value: score.value,
            unit: unit_name(score.unit),
            breakdown: if breakdown {
                batch::breakdown_entries(score)
            } else {
                Vec::new()
            },
            params: BTreeMap::clone(&named_params),
            cached: tier.is_some(),
            cache_tier: tier,
        };

        let name = entry.model.name();
        let (memo, tier) = match self.cache.get_many(name, &[key]).await.pop() {
            Some(Some((hit, tier))) => (hit, Some(tier)),
            _ => {
                // Concurrent identical misses share one computation.
                let (computed, role) = self
                    .flights
                    .run(key, self.compute(entry, params, portfolio, pin, key))
                    .await;
                if role == single_flight::Role::Follower {
                    metrics::counter!("riskhost_cache_coalesced_total", "model" => name.to_owned())
                        .increment(1);
                }
                let (memo, tier) = computed?;
                (memo, tier.filter(|_| role == single_flight::Role::Leader))
            }
        };
        match &memo.outcome {
            Ok(score) => Ok(respond(score, tier)),
            Err(error) => Err(ScoreError::from_model_error(name, error.clone())),
        }
    }

    /// The miss path: re-checks the in-process tier, runs the job and stores
    /// the outcome the cache policy allows (scores, and deterministic model
    /// errors briefly; never failures of the call itself).
    async fn compute(
        &self,
        entry: &Arc<ModelEntry>,
        params: Vec<f64>,
        portfolio: &PreparedPortfolio,
        pin: &DataPin,
        key: ScoreKey,
    ) -> Computed {
        // A flight that ended between our lookup and our flight has filled it.
        if let Some(hit) = self.cache.get_local(&key) {
            return Ok((hit, Some(CacheTier::L1)));
        }
        let job = PreparedJob {
            key,
            portfolio_id: portfolio.id.clone(),
            lookback: entry.model.description.lookback_for(&params),
            positions: portfolio.positions.clone(),
            params,
        };
        let outcome = self.run_one(entry, pin, job).await?;
        let name = entry.model.name();
        let memo = Arc::new(CachedScore { outcome });
        if let Some(ttl) = self.settings.cache.ttl_for(name, &memo.outcome) {
            self.cache
                .put_many(name, vec![(key, memo.clone(), ttl)])
                .await;
        }
        Ok((memo, None))
    }

    /// Runs one job: through the dynamic batcher when it is on, else alone.
    async fn run_one(
        &self,
        entry: &Arc<ModelEntry>,
        pin: &DataPin,
        job: PreparedJob,
    ) -> jobs::JobResult {
        if self.settings.dynamic.enabled() {
            return self.batchers.submit(entry, pin.clone(), job).await;
        }
        let (window, mut errors) = self.executor.prefetch(pin, &[&job]).await;
        if let Some(Some(error)) = errors.pop() {
            return Err(error);
        }
        let window = window.ok_or_else(|| ScoreError::Internal("no price window".into()))?;
        let slot = entry
            .bulkhead
            .enter_owned()
            .await
            .map_err(|source| overloaded(entry, source))?;
        let mut results = self
            .executor
            .run(entry.clone(), window, vec![job], slot, Lane::Live)
            .await;
        results
            .pop()
            .unwrap_or_else(|| Err(ScoreError::Internal("the model returned no result".into())))
    }

    async fn prepare_portfolio(
        &self,
        input: PortfolioInput,
        prefetched: &StoredPortfolios,
    ) -> Result<PreparedPortfolio, ScoreError> {
        prepare_portfolio(
            &*self.market,
            input,
            prefetched,
            self.settings.portfolio_limits,
        )
        .await
    }
}

/// Stored portfolios a caller fetched ahead, by id (the batch route fetches
/// all of its requests' in one round trip).
pub(crate) type StoredPortfolios = HashMap<String, StoredPortfolio>;

/// Resolves and canonicalises a portfolio input by the one rule every path
/// follows (single and batch requests, `riskhost model test`): inline
/// `positions` win, even over a stored portfolio of the same `id`; an `id`
/// alone names a stored portfolio, taken from `prefetched` when the caller
/// fetched it already, else from the data source.
pub async fn prepare_portfolio(
    market: &dyn MarketDataSource,
    input: PortfolioInput,
    prefetched: &StoredPortfolios,
    limits: PortfolioLimits,
) -> Result<PreparedPortfolio, ScoreError> {
    if let Some(id) = &input.id
        && id.len() > limits.max_id_bytes
    {
        return Err(ScoreError::Portfolio(format!(
            "the portfolio id is {} bytes; the limit is {}",
            id.len(),
            limits.max_id_bytes
        )));
    }
    let positions = match input.stored_id() {
        Some(id) => {
            let stored = match prefetched.get(id) {
                Some(found) => found.clone(),
                None => market
                    .portfolio(id)
                    .await?
                    .ok_or_else(|| ScoreError::UnknownPortfolio(id.to_owned()))?,
            };
            stored
                .positions
                .into_iter()
                .map(|p| PositionInput {
                    instrument: p.instrument,
                    quantity: p.quantity,
                })
                .collect()
        }
        None => input.positions.ok_or_else(|| {
            ScoreError::Portfolio("give `positions`, or the `id` of a stored portfolio".into())
        })?,
    };
    let positions = request::canonicalize(&positions, limits).map_err(ScoreError::Portfolio)?;
    Ok(PreparedPortfolio {
        id: input.id,
        positions: Arc::new(positions),
    })
}

fn overloaded(entry: &ModelEntry, source: Overloaded) -> ScoreError {
    metrics::counter!("riskhost_model_rejected_total", "model" => entry.model.name().to_owned())
        .increment(1);
    ScoreError::Overloaded {
        model: entry.model.name().to_owned(),
        source,
    }
}

/// Parses an ISO date, for CLI flags.
pub fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|e| format!("`{s}` is not a YYYY-MM-DD date: {e}"))
}

//! Score events from what the scoring layer answered, so its hooks stay one
//! line each: [`single`] for `POST /v1/score` (and `riskhost score`),
//! [`batch`] for every cell of a batch. When the sink keeps what replay
//! needs, a scored event also carries its resolved parameters, its seed and
//! its portfolio's hash, and the first event of a record naming a hash
//! carries the positions behind it ([`Replay`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;

use crate::batch::{BatchCell, CellOutcome};
use crate::jobs::DataPin;
use crate::{PreparedPortfolio, ScoreError, ScoreResponse};
use riskhost_cache::{CanonicalPosition, score_key};
use riskhost_events::{
    RecordedPosition, ScoreEvent, bounded_field, current_key_id, current_request_id, now_us,
    params_hash, portfolio_hash,
};
use riskhost_market::SnapshotId;
use riskhost_models::ModelEntry;

/// What replay needs of a single score: its job's positions and seed.
pub(crate) struct Replay<'a> {
    pub(crate) positions: &'a [CanonicalPosition],
    pub(crate) seed: u64,
}

/// The recorded form of canonical positions, and their hash.
fn recorded_positions(positions: &[CanonicalPosition]) -> (String, Arc<Vec<RecordedPosition>>) {
    let hash = portfolio_hash(
        positions
            .iter()
            .map(|p| (p.instrument.as_str(), p.quantity)),
    );
    let recorded = positions
        .iter()
        .map(|p| RecordedPosition {
            instrument: p.instrument.clone(),
            quantity: p.quantity,
        })
        .collect();
    (hash, Arc::new(recorded))
}

/// The resolved parameters as replay stores them: a JSON object by name.
fn params_json<'a>(params: impl IntoIterator<Item = (&'a str, f64)>) -> String {
    let named: BTreeMap<&str, f64> = params.into_iter().collect();
    serde_json::to_string(&named).unwrap_or_default()
}

/// A model's resolved parameter vector by name.
fn named<'a>(entry: &'a ModelEntry, params: &'a [f64]) -> impl Iterator<Item = (&'a str, f64)> {
    entry
        .model
        .description
        .params
        .iter()
        .zip(params)
        .map(|(spec, v)| (spec.name.as_str(), *v))
}

/// What a single request asked, for the event of a request that failed
/// before its model or parameters resolved.
pub(crate) struct Asked<'a> {
    pub(crate) model: &'a str,
    pub(crate) portfolio_id: Option<&'a str>,
    pub(crate) params: &'a BTreeMap<String, f64>,
    pub(crate) as_of: Option<NaiveDate>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The event of one single request.
pub(crate) fn single(
    asked: Asked<'_>,
    result: &Result<ScoreResponse, ScoreError>,
    latency: Duration,
    snapshot: &SnapshotId,
    replay: Option<Replay<'_>>,
) -> ScoreEvent {
    let base = ScoreEvent {
        ts_us: now_us(),
        request_id: current_request_id(),
        // What the caller asked for may be far longer than anything valid.
        portfolio_id: bounded_field(asked.portfolio_id.unwrap_or_default()).into_owned(),
        model: bounded_field(asked.model).into_owned(),
        version: String::new(),
        digest: String::new(),
        params_hash: params_hash(asked.params.iter().map(|(k, v)| (k.as_str(), *v))),
        as_of: asked.as_of,
        value: None,
        unit: String::new(),
        cached: false,
        latency_us: micros(latency),
        error_code: String::new(),
        path: "single".into(),
        snapshot: snapshot.to_string(),
        key_id: current_key_id(),
        ..ScoreEvent::default()
    };
    let event = match result {
        Ok(r) => {
            let (params, portfolio_hash, seed, positions) = match replay {
                Some(replay) => {
                    let (hash, positions) = recorded_positions(replay.positions);
                    let params = params_json(r.params.iter().map(|(k, v)| (k.as_str(), *v)));
                    (params, hash, replay.seed, Some(positions))
                }
                None => (String::new(), String::new(), 0, None),
            };
            ScoreEvent {
                model: r.model.clone(),
                version: r.version.clone(),
                digest: r.digest.clone(),
                params_hash: params_hash(r.params.iter().map(|(k, v)| (k.as_str(), *v))),
                as_of: Some(r.as_of),
                value: Some(r.value),
                unit: r.unit.to_owned(),
                cached: r.cached,
                params,
                portfolio_hash,
                seed,
                positions,
                ..base
            }
        }
        Err(e) => ScoreEvent {
            error_code: e.code().to_owned(),
            ..base
        },
    };
    event.bounded()
}

/// The portfolios of a batch as its cells were scored, for replay.
pub(crate) type BatchPortfolios<'a> =
    &'a [(Option<String>, Result<PreparedPortfolio, ScoreError>)];

/// One event per cell of a batch; `models` in request order with their
/// resolved parameters, cells portfolio-major over `portfolios`. `path`
/// says which route asked: `batch`, or `backtest` for one day of a
/// backtest. With `replay`, scored cells carry what replay needs.
pub(crate) fn batch(
    cells: &[BatchCell],
    models: &[(Arc<ModelEntry>, Vec<f64>, usize)],
    portfolios: BatchPortfolios<'_>,
    pin: &DataPin,
    latency: Duration,
    path: &'static str,
    replay: bool,
) -> Vec<ScoreEvent> {
    let (as_of, snapshot) = (pin.as_of, &pin.snapshot);
    let (ts_us, request_id, snapshot) = (now_us(), current_request_id(), snapshot.to_string());
    let key_id = current_key_id();
    let hashes: Vec<String> = models
        .iter()
        .map(|(entry, params, _)| params_hash(named(entry, params)))
        .collect();
    let param_texts: Vec<String> = if replay {
        models
            .iter()
            .map(|(entry, params, _)| params_json(named(entry, params)))
            .collect()
    } else {
        Vec::new()
    };
    // Each portfolio's hash and positions, computed once; the positions go
    // with the first event naming a hash only.
    let mut recorded: Vec<Option<(String, Arc<Vec<RecordedPosition>>)>> = Vec::new();
    let mut carried: std::collections::HashSet<String> = std::collections::HashSet::new();
    let per_portfolio = models.len().max(1);
    cells
        .iter()
        .enumerate()
        .map(|(i, cell)| {
            let m = i % per_portfolio;
            let p = i / per_portfolio;
            let entry = models.get(m).map(|(e, _, _)| e);
            let mut event = ScoreEvent {
                ts_us,
                request_id: request_id.clone(),
                portfolio_id: cell.portfolio_id.clone().unwrap_or_default(),
                model: cell.model.clone(),
                version: entry
                    .map(|e| e.model.version().to_owned())
                    .unwrap_or_default(),
                digest: entry.map(|e| e.model.digest.clone()).unwrap_or_default(),
                params_hash: hashes.get(m).cloned().unwrap_or_default(),
                as_of: Some(as_of),
                value: None,
                unit: String::new(),
                cached: false,
                latency_us: micros(latency),
                error_code: String::new(),
                path: path.into(),
                snapshot: snapshot.clone(),
                key_id: key_id.clone(),
                ..ScoreEvent::default()
            };
            match &cell.outcome {
                CellOutcome::Score(s) => {
                    event.value = Some(s.value);
                    event.unit = s.unit.to_owned();
                    event.cached = s.cached;
                    if replay
                        && let (Some((entry, params, _)), Some((_, Ok(portfolio)))) =
                            (models.get(m), portfolios.get(p))
                    {
                        if recorded.len() <= p {
                            recorded.resize(p + 1, None);
                        }
                        let (hash, positions) = recorded[p]
                            .get_or_insert_with(|| recorded_positions(&portfolio.positions))
                            .clone();
                        let key = score_key(
                            &entry.model.digest,
                            params,
                            &portfolio.positions,
                            &pin.snapshot,
                            pin.as_of,
                        );
                        event.seed = key.seed();
                        event.params = param_texts.get(m).cloned().unwrap_or_default();
                        if carried.insert(hash.clone()) {
                            event.positions = Some(positions);
                        }
                        event.portfolio_hash = hash;
                    }
                }
                CellOutcome::Error { error } => event.error_code = error.code.to_owned(),
            }
            event.bounded()
        })
        .collect()
}

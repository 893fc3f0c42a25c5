//! Score events from what the scoring layer answered, so its hooks stay one
//! line each: [`single`] for `POST /v1/score` (and `riskhost score`),
//! [`batch`] for every cell of a batch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;

use crate::batch::{BatchCell, CellOutcome};
use crate::{ScoreError, ScoreResponse};
use riskhost_events::{
    ScoreEvent, bounded_field, current_key_id, current_request_id, now_us, params_hash,
};
use riskhost_market::SnapshotId;
use riskhost_models::ModelEntry;

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
    };
    let event = match result {
        Ok(r) => ScoreEvent {
            model: r.model.clone(),
            version: r.version.clone(),
            digest: r.digest.clone(),
            params_hash: params_hash(r.params.iter().map(|(k, v)| (k.as_str(), *v))),
            as_of: Some(r.as_of),
            value: Some(r.value),
            unit: r.unit.to_owned(),
            cached: r.cached,
            ..base
        },
        Err(e) => ScoreEvent {
            error_code: e.code().to_owned(),
            ..base
        },
    };
    event.bounded()
}

/// One event per cell of a batch; `models` in request order with their
/// resolved parameters. `path` says which route asked: `batch`, or
/// `backtest` for one day of a backtest.
pub(crate) fn batch(
    cells: &[BatchCell],
    models: &[(Arc<ModelEntry>, Vec<f64>, usize)],
    as_of: NaiveDate,
    latency: Duration,
    snapshot: &SnapshotId,
    path: &'static str,
) -> Vec<ScoreEvent> {
    let (ts_us, request_id, snapshot) = (now_us(), current_request_id(), snapshot.to_string());
    let key_id = current_key_id();
    let hashes: Vec<String> = models
        .iter()
        .map(|(entry, params, _)| {
            params_hash(
                entry
                    .model
                    .description
                    .params
                    .iter()
                    .zip(params)
                    .map(|(spec, v)| (spec.name.as_str(), *v)),
            )
        })
        .collect();
    let per_portfolio = models.len().max(1);
    cells
        .iter()
        .enumerate()
        .map(|(i, cell)| {
            let m = i % per_portfolio;
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
            };
            match &cell.outcome {
                CellOutcome::Score(s) => {
                    event.value = Some(s.value);
                    event.unit = s.unit.to_owned();
                    event.cached = s.cached;
                }
                CellOutcome::Error { error } => event.error_code = error.code.to_owned(),
            }
            event.bounded()
        })
        .collect()
}

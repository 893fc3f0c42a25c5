//! Backtests: a VaR model scored as of every trading day of a range, each
//! day's VaR held against the next day's P&L of the unchanged positions.
//!
//! One backtest pins one market-data snapshot, reads its calendar, and
//! fetches one price window covering every tested day (and its lookback)
//! for all portfolios. Each day is then scored like a batch request as of
//! that day (memo lookups, chunked sandboxed calls, memo writes, score
//! events marked `backtest`) on the window a single request as of that day
//! would have fetched, cut from the one fetched: a backtest's VaR on day t
//! is bit for bit the score `POST /v1/score` answers as of t. The
//! statistics are [`riskhost_backtest`]'s.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::NaiveDate;
use futures::stream::{self, StreamExt};
use serde::Deserialize;

use super::batch::{BatchCell, CellOutcome};
use super::jobs::{DataPin, IndexedWindow, Lane, PreparedJob, SNAPSHOT_ATTEMPTS};
use super::{ErrorClass, PortfolioInput, PreparedPortfolio, ScoreError, ScoringService};
use riskhost_backtest::{
    Backtest, BacktestDay, PortfolioBacktest, PortfolioError, PortfolioOutcome, TestedPortfolio,
};
use riskhost_cache::CanonicalPosition;
use riskhost_engine::ParamError;
use riskhost_market::SnapshotId;
use riskhost_models::ModelEntry;

/// The parameter a backtestable model declares: the VaR's confidence level.
pub(crate) const CONFIDENCE_PARAM: &str = "confidence";
/// The horizon parameter a VaR model may declare; a backtest forces it to 1.
pub(crate) const HORIZON_PARAM: &str = "horizon_days";
/// The unit a backtestable model scores in: a loss is compared with it.
const BACKTESTABLE_UNIT: &str = "currency_amount";
/// Days scored concurrently; each day's calls still queue on the model's
/// bulkhead, so this only keeps both the cores and the memo busy. A
/// bulkhead must queue this many calls (`--max-queued-calls`, 1024 by
/// default) or the backtest answers `overloaded`.
pub const DAYS_IN_FLIGHT: usize = 4;

/// `POST /v1/backtests`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BacktestRequest {
    /// A model reference (`name`, `name@1.2.0`, `name@sha256:…`).
    pub model: String,
    pub portfolios: Vec<PortfolioInput>,
    /// The first day to test (YYYY-MM-DD).
    #[cfg_attr(feature = "schema", schema(value_type = String, format = Date))]
    pub from: NaiveDate,
    /// The last day to test; a day is tested when the data has a next
    /// trading day for its P&L.
    #[cfg_attr(feature = "schema", schema(value_type = String, format = Date))]
    pub to: NaiveDate,
    /// The model's parameters; `horizon_days` is forced to 1.
    #[serde(default)]
    pub params: BTreeMap<String, f64>,
}

/// Bounds on one backtest.
#[derive(Debug, Clone, Copy)]
pub struct BacktestLimits {
    /// Portfolios × tested days (`--backtest-max-cells`).
    pub max_cells: usize,
    pub max_portfolios: usize,
}

impl Default for BacktestLimits {
    fn default() -> Self {
        BacktestLimits {
            max_cells: 250_000,
            max_portfolios: 1_000,
        }
    }
}

/// Why a whole backtest is refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BacktestError {
    /// A field of the request does not fit the data or the limits.
    #[error("`{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The model is not a VaR in money.
    #[error("{0}")]
    NotBacktestable(String),
    /// A day found the model's bulkhead full: nothing about the portfolio,
    /// so the whole backtest is to be retried.
    #[error("{0}")]
    Overloaded(String),
    #[error("{model}: {error}")]
    Params { model: String, error: ParamError },
    #[error(transparent)]
    Score(#[from] ScoreError),
}

impl BacktestError {
    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        BacktestError::Invalid {
            field,
            message: message.into(),
        }
    }
}

/// The model, its parameters and what they imply, resolved once.
struct Resolved {
    entry: Arc<ModelEntry>,
    params: Vec<f64>,
    lookback: usize,
    confidence: f64,
    horizon: String,
}

/// The days a backtest tests: calendar indices `first..=last`, each with a
/// next trading day at index + 1.
struct TestedDays {
    calendar: Vec<NaiveDate>,
    first: usize,
    last: usize,
}

impl ScoringService {
    /// Runs a backtest; `id` names it in the answer.
    pub async fn backtest(
        &self,
        request: BacktestRequest,
        limits: BacktestLimits,
        id: String,
    ) -> Result<Backtest, BacktestError> {
        if request.from > request.to {
            return Err(BacktestError::invalid(
                "from",
                format!("{} is after `to` ({})", request.from, request.to),
            ));
        }
        if request.portfolios.is_empty() {
            return Err(BacktestError::invalid(
                "portfolios",
                "give at least one portfolio",
            ));
        }
        if request.portfolios.len() > limits.max_portfolios {
            return Err(BacktestError::invalid(
                "portfolios",
                format!(
                    "{} portfolios; the limit is {}",
                    request.portfolios.len(),
                    limits.max_portfolios
                ),
            ));
        }
        let resolved = self.resolve_backtest_model(&request).await?;

        let stored = self.stored_portfolios(&request.portfolios).await;
        let mut portfolios = Vec::with_capacity(request.portfolios.len());
        for input in request.portfolios {
            let id = input
                .id
                .as_deref()
                .map(|id| riskhost_events::bounded_field(id).into_owned());
            portfolios.push((id, self.prepare_portfolio(input, &stored).await));
        }

        let mut attempt = 0;
        loop {
            attempt += 1;
            let snapshot = self.market.snapshot();
            let days = self
                .tested_days(
                    &snapshot,
                    request.from,
                    request.to,
                    &resolved,
                    &portfolios,
                    limits,
                )
                .await?;
            match self
                .backtest_pinned(&resolved, &portfolios, &days, &snapshot)
                .await
            {
                Err(error) if error.is_snapshot_moved() && attempt < SNAPSHOT_ATTEMPTS => {
                    metrics::counter!("riskhost_snapshot_repins_total", "route" => "backtest")
                        .increment(1);
                }
                Err(error) => return Err(error.into()),
                Ok(outcomes) => {
                    let outcomes = outcomes?;
                    let description = &resolved.entry.model.description;
                    return Ok(Backtest {
                        id,
                        model: resolved.entry.model.name().to_owned(),
                        version: resolved.entry.model.version().to_owned(),
                        digest: resolved.entry.model.digest.clone(),
                        snapshot: snapshot.to_string(),
                        from: request.from,
                        to: request.to,
                        first_day: days.calendar[days.first],
                        last_day: days.calendar[days.last],
                        confidence: resolved.confidence,
                        horizon: resolved.horizon,
                        params: description
                            .params
                            .iter()
                            .zip(&resolved.params)
                            .map(|(spec, v)| (spec.name.clone(), *v))
                            .collect(),
                        portfolios: outcomes,
                        report_url: None,
                    });
                }
            }
        }
    }

    /// The model and its parameters: a VaR model (it declares `confidence`),
    /// at a one-day horizon.
    async fn resolve_backtest_model(
        &self,
        request: &BacktestRequest,
    ) -> Result<Resolved, BacktestError> {
        let entry = self
            .registry
            .resolve(&request.model)
            .await
            .map_err(ScoreError::from)?;
        let description = &entry.model.description;
        let declares = |name: &str| description.params.iter().position(|p| p.name == name);
        let Some(confidence_at) = declares(CONFIDENCE_PARAM) else {
            return Err(BacktestError::NotBacktestable(format!(
                "{} declares no `{CONFIDENCE_PARAM}` parameter: only a VaR model, with a confidence level, can be backtested",
                entry.model.name()
            )));
        };
        let mut given = request.params.clone();
        let horizon = if declares(HORIZON_PARAM).is_some() {
            let asked = given.insert(HORIZON_PARAM.to_owned(), 1.0);
            match asked {
                Some(days) if days != 1.0 => {
                    format!("1 day ({HORIZON_PARAM} forced to 1; {days} was asked)")
                }
                _ => format!("1 day ({HORIZON_PARAM} forced to 1)"),
            }
        } else {
            "1 day (the model declares no horizon: its VaR is taken as one-day)".to_owned()
        };
        let params = description
            .resolve_params(&given)
            .map_err(|error| BacktestError::Params {
                model: entry.model.name().to_owned(),
                error,
            })?;
        let confidence = params[confidence_at];
        if !(confidence > 0.0 && confidence < 1.0) {
            return Err(BacktestError::invalid(
                "params",
                format!("`{CONFIDENCE_PARAM}` is {confidence}; a backtest needs it in (0, 1)"),
            ));
        }
        let lookback = description.lookback_for(&params);
        Ok(Resolved {
            entry,
            params,
            lookback,
            confidence,
            horizon,
        })
    }

    /// Places `[from, to]` in the snapshot's calendar and checks it against
    /// the data, the model's lookback and the limits.
    async fn tested_days(
        &self,
        snapshot: &SnapshotId,
        from: NaiveDate,
        to: NaiveDate,
        resolved: &Resolved,
        portfolios: &[(Option<String>, Result<PreparedPortfolio, ScoreError>)],
        limits: BacktestLimits,
    ) -> Result<TestedDays, BacktestError> {
        let calendar = self
            .market
            .calendar(snapshot)
            .await
            .map_err(ScoreError::from)?;
        let (Some(&data_first), Some(&data_last)) = (calendar.first(), calendar.last()) else {
            return Err(BacktestError::invalid(
                "from",
                "the market data holds no prices",
            ));
        };
        if from < data_first || from > data_last {
            return Err(BacktestError::invalid(
                "from",
                format!("{from} is outside the data, which runs from {data_first} to {data_last}"),
            ));
        }
        if to > data_last {
            return Err(BacktestError::invalid(
                "to",
                format!("{to} is outside the data, which runs from {data_first} to {data_last}"),
            ));
        }
        let first = calendar.partition_point(|d| *d < from);
        // The last tested day needs a next trading day for its P&L.
        let last_with_next = calendar.len().saturating_sub(2);
        let last = calendar.partition_point(|d| *d <= to).saturating_sub(1);
        let last = last.min(last_with_next);
        let observations = (last + 1).saturating_sub(first);
        if last < first || observations < 2 {
            return Err(BacktestError::invalid(
                "to",
                format!(
                    "{from} to {to} holds {observations} trading day(s) with a next day in the data; a backtest needs at least 2"
                ),
            ));
        }
        if first < resolved.lookback {
            let earliest = calendar.get(resolved.lookback).copied();
            return Err(BacktestError::invalid(
                "from",
                match earliest {
                    Some(day) => format!(
                        "{} needs {} daily returns before each tested day; the earliest `from` with that history is {day}",
                        resolved.entry.model.name(),
                        resolved.lookback
                    ),
                    None => format!(
                        "{} needs {} daily returns before each tested day; the data holds {} days",
                        resolved.entry.model.name(),
                        resolved.lookback,
                        calendar.len()
                    ),
                },
            ));
        }
        let cells = observations.saturating_mul(portfolios.len());
        if cells > limits.max_cells {
            return Err(BacktestError::invalid(
                "portfolios",
                format!(
                    "{} portfolios × {observations} days = {cells} scores; the limit is {} (`--backtest-max-cells`)",
                    portfolios.len(),
                    limits.max_cells
                ),
            ));
        }
        Ok(TestedDays {
            calendar,
            first,
            last,
        })
    }

    /// Scores every tested day on the data of `snapshot`. The outer error is
    /// the data moving under the pin (the caller pins again); the inner one
    /// refuses the whole backtest.
    async fn backtest_pinned(
        &self,
        resolved: &Resolved,
        portfolios: &[(Option<String>, Result<PreparedPortfolio, ScoreError>)],
        days: &TestedDays,
        snapshot: &SnapshotId,
    ) -> Result<Result<Vec<PortfolioBacktest>, BacktestError>, ScoreError> {
        // One window for the whole backtest: it ends on the day after the
        // last tested day and reaches `lookback` returns before the first.
        let end = days.last + 1;
        let window_pin = DataPin {
            as_of: days.calendar[end],
            snapshot: snapshot.clone(),
        };
        let whole: Vec<PreparedJob> = portfolios
            .iter()
            .filter_map(|(id, prepared)| prepared.as_ref().ok().map(|p| (id, p)))
            .map(|(id, portfolio)| PreparedJob {
                key: riskhost_cache::score_key(
                    &resolved.entry.model.digest,
                    &resolved.params,
                    &portfolio.positions,
                    snapshot,
                    window_pin.as_of,
                ),
                portfolio_id: id.clone(),
                positions: portfolio.positions.clone(),
                params: resolved.params.clone(),
                lookback: resolved.lookback + (end - days.first),
            })
            .collect();
        let refs: Vec<&PreparedJob> = whole.iter().collect();
        let (window, mut errors) = self.executor.prefetch(&window_pin, &refs).await;
        // The data moved (the caller pins again), or the source is down: the
        // whole backtest waits for it.
        if let Some(shared) = errors.iter_mut().find(|e| {
            e.as_ref().is_some_and(|e| {
                e.is_snapshot_moved()
                    || matches!(e.class(), ErrorClass::Unavailable | ErrorClass::Internal)
            })
        }) {
            return Err(shared
                .take()
                .unwrap_or_else(|| ScoreError::Internal("the window was not read".into())));
        }
        // Portfolios the window refused (unknown instruments, exposure)
        // fail alone, before any day is scored.
        let mut errors = errors.into_iter();
        let portfolios: Vec<(Option<String>, Result<PreparedPortfolio, ScoreError>)> = portfolios
            .iter()
            .map(|(id, prepared)| {
                let prepared = match prepared {
                    Err(e) => Err(e.clone()),
                    Ok(p) => match errors.next().flatten() {
                        Some(e) => Err(e),
                        None => Ok(PreparedPortfolio {
                            id: p.id.clone(),
                            positions: p.positions.clone(),
                        }),
                    },
                };
                (id.clone(), prepared)
            })
            .collect();
        let failed_alone = |p: &Result<PreparedPortfolio, ScoreError>| match p {
            Ok(_) => Ok(Vec::new()),
            Err(e) => Err(PortfolioError {
                code: e.code().to_owned(),
                message: e.to_string(),
                date: None,
            }),
        };
        let mut per_portfolio: Vec<Result<Vec<BacktestDay>, PortfolioError>> =
            portfolios.iter().map(|(_, p)| failed_alone(p)).collect();
        let Some(window) = window else {
            // Every portfolio failed before any day could be scored.
            return Ok(Ok(tested_portfolios(
                &portfolios,
                per_portfolio,
                resolved.confidence,
            )));
        };
        // Calendar index → window index.
        let offset = end + 1 - window.dates().len();
        let models = [(
            resolved.entry.clone(),
            resolved.params.clone(),
            resolved.lookback,
        )];

        let scored: Vec<(usize, Vec<Option<CellOutcome>>)> = stream::iter(days.first..=days.last)
            .map(|day| {
                let (window, models, portfolios) = (&window, &models, &portfolios);
                async move {
                    let at = day - offset;
                    let pin = DataPin {
                        as_of: days.calendar[day],
                        snapshot: snapshot.clone(),
                    };
                    let cut = Arc::new(window.cut(at, resolved.lookback));
                    let started = std::time::Instant::now();
                    let cells = self
                        .score_cells(models, portfolios, &pin, Some(cut), Lane::Live, true)
                        .await
                        .unwrap_or_default();
                    if self.events.records() {
                        let recorded: Vec<BatchCell> = cells
                            .iter()
                            .enumerate()
                            .map(|(i, outcome)| BatchCell {
                                portfolio_index: i,
                                portfolio_id: portfolios[i].0.clone(),
                                model: resolved.entry.model.name().to_owned(),
                                outcome: outcome.clone().unwrap_or_else(|| {
                                    CellOutcome::failed(&ScoreError::Internal(
                                        "the cell was never computed".into(),
                                    ))
                                }),
                            })
                            .collect();
                        let events = crate::events::batch(
                            &recorded,
                            models,
                            portfolios,
                            &pin,
                            started.elapsed(),
                            "backtest",
                            self.events.keeps_replay_data(),
                        );
                        self.events.record(events).await;
                    }
                    (day, cells)
                }
            })
            .buffered(DAYS_IN_FLIGHT)
            .collect()
            .await;

        // Per portfolio: each day's VaR against the next day's P&L, up to
        // its first failing day. `buffered` keeps the days in order.
        for (day, cells) in scored {
            let (date, at) = (days.calendar[day], day - offset);
            for (index, cell) in cells.into_iter().enumerate() {
                let Ok(tested) = &mut per_portfolio[index] else {
                    continue;
                };
                let score = match cell {
                    Some(CellOutcome::Score(score)) => score,
                    Some(CellOutcome::Error { error }) if error.code == "overloaded" => {
                        return Ok(Err(BacktestError::Overloaded(format!(
                            "{date}: {}",
                            error.message
                        ))));
                    }
                    Some(CellOutcome::Error { error }) => {
                        per_portfolio[index] = Err(PortfolioError {
                            code: error.code.to_owned(),
                            message: error.message,
                            date: Some(date),
                        });
                        continue;
                    }
                    None => continue,
                };
                if score.unit != BACKTESTABLE_UNIT {
                    return Ok(Err(BacktestError::NotBacktestable(format!(
                        "{} scores in `{}`; a backtest compares losses with a VaR in `{BACKTESTABLE_UNIT}`",
                        resolved.entry.model.name(),
                        score.unit
                    ))));
                }
                let Ok(portfolio) = &portfolios[index].1 else {
                    continue;
                };
                match pnl(&window, &portfolio.positions, at) {
                    Ok(pnl) => tested.push(BacktestDay::new(date, score.value, pnl)),
                    Err(instrument) => {
                        per_portfolio[index] = Err(PortfolioError {
                            code: "insufficient_data".into(),
                            message: format!(
                                "{instrument} has no close on {date} or the next trading day, so the P&L is unknown"
                            ),
                            date: Some(date),
                        })
                    }
                }
            }
        }
        Ok(Ok(tested_portfolios(
            &portfolios,
            per_portfolio,
            resolved.confidence,
        )))
    }
}

/// The answer per portfolio, in request order.
fn tested_portfolios(
    portfolios: &[(Option<String>, Result<PreparedPortfolio, ScoreError>)],
    days: Vec<Result<Vec<BacktestDay>, PortfolioError>>,
    confidence: f64,
) -> Vec<PortfolioBacktest> {
    portfolios
        .iter()
        .zip(days)
        .enumerate()
        .map(|(portfolio_index, ((id, _), days))| PortfolioBacktest {
            portfolio_index,
            id: id.clone(),
            outcome: match days {
                Ok(days) => {
                    PortfolioOutcome::Tested(Box::new(TestedPortfolio::new(days, confidence)))
                }
                Err(error) => PortfolioOutcome::Failed { error },
            },
        })
        .collect()
}

/// Σ quantity × (close(t+1) − close(t)) at the window's date index `at`,
/// or the instrument that lacks one of the two closes.
fn pnl(window: &IndexedWindow, positions: &[CanonicalPosition], at: usize) -> Result<f64, String> {
    let mut pnl = 0.0;
    for p in positions {
        let closes = window
            .closes(&p.instrument)
            .ok_or_else(|| p.instrument.clone())?;
        match (closes.get(at), closes.get(at + 1)) {
            (Some(today), Some(next)) if today.is_finite() && next.is_finite() => {
                pnl += p.quantity * (next - today);
            }
            _ => return Err(p.instrument.clone()),
        }
    }
    Ok(pnl)
}

//! riskhost-backtest: what a VaR backtest answers, and the statistics and
//! report behind it.
//!
//! - `stats.rs`: Kupiec, Christoffersen and the Basel traffic light over a
//!   sequence of exceptions ([`coverage`]).
//! - `report.rs`: the self-contained HTML page ([`report_html`]: an SVG
//!   chart per portfolio, the test table and the verdict in words).
//! - [`BacktestStore`]: finished backtests kept in memory under a byte bound,
//!   so `GET /v1/backtests/{id}` and its report can be read again.
//!
//! Pure: no I/O, no scoring. The scoring crate computes each day's VaR and
//! P&L and hands the days here; the HTTP crate serves what this returns.

mod report;
mod stats;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::NaiveDate;
use serde::Serialize;

pub use report::{BAR_FILL, EXCEPTION_FILL, html as report_html, verdict};
pub use stats::{Christoffersen, Coverage, Kupiec, TrafficLight, coverage};

/// One backtested day t: the VaR as of t and the P&L from t to the next
/// trading day of the unchanged positions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct BacktestDay {
    #[cfg_attr(feature = "schema", schema(value_type = String, format = Date))]
    pub date: NaiveDate,
    /// The model's score as of `date` (horizon one day).
    pub var: f64,
    /// Σ quantity × (close(t+1) − close(t)).
    pub pnl: f64,
    /// `pnl < −var`.
    pub exception: bool,
}

impl BacktestDay {
    pub fn new(date: NaiveDate, var: f64, pnl: f64) -> Self {
        BacktestDay {
            date,
            var,
            pnl,
            exception: pnl < -var,
        }
    }
}

/// The tests of one portfolio's days.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct TestedPortfolio {
    /// T, the number of days tested.
    pub observations: u64,
    /// x, the days whose loss exceeded the VaR.
    pub exceptions: u64,
    /// T × (1 − confidence).
    pub expected_exceptions: f64,
    pub kupiec: Kupiec,
    pub christoffersen: Christoffersen,
    pub traffic_light: TrafficLight,
    /// P(X ≤ x) for X ~ Binomial(T, 1 − confidence): the traffic light's
    /// input (green below 0.95, yellow below 0.9999, red otherwise).
    pub cumulative_probability: f64,
    pub days: Vec<BacktestDay>,
}

impl TestedPortfolio {
    /// Tests `days` against a VaR at `confidence` (in (0, 1)).
    pub fn new(days: Vec<BacktestDay>, confidence: f64) -> Self {
        let exceptions: Vec<bool> = days.iter().map(|d| d.exception).collect();
        let c = stats::coverage(&exceptions, confidence);
        TestedPortfolio {
            observations: c.observations,
            exceptions: c.exceptions,
            expected_exceptions: c.expected_exceptions,
            kupiec: c.kupiec,
            christoffersen: c.christoffersen,
            traffic_light: c.traffic_light,
            cumulative_probability: c.cumulative_probability,
            days,
        }
    }
}

/// Why a portfolio has no backtest: its first failing day's error.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct PortfolioError {
    /// The same codes as the scoring routes' errors.
    pub code: String,
    pub message: String,
    /// The day that failed, when one did (not for an invalid portfolio).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schema(value_type = Option<String>, format = Date))]
    pub date: Option<NaiveDate>,
}

/// A portfolio's tests, or why there are none.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum PortfolioOutcome {
    Tested(Box<TestedPortfolio>),
    Failed { error: PortfolioError },
}

/// One portfolio of a backtest.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct PortfolioBacktest {
    /// Position of the portfolio in the request.
    pub portfolio_index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(flatten)]
    pub outcome: PortfolioOutcome,
}

/// A finished backtest: what was tested, on which data, and per portfolio.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Backtest {
    pub id: String,
    pub model: String,
    pub version: String,
    pub digest: String,
    /// The market-data snapshot (`source@version`) every day was scored on.
    pub snapshot: String,
    /// The requested range.
    #[cfg_attr(feature = "schema", schema(value_type = String, format = Date))]
    pub from: NaiveDate,
    #[cfg_attr(feature = "schema", schema(value_type = String, format = Date))]
    pub to: NaiveDate,
    /// The first and last day tested: trading days in the range that have
    /// a next trading day in the data.
    #[cfg_attr(feature = "schema", schema(value_type = String, format = Date))]
    pub first_day: NaiveDate,
    #[cfg_attr(feature = "schema", schema(value_type = String, format = Date))]
    pub last_day: NaiveDate,
    pub confidence: f64,
    /// The horizon every VaR was computed at, and how it was set.
    pub horizon: String,
    /// Every parameter the model was called with (resolved, defaults
    /// included).
    pub params: BTreeMap<String, f64>,
    pub portfolios: Vec<PortfolioBacktest>,
    /// Where the server serves this backtest's HTML report (absent from
    /// the CLI's answer, which writes the report to a file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_url: Option<String>,
}

impl Backtest {
    /// An estimate of the bytes it holds, for the store's bound.
    pub fn approx_bytes(&self) -> usize {
        let days: usize = self
            .portfolios
            .iter()
            .map(|p| match &p.outcome {
                PortfolioOutcome::Tested(t) => t.days.len(),
                PortfolioOutcome::Failed { .. } => 0,
            })
            .sum();
        512 + days * std::mem::size_of::<BacktestDay>()
            + self.portfolios.len() * (std::mem::size_of::<PortfolioBacktest>() + 64)
    }
}

/// A stored backtest and the caller that ran it.
struct Stored {
    /// The API key id that ran it (empty when anonymous): only that caller
    /// reads it back.
    owner: String,
    backtest: Arc<Backtest>,
}

/// Finished backtests in memory, the oldest evicted first past a byte bound.
pub struct BacktestStore {
    entries: moka::sync::Cache<String, Arc<Stored>>,
}

impl BacktestStore {
    pub fn new(max_bytes: u64) -> Self {
        BacktestStore {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_, stored: &Arc<Stored>| {
                    u32::try_from(stored.backtest.approx_bytes()).unwrap_or(u32::MAX)
                })
                .build(),
        }
    }

    pub fn insert(&self, owner: &str, backtest: Arc<Backtest>) {
        self.entries.insert(
            backtest.id.clone(),
            Arc::new(Stored {
                owner: owner.to_owned(),
                backtest,
            }),
        );
    }

    /// The backtest `id` if `owner` ran it; another caller's is not found.
    pub fn get(&self, id: &str, owner: &str) -> Option<Arc<Backtest>> {
        self.entries
            .get(id)
            .filter(|stored| stored.owner == owner)
            .map(|stored| stored.backtest.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backtest(id: &str) -> Arc<Backtest> {
        let date = NaiveDate::from_ymd_opt(2024, 1, 2).unwrap_or_default();
        Arc::new(Backtest {
            id: id.to_owned(),
            model: "m".into(),
            version: "1.0.0".into(),
            digest: "sha256:00".into(),
            snapshot: "embedded@1".into(),
            from: date,
            to: date,
            first_day: date,
            last_day: date,
            confidence: 0.99,
            horizon: "1 day".into(),
            params: BTreeMap::new(),
            portfolios: vec![],
            report_url: None,
        })
    }

    #[test]
    fn a_backtest_is_read_back_only_by_who_ran_it() {
        let store = BacktestStore::new(1 << 20);
        store.insert("key-a", backtest("bt-1"));
        assert!(store.get("bt-1", "key-a").is_some());
        assert!(store.get("bt-1", "key-b").is_none());
        assert!(store.get("bt-1", "").is_none());
        assert!(store.get("bt-2", "key-a").is_none());
    }

    #[test]
    fn an_exception_is_a_loss_beyond_the_var() {
        let d = NaiveDate::from_ymd_opt(2024, 1, 2).unwrap_or_default();
        assert!(BacktestDay::new(d, 10.0, -10.5).exception);
        assert!(!BacktestDay::new(d, 10.0, -10.0).exception);
        assert!(!BacktestDay::new(d, 10.0, 30.0).exception);
    }
}

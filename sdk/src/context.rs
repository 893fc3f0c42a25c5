//! Per-batch view of the market data that jobs share.

use std::cell::OnceCell;

use crate::{MarketData, ModelError, Portfolio, PriceSeries, math};

/// The market data of one batch call plus values derived from it lazily, so
/// that a thousand jobs holding the same instrument compute its returns once.
pub struct BatchContext<'a> {
    market: &'a MarketData,
    returns: Vec<OnceCell<SeriesReturns>>,
}

/// A series' simple returns and where the usable (finite) tail begins.
struct SeriesReturns {
    returns: Vec<f64>,
    /// Index of the first return after the last non-finite one.
    usable_from: usize,
}

impl<'a> BatchContext<'a> {
    pub fn new(market: &'a MarketData) -> Self {
        BatchContext {
            market,
            returns: (0..market.series.len()).map(|_| OnceCell::new()).collect(),
        }
    }

    /// The raw market data.
    pub fn market(&self) -> &'a MarketData {
        self.market
    }

    /// The series at `index`, or an `invalid-input` error naming the index.
    pub fn series(&self, index: u32) -> Result<&'a PriceSeries, ModelError> {
        self.market.series.get(index as usize).ok_or_else(|| {
            ModelError::InvalidInput(format!(
                "position refers to series {index}, but the batch has {} series",
                self.market.series.len()
            ))
        })
    }

    /// The close on the as-of date (the last close) of a series.
    pub fn last_close(&self, index: u32) -> Result<f64, ModelError> {
        let series = self.series(index)?;
        series.closes.last().copied().ok_or_else(|| {
            ModelError::InsufficientData(format!("no close for {}", series.instrument))
        })
    }

    /// The last `lookback` simple daily returns of a series, oldest first.
    ///
    /// Fails with `insufficient-data` naming the instrument when the series
    /// holds fewer than `lookback + 1` closes, or when those closes reach back
    /// before the instrument's first price (NaN) or hold a close that is not > 0.
    pub fn returns(&self, index: u32, lookback: usize) -> Result<&[f64], ModelError> {
        let series = self.series(index)?;
        let computed = self.returns[index as usize].get_or_init(|| {
            let returns = math::simple_returns(&series.closes);
            let usable_from = returns
                .iter()
                .rposition(|r| !r.is_finite())
                .map_or(0, |i| i + 1);
            SeriesReturns {
                returns,
                usable_from,
            }
        });
        let all = &computed.returns;
        if all.len() < lookback {
            return Err(ModelError::InsufficientData(format!(
                "{} has {} daily returns up to {}, the model needs {lookback}",
                series.instrument,
                all.len(),
                self.market.as_of
            )));
        }
        let start = all.len() - lookback;
        if start >= computed.usable_from {
            return Ok(&all[start..]);
        }
        Err(ModelError::InsufficientData(format!(
            "{} has {} usable daily returns up to {} (prices must be finite and > 0), the model needs {lookback}",
            series.instrument,
            all.len() - computed.usable_from,
            self.market.as_of
        )))
    }

    /// Each position's value on the as-of date (quantity × last close), in
    /// the order of `portfolio.positions`.
    pub fn position_values(&self, portfolio: &Portfolio) -> Result<Vec<f64>, ModelError> {
        if portfolio.positions.is_empty() {
            return Err(ModelError::InvalidInput(
                "the portfolio has no positions".into(),
            ));
        }
        portfolio
            .positions
            .iter()
            .map(|p| Ok(p.quantity * self.last_close(p.series)?))
            .collect()
    }

    /// The instrument name of a position's series.
    pub fn instrument(&self, index: u32) -> Result<&'a str, ModelError> {
        Ok(self.series(index)?.instrument.as_str())
    }
}

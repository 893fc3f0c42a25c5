//! What clients send and what they get back, and the canonical form of a
//! portfolio.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use riskhost_cache::{CacheTier, CanonicalPosition};
use riskhost_market::{MAX_INSTRUMENT_ID_LEN, validate_instrument_id};

/// `POST /v1/score`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    /// `name`, `name@1.2.0` or `name@sha256:…`.
    pub model: String,
    pub portfolio: PortfolioInput,
    /// Parameter values by name; missing ones take the model's defaults.
    #[serde(default)]
    pub params: BTreeMap<String, f64>,
    /// Valuation date; defaults to the latest date in the data. A date that
    /// is not a trading day resolves to the previous trading day.
    #[serde(default)]
    pub as_of: Option<NaiveDate>,
    /// `false` answers an empty `breakdown`: less to build, encode and
    /// send when only the value is wanted.
    #[serde(default = "with_breakdown")]
    #[cfg_attr(feature = "schema", schema(default = true))]
    pub breakdown: bool,
}

/// Answers carry their breakdown unless asked not to.
pub(crate) fn with_breakdown() -> bool {
    true
}

/// A portfolio given inline (`positions`), or by `id` alone when the data
/// source stores it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PortfolioInput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positions: Option<Vec<PositionInput>>,
}

impl PortfolioInput {
    /// The stored portfolio this input names: its `id`, when it gives no
    /// `positions` of its own (inline positions win over a stored portfolio
    /// of the same id).
    pub(crate) fn stored_id(&self) -> Option<&str> {
        match (&self.positions, &self.id) {
            (None, Some(id)) => Some(id),
            _ => None,
        }
    }
}

/// A quantity of one instrument.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PositionInput {
    pub instrument: String,
    pub quantity: f64,
}

/// One named component of a score.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct BreakdownEntry {
    pub name: String,
    pub value: f64,
}

/// A served score.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ScoreResponse {
    pub model: String,
    pub version: String,
    pub digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub portfolio_id: Option<String>,
    pub as_of: NaiveDate,
    /// The market-data snapshot (`source@version`) the score was computed
    /// on, the one its memo key names: what a replay must read.
    #[cfg_attr(feature = "schema", schema(example = "postgres@3f9c2a61b0d4.42"))]
    pub snapshot: String,
    pub value: f64,
    /// `currency_amount`, `ratio`, `probability`, …
    #[cfg_attr(feature = "schema", schema(value_type = String, example = "currency_amount"))]
    pub unit: &'static str,
    pub breakdown: Vec<BreakdownEntry>,
    /// The parameters the score was computed with, defaults applied.
    pub params: BTreeMap<String, f64>,
    pub cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_tier: Option<CacheTier>,
}

/// Bounds on what one portfolio may hold.
#[derive(Debug, Clone, Copy)]
pub struct PortfolioLimits {
    pub max_positions: usize,
    pub max_id_bytes: usize,
}

impl Default for PortfolioLimits {
    fn default() -> Self {
        PortfolioLimits {
            max_positions: 10_000,
            max_id_bytes: 128,
        }
    }
}

/// Checks an instrument identifier (see `riskhost_market::validate_instrument_id`),
/// quoting at most a prefix of an over-long one back to the client.
pub(crate) fn check_instrument(instrument: &str) -> Result<(), String> {
    if instrument.len() > MAX_INSTRUMENT_ID_LEN {
        let prefix: String = instrument.chars().take(16).collect();
        return Err(format!(
            "instrument `{}…` is {} bytes long; at most {MAX_INSTRUMENT_ID_LEN} are allowed",
            prefix.escape_debug(),
            instrument.len()
        ));
    }
    validate_instrument_id(instrument)
}

/// The canonical form of a portfolio (see `riskhost_cache::score_key`): merged by
/// instrument, zero quantities dropped, sorted by instrument.
///
/// The quantities of one instrument are added in a fixed order (sorted),
/// not in request order: floating-point addition is not associative, so
/// `0.1, 0.2, 0.3` and `0.3, 0.2, 0.1` would otherwise merge to values one
/// ulp apart, and the same portfolio would get two memo keys (the property
/// `the_order_of_positions_does_not_change_the_key` in `tests/it/properties.rs`
/// checks it).
pub fn canonicalize(
    positions: &[PositionInput],
    limits: PortfolioLimits,
) -> Result<Vec<CanonicalPosition>, String> {
    if positions.is_empty() {
        return Err("the portfolio has no positions".into());
    }
    if positions.len() > limits.max_positions {
        return Err(format!(
            "the portfolio has {} positions; the limit is {}",
            positions.len(),
            limits.max_positions
        ));
    }
    for (index, p) in positions.iter().enumerate() {
        check_instrument(&p.instrument).map_err(|e| format!("position {index}: {e}"))?;
        if !p.quantity.is_finite() {
            return Err(format!(
                "position {index} ({}): quantity must be a finite number, got {}",
                p.instrument, p.quantity
            ));
        }
    }
    // By instrument, each one's quantities in ascending order, and each sum
    // taken in that order from 0.0: the same portfolio in any order of its
    // positions merges to the same bits (and so the same memo key).
    let mut sorted: Vec<&PositionInput> = positions.iter().collect();
    sorted.sort_unstable_by(|a, b| {
        a.instrument
            .cmp(&b.instrument)
            .then(a.quantity.total_cmp(&b.quantity))
    });
    let mut merged: Vec<(&str, f64)> = Vec::with_capacity(sorted.len());
    for p in sorted {
        match merged.last_mut() {
            Some((instrument, sum)) if *instrument == p.instrument => *sum += p.quantity,
            _ => merged.push((p.instrument.as_str(), 0.0 + p.quantity)),
        }
    }
    if let Some((instrument, _)) = merged.iter().find(|(_, q)| !q.is_finite()) {
        return Err(format!(
            "the quantities of {instrument} overflow when added up"
        ));
    }
    let canonical: Vec<CanonicalPosition> = merged
        .into_iter()
        .filter(|(_, q)| *q != 0.0)
        .map(|(instrument, quantity)| CanonicalPosition {
            instrument: instrument.to_owned(),
            quantity,
        })
        .collect();
    if canonical.is_empty() {
        return Err("every position of the portfolio nets to a quantity of zero".into());
    }
    Ok(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(instrument: &str, quantity: f64) -> PositionInput {
        PositionInput {
            instrument: instrument.into(),
            quantity,
        }
    }

    #[test]
    fn positions_are_merged_sorted_and_zeroes_dropped() {
        let got = canonicalize(
            &[p("SPX", 1.0), p("AAPL", 2.0), p("SPX", 3.0), p("TLT", 0.0)],
            PortfolioLimits::default(),
        );
        assert_eq!(
            got,
            Ok(vec![
                CanonicalPosition {
                    instrument: "AAPL".into(),
                    quantity: 2.0
                },
                CanonicalPosition {
                    instrument: "SPX".into(),
                    quantity: 4.0
                },
            ])
        );
    }

    #[test]
    fn the_order_of_positions_does_not_change_the_merged_quantity() {
        let limits = PortfolioLimits::default();
        let forward = canonicalize(&[p("A", 0.1), p("A", 0.2), p("A", 0.3)], limits);
        let backward = canonicalize(&[p("A", 0.3), p("A", 0.2), p("A", 0.1)], limits);
        assert_eq!(forward, backward);
        // Overflow does not depend on the order either.
        let big = [p("A", f64::MAX), p("A", f64::MAX), p("A", -f64::MAX)];
        let mut reordered = big.clone();
        reordered.swap(1, 2);
        assert_eq!(canonicalize(&big, limits), canonicalize(&reordered, limits));
    }

    #[test]
    fn bad_portfolios_are_named() {
        let limits = PortfolioLimits::default();
        assert!(
            canonicalize(&[], limits)
                .unwrap_err()
                .contains("no positions")
        );
        assert!(
            canonicalize(&[p("SPX", f64::NAN)], limits)
                .unwrap_err()
                .contains("finite")
        );
        assert!(
            canonicalize(&[p("SPX", 1.0), p("SPX", -1.0)], limits)
                .unwrap_err()
                .contains("zero")
        );
        assert!(
            canonicalize(&[p("S P X", 1.0)], limits)
                .unwrap_err()
                .contains("' ' is not allowed")
        );
        let long = canonicalize(&[p(&"X".repeat(100_000), 1.0)], limits).unwrap_err();
        assert!(long.contains("at most 64") && long.len() < 200, "{long}");
        assert!(
            canonicalize(&[p("A", f64::MAX), p("A", f64::MAX)], limits)
                .unwrap_err()
                .contains("overflow")
        );
        let tight = PortfolioLimits {
            max_positions: 1,
            max_id_bytes: 8,
        };
        assert!(
            canonicalize(&[p("A", 1.0), p("B", 1.0)], tight)
                .unwrap_err()
                .contains("limit is 1")
        );
    }
}

//! Fixtures shared by the integration tests of the three example models
//! (`es-historical` and `var-parametric` include this file by path).
#![allow(dead_code)]

use std::path::Path;

use riskhost_sdk::rng::SplitMix64;
use riskhost_sdk::{Job, MarketData, Portfolio, Position, PriceSeries, Score};

/// Market data with one series per `(instrument, closes)`, on consecutive
/// dates ending on the as-of date.
pub(crate) fn market(series: &[(&str, &[f64])]) -> MarketData {
    let n = series[0].1.len() as i32;
    MarketData {
        as_of: "2024-03-28".to_owned(),
        dates: (0..n).map(|i| 19_810 - (n - 1) + i).collect(),
        series: series
            .iter()
            .map(|(instrument, closes)| PriceSeries {
                instrument: (*instrument).to_owned(),
                closes: closes.to_vec(),
            })
            .collect(),
    }
}

/// A job holding `(series index, quantity)` positions with parameters
/// `[confidence, horizon_days, lookback_days]`.
pub(crate) fn job(positions: &[(u32, f64)], params: [f64; 3]) -> Job {
    Job {
        portfolio: Portfolio {
            id: "test".to_owned(),
            positions: positions
                .iter()
                .map(|&(series, quantity)| Position { series, quantity })
                .collect(),
        },
        params: params.to_vec(),
        seed: 7,
    }
}

/// The README's worked example: two instruments, six closes, five returns.
///
/// ACME closes 100, 125, 100, 80, 100, 100: returns +0.25, −0.2, −0.2, +0.25, 0.
/// BOLT closes  50,  50,  40, 50,  40,  50: returns 0, −0.2, +0.25, −0.2, +0.25.
pub(crate) fn example_market() -> MarketData {
    market(&[
        ("ACME", &[100.0, 125.0, 100.0, 80.0, 100.0, 100.0]),
        ("BOLT", &[50.0, 50.0, 40.0, 50.0, 40.0, 50.0]),
    ])
}

/// 10 ACME (value 10 × 100 = 1000) and −5 BOLT (value −5 × 50 = −250).
pub(crate) const EXAMPLE_POSITIONS: [(u32, f64); 2] = [(0, 10.0), (1, -5.0)];

/// Random-walk closes for `instruments` instruments (named I00, I01, …),
/// reproducible from `seed`; daily returns are roughly ±2%.
pub(crate) fn random_market(seed: u64, instruments: usize, closes: usize) -> MarketData {
    let mut rng = SplitMix64::new(seed);
    let names: Vec<String> = (0..instruments).map(|i| format!("I{i:02}")).collect();
    let series: Vec<Vec<f64>> = (0..instruments)
        .map(|_| {
            let mut c = 50.0 + 100.0 * rng.next_f64();
            (0..closes)
                .map(|_| {
                    let close = c;
                    c *= 1.0 + 0.02 * rng.next_standard_normal();
                    close
                })
                .collect()
        })
        .collect();
    let pairs: Vec<(&str, &[f64])> = names
        .iter()
        .zip(&series)
        .map(|(n, s)| (n.as_str(), s.as_slice()))
        .collect();
    market(&pairs)
}

/// Random non-zero quantities for every instrument of a market, long and short.
pub(crate) fn random_positions(seed: u64, instruments: usize) -> Vec<(u32, f64)> {
    let mut rng = SplitMix64::new(seed);
    (0..instruments as u32)
        .map(|i| {
            let q = 1.0 + 99.0 * rng.next_f64();
            (i, if rng.next_f64() < 0.3 { -q } else { q })
        })
        .collect()
}

/// `|actual − expected| ≤ 1e-9 × max(|expected|, 1)`: relative for the
/// currency amounts of the tests, absolute near zero.
pub(crate) fn assert_close(actual: f64, expected: f64) {
    assert!(
        (actual - expected).abs() <= 1e-9 * expected.abs().max(1.0),
        "expected {expected}, got {actual}"
    );
}

/// The breakdown has exactly these `(instrument, value)` entries, in order,
/// and they sum to the score's value.
pub(crate) fn assert_breakdown(score: &Score, expected: &[(&str, f64)]) {
    let names: Vec<&str> = score.breakdown.iter().map(|c| c.name.as_str()).collect();
    let expected_names: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, expected_names);
    for (c, (_, value)) in score.breakdown.iter().zip(expected) {
        assert_close(c.value, *value);
    }
    assert_breakdown_sums_to_value(score);
}

pub(crate) fn assert_breakdown_sums_to_value(score: &Score) {
    let sum: f64 = score.breakdown.iter().map(|c| c.value).sum();
    let scale: f64 = score
        .breakdown
        .iter()
        .map(|c| c.value.abs())
        .sum::<f64>()
        .max(1.0);
    assert!(
        (sum - score.value).abs() <= 1e-12 * scale,
        "breakdown sums to {sum}, value is {}",
        score.value
    );
}

/// The `## Conventions` section of a README, whitespace-normalised.
pub(crate) fn readme_conventions(model: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(model)
        .join("README.md");
    let readme = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let start = readme
        .find("## Conventions\n")
        .unwrap_or_else(|| panic!("{} has no `## Conventions` section", path.display()));
    let body = &readme[start + "## Conventions\n".len()..];
    let end = body.find("\n## ").unwrap_or(body.len());
    normalize(&body[..end])
}

/// Collapses every run of whitespace to one space.
pub(crate) fn normalize(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub(crate) const MODELS: [&str; 3] = ["var-historical", "var-parametric", "es-historical"];

//! The statistics of a VaR backtest over a sequence of exception indicators:
//! Kupiec's proportion-of-failures test, Christoffersen's independence and
//! conditional-coverage tests, and the Basel traffic light.
//!
//! Every likelihood uses the limit 0·ln 0 = 0, so no exception, all
//! exceptions and empty transition counts give finite statistics; p-values
//! come from statrs' χ² and binomial distributions.

use serde::Serialize;
use statrs::distribution::{Binomial, ChiSquared, ContinuousCDF, DiscreteCDF};

/// Kupiec's proportion-of-failures likelihood ratio, χ²(1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Kupiec {
    pub lr: f64,
    pub p_value: f64,
}

/// Christoffersen's tests: independence of exceptions, χ²(1), from the
/// day-to-day transition counts, and conditional coverage (Kupiec +
/// independence), χ²(2).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Christoffersen {
    pub lr_ind: f64,
    pub p_value_ind: f64,
    pub lr_cc: f64,
    pub p_value_cc: f64,
    /// Transitions from a day without exception to a day without / with one.
    pub n00: u64,
    pub n01: u64,
    /// Transitions from a day with an exception to a day without / with one.
    pub n10: u64,
    pub n11: u64,
}

/// The Basel zone of an exception count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TrafficLight {
    Green,
    Yellow,
    Red,
}

impl TrafficLight {
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficLight::Green => "green",
            TrafficLight::Yellow => "yellow",
            TrafficLight::Red => "red",
        }
    }
}

/// Everything the tests say about one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Coverage {
    pub observations: u64,
    pub exceptions: u64,
    pub expected_exceptions: f64,
    pub kupiec: Kupiec,
    pub christoffersen: Christoffersen,
    pub traffic_light: TrafficLight,
    /// P(X ≤ exceptions) for X ~ Binomial(observations, 1 − confidence),
    /// the probability the zone is read from.
    pub cumulative_probability: f64,
}

/// The cumulative probability below which a count is green, and below which
/// it is yellow (the Basel Committee's 1996 framework).
pub(crate) const GREEN_BELOW: f64 = 0.95;
pub(crate) const YELLOW_BELOW: f64 = 0.9999;

/// `x · ln y` with the limit 0 · ln 0 = 0.
fn xlny(x: f64, y: f64) -> f64 {
    if x == 0.0 { 0.0 } else { x * y.ln() }
}

/// Upper tail of χ²(k); `lr` is never negative (rounding is clamped).
fn chi2_sf(lr: f64, freedom: f64) -> f64 {
    match ChiSquared::new(freedom) {
        Ok(chi2) => chi2.sf(lr.max(0.0)).clamp(0.0, 1.0),
        Err(_) => f64::NAN,
    }
}

/// −2 (ln L₀ − ln L₁), clamped at 0 against rounding.
fn likelihood_ratio(null: f64, alternative: f64) -> f64 {
    (-2.0 * (null - alternative)).max(0.0)
}

/// Kupiec's POF test of `exceptions` in `observations` against the rate
/// `p = 1 − confidence`. `p` must lie in (0, 1).
pub(crate) fn kupiec(observations: u64, exceptions: u64, p: f64) -> Kupiec {
    let (t, x) = (observations as f64, exceptions as f64);
    let observed = if t > 0.0 { x / t } else { 0.0 };
    let null = xlny(t - x, 1.0 - p) + xlny(x, p);
    let alternative = xlny(t - x, 1.0 - observed) + xlny(x, observed);
    let lr = likelihood_ratio(null, alternative);
    Kupiec {
        lr,
        p_value: chi2_sf(lr, 1.0),
    }
}

/// Christoffersen's independence test on the indicator sequence, plus the
/// conditional-coverage test that adds Kupiec's statistic.
pub(crate) fn christoffersen(exceptions: &[bool], kupiec: &Kupiec) -> Christoffersen {
    let (mut n00, mut n01, mut n10, mut n11) = (0u64, 0u64, 0u64, 0u64);
    for pair in exceptions.windows(2) {
        match (pair[0], pair[1]) {
            (false, false) => n00 += 1,
            (false, true) => n01 += 1,
            (true, false) => n10 += 1,
            (true, true) => n11 += 1,
        }
    }
    let rate = |hits: u64, of: u64| {
        if of == 0 {
            0.0
        } else {
            hits as f64 / of as f64
        }
    };
    let pi0 = rate(n01, n00 + n01);
    let pi1 = rate(n11, n10 + n11);
    let pi = rate(n01 + n11, n00 + n01 + n10 + n11);
    let f = |n: u64| n as f64;
    let null = xlny(f(n00 + n10), 1.0 - pi) + xlny(f(n01 + n11), pi);
    let alternative =
        xlny(f(n00), 1.0 - pi0) + xlny(f(n01), pi0) + xlny(f(n10), 1.0 - pi1) + xlny(f(n11), pi1);
    let lr_ind = likelihood_ratio(null, alternative);
    let lr_cc = kupiec.lr + lr_ind;
    Christoffersen {
        lr_ind,
        p_value_ind: chi2_sf(lr_ind, 1.0),
        lr_cc,
        p_value_cc: chi2_sf(lr_cc, 2.0),
        n00,
        n01,
        n10,
        n11,
    }
}

/// P(X ≤ exceptions), X ~ Binomial(observations, p).
pub(crate) fn cumulative_probability(observations: u64, exceptions: u64, p: f64) -> f64 {
    match Binomial::new(p, observations) {
        Ok(binomial) => binomial.cdf(exceptions),
        Err(_) => f64::NAN,
    }
}

/// The zone of a cumulative probability. At 99 % over 250 days this gives
/// the Basel table: 0–4 green, 5–9 yellow, 10 or more red.
pub(crate) fn traffic_light(cumulative: f64) -> TrafficLight {
    if cumulative < GREEN_BELOW {
        TrafficLight::Green
    } else if cumulative < YELLOW_BELOW {
        TrafficLight::Yellow
    } else {
        TrafficLight::Red
    }
}

/// Every test on one indicator sequence (`true`: the day's loss exceeded
/// its VaR) for a VaR at `confidence`, which must lie in (0, 1).
pub fn coverage(exceptions: &[bool], confidence: f64) -> Coverage {
    let p = 1.0 - confidence;
    let observations = exceptions.len() as u64;
    let count = exceptions.iter().filter(|e| **e).count() as u64;
    let kupiec = kupiec(observations, count, p);
    let christoffersen = christoffersen(exceptions, &kupiec);
    let cumulative = cumulative_probability(observations, count, p);
    Coverage {
        observations,
        exceptions: count,
        expected_exceptions: observations as f64 * p,
        kupiec,
        christoffersen,
        traffic_light: traffic_light(cumulative),
        cumulative_probability: cumulative,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequence(len: usize, at: &[usize]) -> Vec<bool> {
        (0..len).map(|i| at.contains(&i)).collect()
    }

    #[test]
    fn the_basel_zones_at_99_percent_over_250_days() {
        let zone = |x| traffic_light(cumulative_probability(250, x, 0.01));
        for x in 0..=4 {
            assert_eq!(zone(x), TrafficLight::Green, "{x}");
        }
        for x in 5..=9 {
            assert_eq!(zone(x), TrafficLight::Yellow, "{x}");
        }
        for x in [10, 11, 50, 250] {
            assert_eq!(zone(x), TrafficLight::Red, "{x}");
        }
    }

    #[test]
    fn no_exception_and_only_exceptions_give_finite_statistics() {
        for exceptions in [sequence(250, &[]), vec![true; 250], vec![false; 2]] {
            let c = coverage(&exceptions, 0.99);
            for v in [
                c.kupiec.lr,
                c.kupiec.p_value,
                c.christoffersen.lr_ind,
                c.christoffersen.p_value_ind,
                c.christoffersen.lr_cc,
                c.christoffersen.p_value_cc,
                c.cumulative_probability,
            ] {
                assert!(v.is_finite(), "{c:?}");
            }
        }
        // x = 0: LR = −2 T ln(1 − p); x = T: LR = −2 T ln p.
        let none = coverage(&sequence(250, &[]), 0.99);
        assert!((none.kupiec.lr - (-2.0 * 250.0 * 0.99_f64.ln())).abs() < 1e-9);
        let all = coverage(&[true; 250], 0.99);
        assert!((all.kupiec.lr - (-2.0 * 250.0 * 0.01_f64.ln())).abs() < 1e-9);
        assert_eq!(all.traffic_light, TrafficLight::Red);
        assert_eq!(all.christoffersen.n11, 249);
    }

    #[test]
    fn clustered_exceptions_fail_independence_where_spread_ones_pass() {
        let spread = coverage(&sequence(250, &[20, 50, 80, 110, 140, 170, 200, 230]), 0.99);
        let clustered = coverage(
            &sequence(250, &[100, 101, 102, 103, 104, 105, 106, 107]),
            0.99,
        );
        assert_eq!(spread.kupiec, clustered.kupiec);
        assert_eq!(clustered.christoffersen.n11, 7);
        assert!(
            clustered.christoffersen.p_value_ind < 0.001,
            "{clustered:?}"
        );
        assert!(spread.christoffersen.p_value_ind > 0.3, "{spread:?}");
    }
}

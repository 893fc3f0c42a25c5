//! var-parametric against numbers computed by hand.
//!
//! The example (also in README.md): positions 10 ACME and −5 BOLT, values
//! v = (10 × 100, −5 × 50) = (1000, −250), over five returns:
//!
//!   r_ACME = +0.25, −0.20, −0.20, +0.25, 0      mean 0.02
//!   r_BOLT =  0,    −0.20, +0.25, −0.20, +0.25  mean 0.02
//!
//! Deviations from the means:
//!   ACME  0.23, −0.22, −0.22,  0.23, −0.02
//!   BOLT −0.02, −0.22,  0.23, −0.22,  0.23
//! var(ACME) = var(BOLT) = (2 × 0.0529 + 2 × 0.0484 + 0.0004) / 4 = 0.203 / 4 = 0.05075
//! cov = (−0.0046 + 0.0484 − 0.0506 − 0.0506 − 0.0046) / 4 = −0.062 / 4 = −0.0155
//!
//! Σv   = (1000 × 0.05075 + 250 × 0.0155, −1000 × 0.0155 − 250 × 0.05075)
//!      = (54.625, −28.1875)
//! vᵀΣv = 1000 × 54.625 + 250 × 28.1875 = 54625 + 7046.875 = 61671.875
//! (check: PnL = 250, −150, −262.5, 300, −62.5, mean 15, squared deviations
//! 55225 + 27225 + 77006.25 + 81225 + 6006.25 = 246687.5, / 4 = 61671.875.)
//! VaR = z σ_p √h with σ_p = √61671.875 ≈ 248.338; contributions
//! z √h × (54625, 7046.875) / σ_p.

// One fixture file serves the three example models.
#[path = "../../var-historical/tests/common/mod.rs"]
mod common;

use common::*;
use riskhost_sdk::{BatchContext, MarketData, Model, ModelError, Score, Unit, math};
use var_parametric::VarParametric;

const Z_99: f64 = 2.3263478740408408;
const Z_975: f64 = 1.959963984540054;

fn score(market: &MarketData, positions: &[(u32, f64)], params: [f64; 3]) -> Score {
    VarParametric::score(&BatchContext::new(market), &job(positions, params))
        .expect("the job scores")
}

fn error(market: &MarketData, positions: &[(u32, f64)], params: [f64; 3]) -> ModelError {
    VarParametric::score(&BatchContext::new(market), &job(positions, params))
        .expect_err("the job fails")
}

/// The host's fixture `tests/fixtures/small-prices.csv` (hand-computed in
/// `tests/it/api.rs`): AAA returns +10 %, −10 %, +10 %, −5 %, +5 %; BBB −2 %,
/// +3 %, −2 %, −2 %, +3 %; 10 AAA (worth 1086.2775) and −20 BBB (worth
/// −998.5105928). Losses per scenario: −128.597961856, 138.583067784,
/// −128.597961856, 34.343663144, −24.358557216; sorted, rank 4 of 5 (the
/// type-1 rank at 80 %) is 34.343663144 (scenario 4).
fn fixture_market() -> MarketData {
    market(&[
        ("AAA", &[100.0, 110.0, 99.0, 108.9, 103.455, 108.62775]),
        ("BBB", &[50.0, 49.0, 50.47, 49.4606, 48.471388, 49.92552964]),
    ])
}

#[test]
fn two_instruments_with_a_hand_computed_covariance() {
    let s = score(&example_market(), &EXAMPLE_POSITIONS, [0.99, 1.0, 5.0]);
    let sigma = 61671.875f64.sqrt();
    assert_eq!(s.unit, Unit::CurrencyAmount);
    assert_close(s.value, Z_99 * sigma);
    assert_close(s.value, 577.721_106_47); // 2.32634787 × 248.33822702
    assert_breakdown(
        &s,
        &[
            ("ACME", Z_99 * 54625.0 / sigma),
            ("BOLT", Z_99 * 7046.875 / sigma),
        ],
    );
}

#[test]
fn one_instrument_is_z_sigma_times_the_absolute_value() {
    // ACME alone: σ = √0.05075, |v| = 1000, long or short.
    for quantity in [10.0, -10.0] {
        let s = score(&example_market(), &[(0, quantity)], [0.99, 1.0, 5.0]);
        assert_close(s.value, Z_99 * 0.05075f64.sqrt() * 1000.0);
        assert_breakdown(&s, &[("ACME", s.value)]);
    }
    // lookback 4 keeps −0.2, −0.2, 0.25, 0: mean −0.0375, deviations
    // −0.1625, −0.1625, 0.2875, 0.0375; squares sum to 0.136875; / 3 = 0.045625.
    let s = score(&example_market(), &[(0, 10.0)], [0.975, 1.0, 4.0]);
    assert_close(s.value, Z_975 * 0.045625f64.sqrt() * 1000.0);
    // BOLT alone, 4 units: v = 200, σ = √0.05075.
    let s = score(&example_market(), &[(1, 4.0)], [0.975, 1.0, 5.0]);
    assert_close(s.value, Z_975 * 0.05075f64.sqrt() * 200.0);
}

#[test]
fn matches_the_sdk_covariance_matrix() {
    // vᵀΣv and Σv from math::covariance_matrix, against the model's
    // P&L-based computation, on random data of the benchmark's shape.
    for (instruments, closes, lookback, confidence) in [
        (6, 61, 60.0, 0.99),
        (50, 501, 500.0, 0.975),
        (50, 501, 2.0, 0.95),
    ] {
        let m = random_market(31 + instruments as u64, instruments, closes);
        let positions = random_positions(32, instruments);
        let n = lookback as usize;
        let returns: Vec<Vec<f64>> = m
            .series
            .iter()
            .map(|s| {
                let r = math::simple_returns(&s.closes);
                r[r.len() - n..].to_vec()
            })
            .collect();
        let slices: Vec<&[f64]> = returns.iter().map(Vec::as_slice).collect();
        let cov = math::covariance_matrix(&slices);
        let v: Vec<f64> = positions
            .iter()
            .map(|&(i, q)| q * m.series[i as usize].closes[closes - 1])
            .collect();
        let sigma_v: Vec<f64> = (0..instruments)
            .map(|i| {
                (0..instruments)
                    .map(|j| cov[i * instruments + j] * v[j])
                    .sum()
            })
            .collect();
        let variance: f64 = v.iter().zip(&sigma_v).map(|(a, b)| a * b).sum();
        let z = math::normal_quantile(confidence);

        let s = score(&m, &positions, [confidence, 9.0, lookback]);
        let sigma = variance.sqrt();
        let expected = z * sigma * 3.0;
        assert!(
            (s.value - expected).abs() <= 1e-9 * expected,
            "{instruments}×{lookback}: {} vs {expected}",
            s.value
        );
        for (i, c) in s.breakdown.iter().enumerate() {
            let expected = z * 3.0 * v[i] * sigma_v[i] / sigma;
            assert!(
                (c.value - expected).abs() <= 1e-9 * s.value,
                "contribution {i}: {} vs {expected}",
                c.value
            );
        }
        assert_breakdown_sums_to_value(&s);
    }
}

#[test]
fn the_horizon_scales_by_its_square_root() {
    let one = score(&example_market(), &EXAMPLE_POSITIONS, [0.99, 1.0, 5.0]);
    let four = score(&example_market(), &EXAMPLE_POSITIONS, [0.99, 4.0, 5.0]);
    assert_close(four.value, 2.0 * one.value);
    for (a, b) in four.breakdown.iter().zip(&one.breakdown) {
        assert_close(a.value, 2.0 * b.value);
    }
    let ten = score(&example_market(), &EXAMPLE_POSITIONS, [0.99, 10.0, 5.0]);
    assert_close(ten.value, 10f64.sqrt() * one.value);
    assert_breakdown_sums_to_value(&ten);
}

#[test]
fn the_confidence_enters_through_the_normal_quantile() {
    let at_99 = score(&example_market(), &EXAMPLE_POSITIONS, [0.99, 1.0, 5.0]).value;
    let at_975 = score(&example_market(), &EXAMPLE_POSITIONS, [0.975, 1.0, 5.0]).value;
    assert_close(at_975, at_99 * Z_975 / Z_99);
    // z(0.5) = 0: the median loss of a zero-mean normal.
    let at_50 = score(&example_market(), &EXAMPLE_POSITIONS, [0.5, 1.0, 5.0]);
    assert_eq!(at_50.value, 0.0);
    assert!(at_50.breakdown.iter().all(|c| c.value == 0.0));
}

#[test]
fn zero_variance_gives_zero_without_dividing_by_zero() {
    // FLAT never moves: every return is 0, so σ_p = 0.
    let m = market(&[
        ("ACME", &[100.0, 125.0, 100.0, 80.0, 100.0, 100.0]),
        ("FLAT", &[20.0; 6]),
        ("TWIN", &[100.0, 125.0, 100.0, 80.0, 100.0, 100.0]),
    ]);
    let s = score(&m, &[(1, 7.0)], [0.99, 1.0, 5.0]);
    assert_eq!(s.value, 0.0);
    assert_breakdown(&s, &[("FLAT", 0.0)]);
    // 10 ACME against −10 TWIN (same returns) hedge exactly: PnL[t] = 0.
    let s = score(&m, &[(0, 10.0), (2, -10.0)], [0.99, 4.0, 5.0]);
    assert_eq!(s.value, 0.0);
    assert_breakdown(&s, &[("ACME", 0.0), ("TWIN", 0.0)]);
    // ...while either leg alone carries risk.
    assert!(score(&m, &[(0, 10.0)], [0.99, 1.0, 5.0]).value > 0.0);
}

#[test]
fn a_lookback_longer_than_the_history_is_insufficient_data() {
    let e = error(&example_market(), &EXAMPLE_POSITIONS, [0.99, 1.0, 6.0]);
    assert!(matches!(e, ModelError::InsufficientData(_)), "{e:?}");
    assert!(e.message().contains("ACME"), "{}", e.message());
    let e = error(&example_market(), &[(1, 1.0)], [0.99, 1.0, 250.0]);
    assert!(matches!(e, ModelError::InsufficientData(_)), "{e:?}");
    assert!(e.message().contains("BOLT"), "{}", e.message());
}

#[test]
fn invalid_parameters_are_rejected() {
    let m = example_market();
    for params in [
        [1.0, 1.0, 5.0],
        [0.0, 1.0, 5.0],
        [f64::NAN, 1.0, 5.0],
        [0.99, 0.0, 5.0],
        [0.99, 1.5, 5.0],
        [0.99, f64::INFINITY, 5.0],
        [0.99, 1.0, 1.0],
        [0.99, 1.0, 4.5],
    ] {
        let e = error(&m, &EXAMPLE_POSITIONS, params);
        assert!(
            matches!(e, ModelError::InvalidInput(_)),
            "{params:?}: {e:?}"
        );
    }
    let e = error(&m, &EXAMPLE_POSITIONS, [0.99, 0.5, 5.0]);
    assert!(e.message().contains("horizon_days"), "{}", e.message());

    let ctx = BatchContext::new(&m);
    let mut j = job(&EXAMPLE_POSITIONS, [0.99, 1.0, 5.0]);
    j.params.clear();
    let e = VarParametric::score(&ctx, &j).unwrap_err();
    assert!(matches!(e, ModelError::InvalidInput(_)), "{e:?}");
}

#[test]
fn bad_portfolios_are_invalid_input() {
    let m = example_market();
    let e = error(&m, &[], [0.99, 1.0, 5.0]);
    assert!(matches!(e, ModelError::InvalidInput(_)), "{e:?}");
    let e = error(&m, &[(2, 1.0)], [0.99, 1.0, 5.0]);
    assert!(matches!(e, ModelError::InvalidInput(_)), "{e:?}");
}

#[test]
fn a_batch_scores_each_job_as_if_alone_in_order() {
    let m = example_market();
    let jobs = vec![
        job(&EXAMPLE_POSITIONS, [0.99, 1.0, 5.0]),
        job(&[(0, -10.0)], [0.975, 4.0, 5.0]),
        job(&EXAMPLE_POSITIONS, [0.99, 1.0, 6.0]), // insufficient data
        job(&[(1, 3.0)], [0.95, 1.0, 4.0]),
        job(&EXAMPLE_POSITIONS, [0.9, 9.0, 3.0]),
    ];
    let batch = VarParametric::score_batch(&m, &jobs);
    assert_eq!(batch.len(), jobs.len());
    for (got, j) in batch.iter().zip(&jobs) {
        let alone = VarParametric::score(&BatchContext::new(&m), j);
        assert_eq!(got, &alone);
    }
    assert_close(batch[0].as_ref().unwrap().value, Z_99 * 61671.875f64.sqrt());
    assert!(batch[2].is_err());
    let reversed: Vec<_> = jobs.iter().rev().cloned().collect();
    let mut again = VarParametric::score_batch(&m, &reversed);
    again.reverse();
    assert_eq!(again, batch);
}

#[test]
fn info_describes_the_parameters_and_data_needs() {
    let info = VarParametric::info();
    assert_eq!(info.name, "var-parametric");
    assert_eq!(info.version, "1.0.0");
    let params: Vec<_> = info
        .params
        .iter()
        .map(|p| (p.name.as_str(), p.default_value, p.min, p.max, p.integer))
        .collect();
    assert_eq!(
        params,
        [
            ("confidence", 0.99, 0.5, 0.9999, false),
            ("horizon_days", 1.0, 1.0, 250.0, true),
            ("lookback_days", 250.0, 2.0, 5000.0, true),
        ]
    );
    assert_eq!(info.data.lookback_days, 250);
    assert_eq!(info.data.lookback_param.as_deref(), Some("lookback_days"));
    assert!(info.description.contains("zero mean"));
}

#[test]
fn conventions_are_identical_in_every_model_and_readme() {
    let ours = normalize(var_parametric::CONVENTIONS);
    assert!(normalize(&VarParametric::info().description).contains(&ours));
    for model in MODELS {
        assert_eq!(readme_conventions(model), ours, "{model}/README.md");
    }
}

#[test]
fn the_host_fixture_gives_the_same_numbers() {
    // Σ = [[0.00825, −0.001125], [−0.001125, 0.00075]] (sample, n − 1),
    // σ_p = 113.68043714426, z(0.8) = 0.8416212335729143.
    let s = score(&fixture_market(), &[(0, 10.0), (1, -20.0)], [0.8, 1.0, 5.0]);
    assert_close(s.value, 95.67586974246049);
    assert_breakdown(
        &s,
        &[("AAA", 81.10591643911762), ("BBB", 14.569953303342869)],
    );
}

#[test]
fn the_nan_head_before_a_first_close_is_never_used() {
    // NEWCO started trading on d2; the host sends NaN before its first close.
    // Its three returns (+0.25, −0.2, +0.25) equal BOLT's last three.
    let m = market(&[
        ("ACME", &[100.0, 125.0, 100.0, 80.0, 100.0, 100.0]),
        ("BOLT", &[50.0, 50.0, 40.0, 50.0, 40.0, 50.0]),
        ("NEWCO", &[f64::NAN, f64::NAN, 40.0, 50.0, 40.0, 50.0]),
    ]);
    let with_newco = score(&m, &[(0, 10.0), (2, -5.0)], [0.6, 1.0, 3.0]);
    let with_bolt = score(&m, &[(0, 10.0), (1, -5.0)], [0.6, 1.0, 3.0]);
    assert!(with_newco.value.is_finite());
    assert_eq!(with_newco.value, with_bolt.value);
    assert_eq!(with_newco.breakdown[1].value, with_bolt.breakdown[1].value);
    assert_eq!(with_newco.breakdown[1].name, "NEWCO");
    // A fourth return would reach into the NaN head.
    let e = error(&m, &[(0, 10.0), (2, -5.0)], [0.6, 1.0, 4.0]);
    assert!(matches!(e, ModelError::InsufficientData(_)), "{e:?}");
    assert!(e.message().contains("NEWCO"), "{}", e.message());
    // A job that does not hold NEWCO may still look back 5 days.
    assert!(
        score(&m, &EXAMPLE_POSITIONS, [0.6, 1.0, 5.0])
            .value
            .is_finite()
    );
}

//! var-historical against numbers computed by hand.
//!
//! The example (also in README.md): positions 10 ACME and −5 BOLT, values
//! v = (10 × 100, −5 × 50) = (1000, −250). Returns and scenario losses
//! `L[t] = −(1000 r_ACME + (−250) r_BOLT)`:
//!
//! | t | r_ACME | r_BOLT | −v·r ACME | −v·r BOLT | L[t]   |
//! |---|--------|--------|-----------|-----------|--------|
//! | 1 | +0.25  |  0     |  −250     |    0      | −250   |
//! | 2 | −0.20  | −0.20  |   200     |  −50      |  150   |
//! | 3 | −0.20  | +0.25  |   200     |  62.5     |  262.5 |
//! | 4 | +0.25  | −0.20  |  −250     |  −50      | −300   |
//! | 5 |  0     | +0.25  |     0     |  62.5     |  62.5  |
//!
//! Sorted losses (rank: loss, scenario): 1: −300 (t4), 2: −250 (t1),
//! 3: 62.5 (t5), 4: 150 (t2), 5: 262.5 (t3).

mod common;

use common::*;
use riskhost_sdk::{BatchContext, MarketData, Model, ModelError, Score, Unit, math};
use var_historical::VarHistorical;

fn score(market: &MarketData, positions: &[(u32, f64)], params: [f64; 3]) -> Score {
    VarHistorical::score(&BatchContext::new(market), &job(positions, params))
        .expect("the job scores")
}

fn error(market: &MarketData, positions: &[(u32, f64)], params: [f64; 3]) -> ModelError {
    VarHistorical::score(&BatchContext::new(market), &job(positions, params))
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
fn rank_4_of_5_at_confidence_0_8() {
    // k = ⌈0.8 × 5⌉ = 4 → L(4) = 150, scenario t2.
    let s = score(&example_market(), &EXAMPLE_POSITIONS, [0.8, 1.0, 5.0]);
    assert_eq!(s.unit, Unit::CurrencyAmount);
    assert_close(s.value, 150.0);
    assert_breakdown(&s, &[("ACME", 200.0), ("BOLT", -50.0)]);
}

#[test]
fn the_largest_loss_at_high_confidence() {
    // k = ⌈0.9 × 5⌉ = ⌈4.5⌉ = 5 and ⌈0.99 × 5⌉ = ⌈4.95⌉ = 5 → L(5) = 262.5 (t3).
    for confidence in [0.9, 0.99] {
        let s = score(
            &example_market(),
            &EXAMPLE_POSITIONS,
            [confidence, 1.0, 5.0],
        );
        assert_close(s.value, 262.5);
        assert_breakdown(&s, &[("ACME", 200.0), ("BOLT", 62.5)]);
    }
}

#[test]
fn rank_3_of_5_at_confidence_0_6_and_0_5() {
    // ⌈0.6 × 5⌉ = 3 and ⌈0.5 × 5⌉ = ⌈2.5⌉ = 3 → L(3) = 62.5 (t5).
    for confidence in [0.6, 0.5] {
        let s = score(
            &example_market(),
            &EXAMPLE_POSITIONS,
            [confidence, 1.0, 5.0],
        );
        assert_close(s.value, 62.5);
        assert_breakdown(&s, &[("ACME", 0.0), ("BOLT", 62.5)]);
    }
}

#[test]
fn a_var_in_the_gains_is_negative_not_clamped() {
    // ⌈0.4 × 5⌉ = 2 → L(2) = −250 (t1), a gain.
    let s = score(&example_market(), &EXAMPLE_POSITIONS, [0.4, 1.0, 5.0]);
    assert_close(s.value, -250.0);
    assert_breakdown(&s, &[("ACME", -250.0), ("BOLT", 0.0)]);
}

#[test]
fn the_lookback_takes_the_most_recent_returns() {
    // lookback 4 keeps t2..t5: losses 150, 262.5, −300, 62.5;
    // sorted −300, 62.5, 150, 262.5.
    // ⌈0.75 × 4⌉ = 3 → 150 (t2); ⌈0.8 × 4⌉ = ⌈3.2⌉ = 4 → 262.5 (t3).
    let s = score(&example_market(), &EXAMPLE_POSITIONS, [0.75, 1.0, 4.0]);
    assert_close(s.value, 150.0);
    assert_breakdown(&s, &[("ACME", 200.0), ("BOLT", -50.0)]);
    let s = score(&example_market(), &EXAMPLE_POSITIONS, [0.8, 1.0, 4.0]);
    assert_close(s.value, 262.5);
    // lookback 2 keeps t4, t5: losses −300, 62.5; ⌈0.5 × 2⌉ = 1 → −300 (t4).
    let s = score(&example_market(), &EXAMPLE_POSITIONS, [0.5, 1.0, 2.0]);
    assert_close(s.value, -300.0);
    assert_breakdown(&s, &[("ACME", -250.0), ("BOLT", -50.0)]);
}

#[test]
fn the_horizon_scales_by_its_square_root() {
    // Horizon 4: × √4 = 2 → 300, contributions 400 and −100.
    let s = score(&example_market(), &EXAMPLE_POSITIONS, [0.8, 4.0, 5.0]);
    assert_close(s.value, 300.0);
    assert_breakdown(&s, &[("ACME", 400.0), ("BOLT", -100.0)]);
    // Horizon 10: × √10.
    let s = score(&example_market(), &EXAMPLE_POSITIONS, [0.8, 10.0, 5.0]);
    assert_close(s.value, 150.0 * 10f64.sqrt());
    assert_breakdown(
        &s,
        &[
            ("ACME", 200.0 * 10f64.sqrt()),
            ("BOLT", -50.0 * 10f64.sqrt()),
        ],
    );
}

#[test]
fn a_short_single_position() {
    // −10 ACME: v = −1000, L[t] = 1000 r_ACME = 250, −200, −200, 250, 0;
    // sorted −200, −200, 0, 250 (t1), 250 (t4); k = 4 → 250.
    let s = score(&example_market(), &[(0, -10.0)], [0.8, 1.0, 5.0]);
    assert_close(s.value, 250.0);
    assert_breakdown(&s, &[("ACME", 250.0)]);
}

#[test]
fn ties_pick_the_oldest_scenario_of_equal_loss() {
    // Dyadic numbers, so the two largest losses are equal bit for bit.
    // ACME closes 100, 75, 75, 93.75, 93.75: returns −0.25, 0, +0.25, 0.
    // BOLT closes 50, 50, 100, 100, 100:     returns 0, +1, 0, 0.
    // v = (10 × 93.75, −2.34375 × 100) = (937.5, −234.375).
    // Losses: t1 = 234.375 (all ACME), t2 = 234.375 (all BOLT),
    //         t3 = −234.375, t4 = 0.
    // Sorted by (loss, scenario): t3, t4, t1, t2.
    let market = market(&[
        ("ACME", &[100.0, 75.0, 75.0, 93.75, 93.75]),
        ("BOLT", &[50.0, 50.0, 100.0, 100.0, 100.0]),
    ]);
    let positions = [(0, 10.0), (1, -2.34375)];
    // ⌈0.75 × 4⌉ = 3 → t1.
    let s = score(&market, &positions, [0.75, 1.0, 4.0]);
    assert_eq!(s.value, 234.375);
    assert_breakdown(&s, &[("ACME", 234.375), ("BOLT", 0.0)]);
    // ⌈0.9 × 4⌉ = 4 → t2: same loss, other breakdown.
    let s = score(&market, &positions, [0.9, 1.0, 4.0]);
    assert_eq!(s.value, 234.375);
    assert_breakdown(&s, &[("ACME", 0.0), ("BOLT", 234.375)]);
}

#[test]
fn a_lookback_longer_than_the_history_is_insufficient_data() {
    // Six closes hold five returns.
    let e = error(&example_market(), &EXAMPLE_POSITIONS, [0.99, 1.0, 6.0]);
    assert!(matches!(e, ModelError::InsufficientData(_)), "{e:?}");
    assert!(e.message().contains("ACME"), "{}", e.message());
    // The instrument named is the one that is short: here only BOLT is held.
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
    let e = error(&m, &EXAMPLE_POSITIONS, [0.99, 1.0, 1.0]);
    assert!(e.message().contains("lookback_days"), "{}", e.message());

    let ctx = BatchContext::new(&m);
    let mut j = job(&EXAMPLE_POSITIONS, [0.99, 1.0, 5.0]);
    j.params.pop();
    let e = VarHistorical::score(&ctx, &j).unwrap_err();
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
fn matches_the_empirical_quantile_of_independently_computed_losses() {
    // 50 instruments, 501 closes, lookback 500: the benchmark's shape.
    let m = random_market(11, 50, 501);
    let positions = random_positions(12, 50);
    let returns: Vec<Vec<f64>> = m
        .series
        .iter()
        .map(|s| math::simple_returns(&s.closes))
        .collect();
    for (confidence, horizon, lookback) in
        [(0.99, 1.0, 500.0), (0.95, 10.0, 500.0), (0.975, 1.0, 250.0)]
    {
        let n = lookback as usize;
        let losses: Vec<f64> = (0..n)
            .map(|t| {
                -positions
                    .iter()
                    .map(|&(i, q)| {
                        let r = &returns[i as usize];
                        q * m.series[i as usize].closes[500] * r[r.len() - n + t]
                    })
                    .sum::<f64>()
            })
            .collect();
        let s = score(&m, &positions, [confidence, horizon, lookback]);
        let expected = math::empirical_quantile(&losses, confidence) * horizon.sqrt();
        assert!(
            (s.value - expected).abs() <= 1e-9 * expected.abs(),
            "{confidence}: {} vs {expected}",
            s.value
        );
        assert_eq!(s.breakdown.len(), 50);
        assert_breakdown_sums_to_value(&s);
    }
}

#[test]
fn a_batch_scores_each_job_as_if_alone_in_order() {
    let m = example_market();
    let jobs = vec![
        job(&EXAMPLE_POSITIONS, [0.8, 1.0, 5.0]),
        job(&[(0, -10.0)], [0.99, 4.0, 5.0]),
        job(&EXAMPLE_POSITIONS, [0.99, 1.0, 6.0]), // insufficient data
        job(&[(1, 3.0)], [0.75, 1.0, 4.0]),
        job(&EXAMPLE_POSITIONS, [0.4, 9.0, 3.0]),
    ];
    let batch = VarHistorical::score_batch(&m, &jobs);
    assert_eq!(batch.len(), jobs.len());
    for (got, j) in batch.iter().zip(&jobs) {
        let alone = VarHistorical::score(&BatchContext::new(&m), j);
        assert_eq!(got, &alone);
    }
    assert_close(batch[0].as_ref().unwrap().value, 150.0);
    assert!(batch[2].is_err());
    // The same jobs in reverse order give the same results, reversed.
    let reversed: Vec<_> = jobs.iter().rev().cloned().collect();
    let mut again = VarHistorical::score_batch(&m, &reversed);
    again.reverse();
    assert_eq!(again, batch);
}

#[test]
fn info_describes_the_parameters_and_data_needs() {
    let info = VarHistorical::info();
    assert_eq!(info.name, "var-historical");
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
    assert!(info.description.contains("type-1 empirical quantile"));
    // The defaults score the example's own data once it is long enough.
    let m = random_market(3, 2, 251);
    let defaults: [f64; 3] = [0.99, 1.0, 250.0];
    let s = score(&m, &[(0, 1.0), (1, -1.0)], defaults);
    assert!(s.value.is_finite());
}

#[test]
fn conventions_are_identical_in_every_model_and_readme() {
    let ours = normalize(var_historical::CONVENTIONS);
    assert!(normalize(&VarHistorical::info().description).contains(&ours));
    for model in MODELS {
        assert_eq!(readme_conventions(model), ours, "{model}/README.md");
    }
}

#[test]
fn the_host_fixture_gives_the_same_numbers() {
    // Scenario 4: AAA −5 % → −1086.2775 × −0.05 = 54.313875;
    // BBB −2 % → 998.5105928 × −0.02 = −19.970211856.
    let s = score(&fixture_market(), &[(0, 10.0), (1, -20.0)], [0.8, 1.0, 5.0]);
    assert_close(s.value, 34.343663144);
    assert_breakdown(&s, &[("AAA", 54.313875), ("BBB", -19.970211856)]);
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
    // Losses t3..t5: 262.5, −300, 62.5; ⌈0.6 × 3⌉ = 2 → 62.5 (t5).
    assert_close(with_newco.value, 62.5);
    assert_breakdown(&with_newco, &[("ACME", 0.0), ("NEWCO", 62.5)]);
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

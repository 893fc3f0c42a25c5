//! Tested statistics helpers for risk models.
//!
//! The functions here are the numerical building blocks of the example
//! models (historical VaR, historical expected shortfall, delta-normal VaR):
//! returns from closes, sample moments, the type-1 empirical quantile and its
//! tail mean, and the inverse standard normal CDF. Each function documents its
//! exact definition, so a model's description can point at it and a quant can
//! reproduce a score by hand.
//!
//! Conventions shared by every function:
//! - Sample statistics divide by `n − 1` (Bessel's correction).
//! - Means and (co)variances are computed in two passes (mean first, then
//!   centred products), which stays accurate for returns of similar size.
//! - Functions never allocate more than one copy of their input.

/// Simple (arithmetic) returns of a close series, oldest first:
/// `r[t-1] = closes[t] / closes[t-1] − 1` for `t = 1..n`.
///
/// Returns `n − 1` values, and an empty vector when `closes` has fewer than
/// two values. Closes are expected to be finite and > 0; a NaN close (the
/// host's marker for a date before an instrument's first close) gives NaN
/// returns on both sides of it, and a zero close an infinite or NaN return.
pub fn simple_returns(closes: &[f64]) -> Vec<f64> {
    let n = closes.len().saturating_sub(1);
    let mut returns = vec![0.0_f64; n];
    if n > 0 {
        for_each_lane(&mut returns, &closes[1..], &closes[..n], |_, next, prev| {
            next / prev - 1.0
        });
    }
    returns
}

/// `acc[t] += scale * x[t]` over the common length of `acc` and `x`.
///
/// Bit for bit the plain loop (no fused multiply-add, same order per
/// element), but eight elements per loop trip: see [`for_each_lane`].
pub fn add_scaled(acc: &mut [f64], scale: f64, x: &[f64]) {
    for_each_lane(acc, x, x, |a, y, _| a + scale * y);
}

/// `acc[t] -= scale * x[t]` over the common length of `acc` and `x`; bit for
/// bit the plain loop, eight elements per loop trip.
pub fn sub_scaled(acc: &mut [f64], scale: f64, x: &[f64]) {
    for_each_lane(acc, x, x, |a, y, _| a - scale * y);
}

/// `out[t] = f(out[t], a[t], b[t])` over the common length, eight elements
/// per loop trip.
///
/// Why eight: wasmtime enforces call deadlines with a check on every loop
/// back-edge, and Cranelift spills the loop's state around that check. Eight
/// elements per trip pay that once per eight instead of once per element,
/// and give the `simd128` build whole vectors to work on (BENCHMARKS.md,
/// "Analysis"). Natively it costs nothing: LLVM unrolls such loops anyway.
#[inline(always)]
fn for_each_lane(out: &mut [f64], a: &[f64], b: &[f64], f: impl Fn(f64, f64, f64) -> f64) {
    let n = out.len().min(a.len()).min(b.len());
    let (out8, out_rest) = out[..n].as_chunks_mut::<8>();
    let (a8, a_rest) = a[..n].as_chunks::<8>();
    let (b8, b_rest) = b[..n].as_chunks::<8>();
    for ((o, x), y) in out8.iter_mut().zip(a8).zip(b8) {
        for k in 0..8 {
            o[k] = f(o[k], x[k], y[k]);
        }
    }
    for ((o, x), y) in out_rest.iter_mut().zip(a_rest).zip(b_rest) {
        *o = f(*o, *x, *y);
    }
}

/// Arithmetic mean `Σ xs / n`.
///
/// NaN when `xs` is empty (0 / 0).
pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Sample variance `Σ (x − x̄)² / (n − 1)`, computed in two passes.
///
/// NaN when `xs` has fewer than two values (the sample variance is undefined).
/// Equal, bit for bit, to `covariance(xs, xs)`.
pub fn variance(xs: &[f64]) -> f64 {
    covariance(xs, xs)
}

/// Sample covariance `Σ (a_t − ā)(b_t − b̄) / (n − 1)`, computed in two passes.
///
/// NaN when the series have fewer than two values.
///
/// # Panics
///
/// When `a` and `b` have different lengths: the series must be aligned
/// observation by observation, and silently truncating one would hide a
/// misalignment bug.
pub fn covariance(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(
        a.len(),
        b.len(),
        "covariance of series of different lengths ({} and {})",
        a.len(),
        b.len()
    );
    if a.len() < 2 {
        return f64::NAN;
    }
    centred_cross_sum(a, mean(a), b, mean(b)) / (a.len() - 1) as f64
}

/// `Σ (a_t − ma)(b_t − mb)` over equally long slices.
fn centred_cross_sum(a: &[f64], ma: f64, b: &[f64], mb: f64) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum()
}

/// Sample covariance matrix of `m` aligned series, row-major `m × m`:
/// element `[i * m + j]` is `covariance(series[i], series[j])` (bit for bit,
/// so the diagonal holds the sample variances and the matrix is exactly
/// symmetric).
///
/// Returns an empty vector for no series, and NaN entries when the series have
/// fewer than two observations.
///
/// # Panics
///
/// When the series do not all have the same length.
pub fn covariance_matrix(series: &[&[f64]]) -> Vec<f64> {
    let m = series.len();
    let Some(first) = series.first() else {
        return Vec::new();
    };
    let n = first.len();
    for (i, s) in series.iter().enumerate() {
        assert_eq!(
            s.len(),
            n,
            "covariance_matrix: series {i} has {} observations, series 0 has {n}",
            s.len()
        );
    }
    if n < 2 {
        return vec![f64::NAN; m * m];
    }
    let means: Vec<f64> = series.iter().map(|s| mean(s)).collect();
    let denominator = (n - 1) as f64;
    let mut out = vec![0.0; m * m];
    for i in 0..m {
        for j in i..m {
            let c = centred_cross_sum(series[i], means[i], series[j], means[j]) / denominator;
            out[i * m + j] = c;
            out[j * m + i] = c;
        }
    }
    out
}

/// The 1-based rank `k` of the type-1 quantile (inverse of the empirical CDF,
/// Hyndman & Fan 1996 definition 1) of `n` observations at `confidence`:
/// `k = ⌈confidence · n⌉`, clamped to `[1, n]`.
///
/// The ceiling is taken of `confidence · n − 1e-9`, so that a product that is
/// an integer in exact arithmetic but lands just above it in floating point
/// (e.g. `0.55 × 100 = 55.00000000000001`) gives that integer (55), not the
/// next one. Examples: `(250, 0.99) → 248`, `(500, 0.95) → 475`,
/// `(100, 0.99) → 99`, `(5, 0.8) → 4`.
///
/// A `confidence` at or below 0 gives 1, at or above 1 gives `n`.
///
/// # Panics
///
/// When `n` is 0 or `confidence` is NaN.
pub fn quantile_rank(n: usize, confidence: f64) -> usize {
    assert!(n > 0, "quantile_rank of zero observations");
    assert!(!confidence.is_nan(), "quantile_rank at a NaN confidence");
    let k = (confidence * n as f64 - 1e-9).ceil();
    // `as usize` saturates: negative values become 0, huge ones usize::MAX.
    (k as usize).clamp(1, n)
}

/// The type-1 empirical quantile of `values` at `confidence`: the k-th
/// smallest value with `k = quantile_rank(values.len(), confidence)`.
///
/// Values are ordered by [`f64::total_cmp`] on a copy (the input is not
/// modified), in O(n) expected time. NaN when `values` is empty. Values should
/// be free of NaN; a NaN would be ordered above `+∞` (or below `−∞` when its
/// sign bit is set).
pub fn empirical_quantile(values: &[f64], confidence: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let k = quantile_rank(values.len(), confidence);
    let mut copy = values.to_vec();
    let (_, kth, _) = copy.select_nth_unstable_by(k - 1, f64::total_cmp);
    *kth
}

/// The mean of the values of rank `k` and above (the `n − k + 1` largest),
/// with `k = quantile_rank(values.len(), confidence)` and ranks ordered by
/// [`f64::total_cmp`]. Applied to losses, this is the expected shortfall at
/// `confidence` that goes with the type-1 quantile of [`empirical_quantile`]
/// (so `tail_mean ≥ empirical_quantile`).
///
/// NaN when `values` is empty. The input is not modified.
pub fn tail_mean(values: &[f64], confidence: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let k = quantile_rank(values.len(), confidence);
    let mut copy = values.to_vec();
    copy.select_nth_unstable_by(k - 1, f64::total_cmp);
    mean(&copy[k - 1..])
}

/// The inverse standard normal CDF `Φ⁻¹(p)`: the `x` with `P(Z ≤ x) = p` for
/// `Z ~ N(0, 1)`.
///
/// Wichura's algorithm AS 241 (`PPND16`, Applied Statistics 37, 1988),
/// rational approximations with a relative error of about 1e-16 over the
/// whole range. Returns NaN for `p` outside `[0, 1]` or NaN, `−∞` at 0 and
/// `+∞` at 1. Examples: `Φ⁻¹(0.5) = 0`, `Φ⁻¹(0.99) = 2.3263478740408408`.
pub fn normal_quantile(p: f64) -> f64 {
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    let q = p - 0.5;
    if q.abs() <= 0.425 {
        // Central region, 0.075 <= p <= 0.925.
        let r = 0.180625 - q * q;
        return q * poly(&A, r) / poly(&B, r);
    }
    // Tails: r = sqrt(-ln(min(p, 1 - p))).
    let r = if q < 0.0 { p } else { 1.0 - p };
    let r = (-r.ln()).sqrt();
    let x = if r <= 5.0 {
        let r = r - 1.6;
        poly(&C, r) / poly(&D, r)
    } else {
        let r = r - 5.0;
        poly(&E, r) / poly(&F, r)
    };
    if q < 0.0 { -x } else { x }
}

/// Horner evaluation of `c[0] + c[1] x + … + c[7] x⁷`.
fn poly(c: &[f64; 8], x: f64) -> f64 {
    c.iter().rev().fold(0.0, |acc, &ci| acc * x + ci)
}

// AS 241 coefficients (Wichura 1988), lowest degree first; B, D and F have a
// leading coefficient of 1. They are kept with the published 20 significant
// digits so they can be checked against the paper; the compiler rounds them
// to the nearest f64.
#[allow(clippy::excessive_precision)]
const A: [f64; 8] = [
    3.3871328727963666080e0,
    1.3314166789178437745e2,
    1.9715909503065514427e3,
    1.3731693765509461125e4,
    4.5921953931549871457e4,
    6.7265770927008700853e4,
    3.3430575583588128105e4,
    2.5090809287301226727e3,
];
#[allow(clippy::excessive_precision)]
const B: [f64; 8] = [
    1.0,
    4.2313330701600911252e1,
    6.8718700749205790830e2,
    5.3941960214247511077e3,
    2.1213794301586595867e4,
    3.9307895800092710610e4,
    2.8729085735721942674e4,
    5.2264952788528545610e3,
];
#[allow(clippy::excessive_precision)]
const C: [f64; 8] = [
    1.42343711074968357734e0,
    4.63033784615654529590e0,
    5.76949722146069140550e0,
    3.64784832476320460504e0,
    1.27045825245236838258e0,
    2.41780725177450611770e-1,
    2.27238449892691845833e-2,
    7.74545014278341407640e-4,
];
#[allow(clippy::excessive_precision)]
const D: [f64; 8] = [
    1.0,
    2.05319162663775882187e0,
    1.67638483018380384940e0,
    6.89767334985100004550e-1,
    1.48103976427480074590e-1,
    1.51986665636164571966e-2,
    5.47593808499534494600e-4,
    1.05075007164441684324e-9,
];
#[allow(clippy::excessive_precision)]
const E: [f64; 8] = [
    6.65790464350110377720e0,
    5.46378491116411436990e0,
    1.78482653991729133580e0,
    2.96560571828504891230e-1,
    2.65321895265761230930e-2,
    1.24266094738807843860e-3,
    2.71155556874348757815e-5,
    2.01033439929228813265e-7,
];
#[allow(clippy::excessive_precision)]
const F: [f64; 8] = [
    1.0,
    5.99832206555887937690e-1,
    1.36929880922735805310e-1,
    1.48753612908506148525e-2,
    7.86869131145613259100e-4,
    1.84631831751005468180e-5,
    1.42151175831644588870e-7,
    2.04426310338993978564e-15,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// |actual − expected| ≤ tol · max(1, |expected|).
    fn assert_close(actual: f64, expected: f64, tol: f64) {
        let scale = expected.abs().max(1.0);
        assert!(
            (actual - expected).abs() <= tol * scale,
            "expected {expected:e}, got {actual:e} (diff {:e})",
            actual - expected
        );
    }

    #[test]
    fn simple_returns_of_closes() {
        // 100 -> 110 is +10%, 110 -> 99 is -10%, 99 -> 99 is 0.
        let r = simple_returns(&[100.0, 110.0, 99.0, 99.0]);
        assert_eq!(r.len(), 3);
        assert_close(r[0], 0.1, 1e-15);
        assert_close(r[1], -0.1, 1e-15);
        assert_eq!(r[2], 0.0);
        // Dyadic ratios are exact: 125 / 100 = 1.25, 50 / 100 = 0.5.
        assert_eq!(simple_returns(&[100.0, 125.0, 62.5]), vec![0.25, -0.5]);
    }

    #[test]
    fn chunked_kernels_equal_the_plain_loops_bit_for_bit() {
        // Lengths around the chunk size, and values whose products round.
        for n in [0, 1, 7, 8, 9, 16, 23, 500] {
            let closes: Vec<f64> = (0..=n)
                .map(|t| 100.0 + (t as f64 * 0.37).sin() * 3.1)
                .collect();
            let plain: Vec<f64> = closes.windows(2).map(|w| w[1] / w[0] - 1.0).collect();
            assert_eq!(simple_returns(&closes), plain, "n = {n}");

            let x: Vec<f64> = (0..n).map(|t| (t as f64 * 1.3).cos() / 7.0).collect();
            let start: Vec<f64> = (0..n).map(|t| t as f64 / 3.0).collect();
            let (mut added, mut subtracted) = (start.clone(), start.clone());
            add_scaled(&mut added, 1234.567, &x);
            sub_scaled(&mut subtracted, 1234.567, &x);
            for t in 0..n {
                assert_eq!(added[t].to_bits(), (start[t] + 1234.567 * x[t]).to_bits());
                assert_eq!(
                    subtracted[t].to_bits(),
                    (start[t] - 1234.567 * x[t]).to_bits()
                );
            }
        }
        // Only the common length is touched.
        let mut acc = vec![1.0; 10];
        add_scaled(&mut acc, 2.0, &[1.0; 9]);
        assert_eq!(acc[8..], [3.0, 1.0]);
    }

    #[test]
    fn simple_returns_of_short_series_are_empty() {
        assert!(simple_returns(&[]).is_empty());
        assert!(simple_returns(&[42.0]).is_empty());
    }

    #[test]
    fn a_nan_close_spoils_only_the_returns_next_to_it() {
        let r = simple_returns(&[f64::NAN, f64::NAN, 40.0, 50.0]);
        assert!(r[0].is_nan() && r[1].is_nan());
        assert_eq!(r[2], 0.25);
    }

    #[test]
    fn mean_of_values_and_of_nothing() {
        assert_eq!(mean(&[1.0, 2.0, 3.0, 4.0]), 2.5);
        assert_eq!(mean(&[-7.0]), -7.0);
        assert!(mean(&[]).is_nan());
    }

    #[test]
    fn variance_uses_n_minus_one() {
        // Mean 5; squared deviations 9+1+1+1+0+0+4+16 = 32; 32 / 7.
        let xs = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert_close(variance(&xs), 32.0 / 7.0, 1e-15);
        // Two values: (1 - 2)^2 + (3 - 2)^2 = 2, over 1.
        assert_eq!(variance(&[1.0, 3.0]), 2.0);
        assert_eq!(variance(&[3.5, 3.5, 3.5]), 0.0);
        assert!(variance(&[1.0]).is_nan());
        assert!(variance(&[]).is_nan());
    }

    #[test]
    fn variance_is_shift_invariant_for_large_offsets() {
        // A naive Σx² − n·x̄² loses everything here; two passes do not.
        let xs = [1e9 + 4.0, 1e9 + 7.0, 1e9 + 13.0, 1e9 + 16.0];
        // Mean 1e9 + 10; deviations -6, -3, 3, 6; 90 / 3 = 30.
        assert_close(variance(&xs), 30.0, 1e-12);
    }

    #[test]
    fn covariance_uses_n_minus_one() {
        // ā = 2, b̄ = 13/3; deviations (-1, 0, 1) and (-7/3, -1/3, 8/3);
        // Σ products = 7/3 + 0 + 8/3 = 5; 5 / 2 = 2.5.
        let a = [1.0, 2.0, 3.0];
        let b = [2.0, 4.0, 7.0];
        assert_close(covariance(&a, &b), 2.5, 1e-15);
        assert_eq!(covariance(&a, &b), covariance(&b, &a));
        // Against a negated series the sign flips.
        assert_close(covariance(&a, &[-2.0, -4.0, -7.0]), -2.5, 1e-15);
        assert_eq!(covariance(&a, &[5.0, 5.0, 5.0]), 0.0);
        assert!(covariance(&[1.0], &[2.0]).is_nan());
        assert_eq!(variance(&b), covariance(&b, &b));
    }

    #[test]
    #[should_panic(expected = "different lengths")]
    fn covariance_of_misaligned_series_panics() {
        covariance(&[1.0, 2.0, 3.0], &[1.0, 2.0]);
    }

    #[test]
    fn covariance_matrix_is_symmetric_with_variances_on_the_diagonal() {
        let a = [1.0, 2.0, 3.0];
        let b = [2.0, 4.0, 7.0];
        let c = [3.0, 3.0, 3.0];
        let m = covariance_matrix(&[&a, &b, &c]);
        // var(a) = 2 / 2 = 1; var(b) = (49 + 1 + 64) / 9 / 2 = 19/3;
        // cov(a, b) = 2.5; anything with the constant series is 0.
        let expected = [1.0, 2.5, 0.0, 2.5, 19.0 / 3.0, 0.0, 0.0, 0.0, 0.0];
        assert_eq!(m.len(), 9);
        for (got, want) in m.iter().zip(expected) {
            assert_close(*got, want, 1e-15);
        }
        for i in 0..3 {
            for j in 0..3 {
                assert_eq!(m[i * 3 + j], m[j * 3 + i]);
            }
        }
        assert_eq!(m[1], covariance(&a, &b));
        assert_eq!(m[4], variance(&b));
    }

    #[test]
    fn covariance_matrix_edge_cases() {
        assert!(covariance_matrix(&[]).is_empty());
        let one = covariance_matrix(&[&[1.0, 2.0, 4.0]]);
        // Mean 7/3; deviations -4/3, -1/3, 5/3; (16 + 1 + 25) / 9 / 2 = 7/3.
        assert_eq!(one.len(), 1);
        assert_close(one[0], 7.0 / 3.0, 1e-15);
        let short = covariance_matrix(&[&[1.0], &[2.0]]);
        assert_eq!(short.len(), 4);
        assert!(short.iter().all(|x| x.is_nan()));
    }

    #[test]
    #[should_panic(expected = "series 1 has 2 observations")]
    fn covariance_matrix_of_misaligned_series_panics() {
        covariance_matrix(&[&[1.0, 2.0, 3.0], &[1.0, 2.0]]);
    }

    #[test]
    fn quantile_rank_is_the_ceiling_of_confidence_times_n() {
        assert_eq!(quantile_rank(250, 0.99), 248); // 247.5 -> 248
        assert_eq!(quantile_rank(100, 0.99), 99);
        assert_eq!(quantile_rank(5, 0.8), 4);
        assert_eq!(quantile_rank(4, 0.75), 3);
        assert_eq!(quantile_rank(3, 0.5), 2); // 1.5 -> 2
        assert_eq!(quantile_rank(1000, 0.999), 999);
        assert_eq!(quantile_rank(5000, 0.9999), 5000); // 4999.5 -> 5000
        assert_eq!(quantile_rank(1, 0.99), 1);
    }

    #[test]
    fn quantile_rank_absorbs_floating_error_above_an_integer() {
        // 0.55 * 100 is 55.00000000000001 in f64; the exact product is 55.
        // (black_box: check the product as computed at run time.)
        let product = |c: f64, n: f64| std::hint::black_box(c) * n;
        assert!(product(0.55, 100.0) > 55.0);
        assert_eq!(quantile_rank(100, 0.55), 55);
        assert!(product(0.56, 100.0) > 56.0);
        assert_eq!(quantile_rank(100, 0.56), 56);
        // Products that round to the integer itself need no help.
        assert_eq!(quantile_rank(500, 0.95), 475);
        assert_eq!(quantile_rank(20, 0.95), 19);
        // ...but a product genuinely above an integer still rounds up.
        assert_eq!(quantile_rank(500, 0.9502), 476);
    }

    #[test]
    fn quantile_rank_clamps_to_one_and_n() {
        assert_eq!(quantile_rank(10, 0.0), 1);
        assert_eq!(quantile_rank(10, -3.0), 1);
        assert_eq!(quantile_rank(10, 1.0), 10);
        assert_eq!(quantile_rank(10, 7.0), 10);
        assert_eq!(quantile_rank(10, 0.01), 1); // 0.1 -> 1
    }

    #[test]
    #[should_panic(expected = "zero observations")]
    fn quantile_rank_of_nothing_panics() {
        quantile_rank(0, 0.99);
    }

    #[test]
    fn empirical_quantile_is_the_kth_smallest() {
        let v = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(empirical_quantile(&v, 0.8), 4.0); // k = 4
        assert_eq!(empirical_quantile(&v, 0.81), 5.0); // k = ceil(4.05) = 5
        assert_eq!(empirical_quantile(&v, 0.2), 1.0); // k = 1
        assert_eq!(empirical_quantile(&v, 0.5), 3.0); // k = ceil(2.5) = 3
        // The input is left as it was.
        assert_eq!(v, [5.0, 1.0, 4.0, 2.0, 3.0]);
        // Ties: sorted 1, 1, 2; k = ceil(1.5) = 2.
        assert_eq!(empirical_quantile(&[2.0, 1.0, 1.0], 0.5), 1.0);
        assert_eq!(empirical_quantile(&[-2.5], 0.99), -2.5);
        assert!(empirical_quantile(&[], 0.99).is_nan());
    }

    #[test]
    fn empirical_quantile_matches_a_full_sort() {
        // 0, 7, 14, ... mod 101: a permutation of 0..101.
        let v: Vec<f64> = (0..101).map(|i| ((i * 7) % 101) as f64 - 50.0).collect();
        let mut sorted = v.clone();
        sorted.sort_by(f64::total_cmp);
        for c in [0.5, 0.9, 0.95, 0.99, 0.999] {
            let k = quantile_rank(v.len(), c);
            assert_eq!(empirical_quantile(&v, c), sorted[k - 1], "confidence {c}");
        }
        // n = 101, c = 0.99: k = ceil(99.99) = 100 -> the 100th of -50..=50 is 49.
        assert_eq!(empirical_quantile(&v, 0.99), 49.0);
    }

    #[test]
    fn tail_mean_averages_ranks_k_and_above() {
        let v = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(tail_mean(&v, 0.8), 4.5); // k = 4: (4 + 5) / 2
        assert_eq!(tail_mean(&v, 0.99), 5.0); // k = 5: the maximum
        assert_eq!(tail_mean(&v, 0.5), 4.0); // k = 3: (3 + 4 + 5) / 3
        assert_eq!(tail_mean(&v, 0.0), 3.0); // k = 1: the mean of all
        assert_eq!(v, [5.0, 1.0, 4.0, 2.0, 3.0]);
        // Ties at the boundary count once per value: sorted 1, 2, 2, 2; k = 2.
        assert_eq!(tail_mean(&[2.0, 1.0, 2.0, 2.0], 0.5), 2.0);
        assert!(tail_mean(&[], 0.9).is_nan());
        for c in [0.5, 0.8, 0.95] {
            assert!(tail_mean(&v, c) >= empirical_quantile(&v, c));
        }
    }

    #[test]
    fn normal_quantile_reference_values() {
        assert_eq!(normal_quantile(0.5), 0.0);
        // The brief's reference values.
        assert_close(normal_quantile(0.975), 1.959963984540054, 2e-15);
        assert_close(normal_quantile(0.99), 2.3263478740408408, 2e-15);
        assert_close(normal_quantile(0.999), 3.090232306167813, 2e-15);
        assert_close(normal_quantile(1e-10), -6.361340902404056, 2e-15);
        // Φ⁻¹ at the exact binary value of each p: roots of mpmath's ncdf
        // (log ncdf below 1e-10) at 60+ digits. They cover the central region, both tail branches and
        // the points next to the branch boundaries (0.075, and r = 5 near
        // p = 1.4e-11).
        let reference = [
            (1e-300, -37.0470962993612),
            (1e-20, -9.262340089798407),
            (1e-15, -7.941345326170997),
            (1e-5, -4.264890793922825),
            (0.001, -3.0902323061678136),
            (0.02, -2.053748910631823),
            (0.075, -1.439531470938456),
            (0.25, -0.6744897501960817),
            (0.3, -0.5244005127080408),
            (0.6, 0.2533471031357997),
            (0.8, 0.8416212335729144),
            (0.925, 1.4395314709384561),
            (0.95, 1.6448536269514722),
            (0.9999, 3.7190164854557084),
        ];
        for (p, x) in reference {
            let got = normal_quantile(p);
            assert!(
                (got - x).abs() <= 2e-15 * x.abs(),
                "Φ⁻¹({p}) = {got}, expected {x}"
            );
        }
    }

    #[test]
    fn normal_quantile_is_antisymmetric() {
        // For dyadic p, 1 - p is exact, so the symmetry is exact too.
        for i in 1..1024 {
            let p = i as f64 / 1024.0;
            assert_eq!(normal_quantile(1.0 - p), -normal_quantile(p), "p = {p}");
        }
        // For any u in [0.5, 1), 1 - u is exact (Sterbenz), and the algorithm
        // sees the same r on both sides, so Φ⁻¹(u) = -Φ⁻¹(1 - u) bit for bit.
        for p in [1e-12, 1e-6, 0.01, 0.05, 0.07, 0.1, 0.3, 0.49] {
            let u = 1.0 - p;
            let (lo, hi) = (normal_quantile(1.0 - u), normal_quantile(u));
            assert_eq!(hi, -lo, "u = {u}");
            assert!(lo < 0.0 && hi > 0.0);
        }
        // With the decimal p itself, 1 - p rounds: for p = 0.01 that moves
        // Φ⁻¹ by far less than 1e-12.
        assert_close(normal_quantile(0.99), -normal_quantile(0.01), 1e-12);
    }

    #[test]
    fn normal_quantile_is_strictly_increasing_across_branches() {
        let mut ps: Vec<f64> = (1..=300).map(|i| 10f64.powf(-(i as f64) / 10.0)).collect();
        ps.extend((1..1000).map(|i| i as f64 / 1000.0));
        ps.extend([0.074_999_999, 0.075, 0.075_000_001, 0.925, 0.925_000_001]);
        ps.sort_by(f64::total_cmp);
        ps.dedup();
        let xs: Vec<f64> = ps.iter().map(|&p| normal_quantile(p)).collect();
        for w in xs.windows(2) {
            assert!(w[0] < w[1], "not increasing: {} then {}", w[0], w[1]);
        }
    }

    #[test]
    fn normal_quantile_outside_the_open_interval() {
        assert_eq!(normal_quantile(0.0), f64::NEG_INFINITY);
        assert_eq!(normal_quantile(1.0), f64::INFINITY);
        assert!(normal_quantile(-0.1).is_nan());
        assert!(normal_quantile(1.1).is_nan());
        assert!(normal_quantile(f64::NAN).is_nan());
        assert!(normal_quantile(f64::INFINITY).is_nan());
        // The smallest positive subnormal is still finite.
        let tiny = normal_quantile(f64::from_bits(1));
        assert!(tiny.is_finite() && tiny < -38.0, "{tiny}");
    }
}

//! The bundled sample data set: a documented, deterministic generator of
//! correlated daily closes, so `riskhost serve` with no flags has realistic
//! data to score against.
//!
//! # Calendar
//!
//! Every Monday–Friday from 2015-01-02 to 2018-12-31 inclusive: 1,042
//! dates, no holidays. Every instrument has a close on every date.
//!
//! # Model
//!
//! For instrument *i* of asset class *c(i)* on day *t* (after the first):
//!
//! ```text
//! r[i,t] = μ_i/252 + s_i · (a_i·m[t] + b_i·f[c(i),t] + e_i·√h[c(i),t]·ε[i,t]),   s_i = v_i/√252
//! ```
//!
//! - `m` is a market (global risk) factor and `f[c]` one factor per asset
//!   class. Each factor is a GARCH(1,1) process with unit long-run variance:
//!   `x[t] = √h[t]·z[t]`, `h[t+1] = min(ω + α·x[t]² + β·h[t], H_MAX)` with
//!   `ω = 0.02, α = 0.10, β = 0.88` (persistence 0.98, so volatility
//!   clusters), `h[0] = 1` and `H_MAX = 16` (a factor's volatility stays
//!   within 4× its long-run level).
//! - `ε[i,t]` is idiosyncratic noise, scaled by its class factor's current
//!   volatility `√h[c(i),t]` so that single names share their class's
//!   calm and stressed regimes instead of diluting them.
//! - Every shock `z`, `ε` is Student-t with 5 degrees of freedom scaled to
//!   unit variance (fat tails: excess kurtosis 6), drawn as
//!   `N / √(χ²₅/5) · √(3/5)` with `χ²₅` a sum of five squared normals.
//! - The loadings `a_i` (market) and `b_i` (class) are correlation weights,
//!   `e_i = √(1 − a_i² − b_i²)`, so each term has unit long-run variance and
//!   `v_i` is the instrument's long-run annualised volatility. GARCH
//!   variance is right-skewed and persistent, so a four-year sample realises
//!   a level of its own, often lower: in this data set 77–115 % of `v_i`
//!   (e.g. SPX 14.8 %, AAPL 23.7 %, TLT 13.2 %, EURUSD 8.2 %, WTI 34.6 %,
//!   BTCUSD 72.1 %). Two instruments correlate by about `a_i·a_j`
//!   (+ `b_i·b_j` in the same class): a negative `a` (Treasuries) moves
//!   against equities.
//! - `μ_i` is an annual drift. A return is clamped to `[−0.49, 1.0]`, so
//!   closes stay > 0. The close on 2015-01-02 is the start level; each later
//!   path value is the previous one × (1 + r). Stored closes are the path
//!   rounded to the instrument's quoted decimals (at least one unit of the
//!   last decimal), as a quote would be; the path itself is not rounded.
//!
//! # Instruments
//!
//! | id     | class        | start    | vol v | drift μ | a (mkt) | b (class) | decimals |
//! |--------|--------------|---------:|------:|--------:|--------:|----------:|---------:|
//! | SPX    | equity index |  2058.20 |  0.18 |   0.07  |   0.95  |   0.10    | 2 |
//! | NDX    | equity index |  4230.24 |  0.22 |   0.10  |   0.88  |   0.15    | 2 |
//! | SX5E   | equity index |  3139.44 |  0.20 |   0.01  |   0.60  |   0.55    | 2 |
//! | NKY    | equity index | 17408.71 |  0.21 |   0.04  |   0.40  |   0.55    | 2 |
//! | UKX    | equity index |  6547.80 |  0.17 |   0.00  |   0.55  |   0.55    | 2 |
//! | HSI    | equity index | 23721.32 |  0.21 |   0.02  |   0.40  |   0.50    | 2 |
//! | AAPL   | stock        |   109.33 |  0.30 |   0.18  |   0.65  |   0.40    | 2 |
//! | MSFT   | stock        |    46.76 |  0.28 |   0.22  |   0.70  |   0.40    | 2 |
//! | AMZN   | stock        |   308.52 |  0.33 |   0.30  |   0.65  |   0.45    | 2 |
//! | JPM    | stock        |    62.49 |  0.28 |   0.12  |   0.70  |  −0.30    | 2 |
//! | XOM    | stock        |    92.83 |  0.27 |  −0.03  |   0.55  |  −0.35    | 2 |
//! | NVDA   | stock        |    20.13 |  0.50 |   0.45  |   0.55  |   0.50    | 2 |
//! | TSLA   | stock        |   219.31 |  0.52 |   0.10  |   0.40  |   0.35    | 2 |
//! | TLT    | bond         |   126.25 |  0.15 |   0.01  |  −0.35  |   0.90    | 2 |
//! | IEF    | bond         |   105.56 | 0.085 |   0.01  |  −0.30  |   0.90    | 2 |
//! | LQD    | bond         |   119.40 | 0.085 |   0.02  |  −0.05  |   0.75    | 2 |
//! | HYG    | bond         |    89.94 |  0.09 |   0.04  |   0.50  |   0.25    | 2 |
//! | EURUSD | fx           |   1.2005 |  0.09 |   0.00  |   0.10  |  −0.80    | 5 |
//! | USDJPY | fx           |   120.48 |  0.09 |   0.00  |   0.35  |   0.55    | 3 |
//! | GBPUSD | fx           |   1.5274 |  0.09 |   0.00  |   0.15  |  −0.65    | 5 |
//! | GOLD   | commodity    |  1186.00 |  0.20 |   0.02  |   0.00  |   0.45    | 2 |
//! | WTI    | commodity    |    52.69 |  0.32 |   0.00  |   0.35  |   0.60    | 2 |
//! | COPPER | commodity    |   2.8300 |  0.26 |  −0.02  |   0.45  |   0.55    | 4 |
//! | BTCUSD | crypto       |   315.03 |  0.90 |   0.70  |   0.10  |   0.75    | 2 |
//!
//! Class factors read as: equity index = ex-US/regional, stock = growth vs
//! value, bond = rates level (+ = prices up), fx = dollar strength,
//! commodity = commodity cycle; crypto has one member, its factor giving it
//! clustered volatility of its own.
//!
//! # Randomness
//!
//! A SplitMix64 generator seeded with [`SEED`] (`"RISKHOST"` in ASCII)
//! feeds Marsaglia's polar method for normals (53-bit uniforms on [−1, 1);
//! the second normal of a pair serves the next request). A Student-t draw
//! takes six normals: the numerator, then the five of the χ². On each day
//! after the first the generator draws, in this order, the market shock, the
//! class shocks in [`AssetClass::ALL`] order, then one idiosyncratic shock
//! per instrument in table order. The logarithm
//! is computed here from + − × ÷ and √ only, which IEEE 754 rounds exactly
//! on every platform (and Rust never fuses them), so the data and its
//! version are bit-identical on every target and no dependency update or
//! libm can change them.

use chrono::{Datelike, NaiveDate, Weekday};

use super::table::PriceTable;

/// The generator's seed: the bytes of `"RISKHOST"`.
pub(crate) const SEED: u64 = 0x5249_534B_484F_5354;

/// First date of the sample data.
pub(crate) const FIRST_DATE: NaiveDate = ymd(2015, 1, 2);
/// Last date of the sample data.
pub(crate) const LAST_DATE: NaiveDate = ymd(2018, 12, 31);

const TRADING_DAYS_PER_YEAR: f64 = 252.0;
const GARCH_OMEGA: f64 = 0.02;
const GARCH_ALPHA: f64 = 0.10;
const GARCH_BETA: f64 = 0.88;
const GARCH_H_MAX: f64 = 16.0;
const T_DOF: usize = 5;
const MIN_RETURN: f64 = -0.49;
const MAX_RETURN: f64 = 1.0;

const fn ymd(y: i32, m: u32, d: u32) -> NaiveDate {
    match NaiveDate::from_ymd_opt(y, m, d) {
        Some(date) => date,
        // Evaluated at compile time: a bad literal fails the build.
        None => panic!("invalid date literal"),
    }
}

/// Asset classes; each has its own factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AssetClass {
    EquityIndex,
    Stock,
    Bond,
    Fx,
    Commodity,
    Crypto,
}

impl AssetClass {
    /// Every class, in the order their factor shocks are drawn.
    pub(crate) const ALL: [AssetClass; 6] = [
        AssetClass::EquityIndex,
        AssetClass::Stock,
        AssetClass::Bond,
        AssetClass::Fx,
        AssetClass::Commodity,
        AssetClass::Crypto,
    ];

    fn factor(self) -> usize {
        self as usize
    }
}

/// One instrument's parameters; see the module documentation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InstrumentSpec {
    pub(crate) id: &'static str,
    pub(crate) class: AssetClass,
    /// Close on the first date.
    pub(crate) start: f64,
    /// Annualised volatility.
    pub(crate) vol: f64,
    /// Annual drift (arithmetic).
    pub(crate) drift: f64,
    /// Loading on the market factor (a correlation weight).
    pub(crate) market: f64,
    /// Loading on the class factor (a correlation weight).
    pub(crate) class_loading: f64,
    /// Decimals closes are quoted with (at most 9).
    pub(crate) decimals: u32,
}

// A positional constructor keeps the parameter table readable as a table.
#[allow(clippy::too_many_arguments)]
const fn spec(
    id: &'static str,
    class: AssetClass,
    start: f64,
    vol: f64,
    drift: f64,
    market: f64,
    class_loading: f64,
    decimals: u32,
) -> InstrumentSpec {
    InstrumentSpec {
        id,
        class,
        start,
        vol,
        drift,
        market,
        class_loading,
        decimals,
    }
}

use AssetClass::{Bond, Commodity, Crypto, EquityIndex, Fx, Stock};

/// The bundled instruments, in generation order.
#[rustfmt::skip]
pub(crate) const INSTRUMENTS: [InstrumentSpec; 24] = [
    spec("SPX",    EquityIndex,  2058.20, 0.18,   0.07,  0.95,  0.10, 2),
    spec("NDX",    EquityIndex,  4230.24, 0.22,   0.10,  0.88,  0.15, 2),
    spec("SX5E",   EquityIndex,  3139.44, 0.20,   0.01,  0.60,  0.55, 2),
    spec("NKY",    EquityIndex, 17408.71, 0.21,   0.04,  0.40,  0.55, 2),
    spec("UKX",    EquityIndex,  6547.80, 0.17,   0.00,  0.55,  0.55, 2),
    spec("HSI",    EquityIndex, 23721.32, 0.21,   0.02,  0.40,  0.50, 2),
    spec("AAPL",   Stock,         109.33, 0.30,   0.18,  0.65,  0.40, 2),
    spec("MSFT",   Stock,          46.76, 0.28,   0.22,  0.70,  0.40, 2),
    spec("AMZN",   Stock,         308.52, 0.33,   0.30,  0.65,  0.45, 2),
    spec("JPM",    Stock,          62.49, 0.28,   0.12,  0.70, -0.30, 2),
    spec("XOM",    Stock,          92.83, 0.27,  -0.03,  0.55, -0.35, 2),
    spec("NVDA",   Stock,          20.13, 0.50,   0.45,  0.55,  0.50, 2),
    spec("TSLA",   Stock,         219.31, 0.52,   0.10,  0.40,  0.35, 2),
    spec("TLT",    Bond,          126.25, 0.15,   0.01, -0.35,  0.90, 2),
    spec("IEF",    Bond,          105.56, 0.085,  0.01, -0.30,  0.90, 2),
    spec("LQD",    Bond,          119.40, 0.085,  0.02, -0.05,  0.75, 2),
    spec("HYG",    Bond,           89.94, 0.09,   0.04,  0.50,  0.25, 2),
    spec("EURUSD", Fx,            1.2005, 0.09,   0.00,  0.10, -0.80, 5),
    spec("USDJPY", Fx,            120.48, 0.09,   0.00,  0.35,  0.55, 3),
    spec("GBPUSD", Fx,            1.5274, 0.09,   0.00,  0.15, -0.65, 5),
    spec("GOLD",   Commodity,    1186.00, 0.20,   0.02,  0.00,  0.45, 2),
    spec("WTI",    Commodity,      52.69, 0.32,   0.00,  0.35,  0.60, 2),
    spec("COPPER", Commodity,     2.8300, 0.26,  -0.02,  0.45,  0.55, 4),
    spec("BTCUSD", Crypto,        315.03, 0.90,   0.70,  0.10,  0.75, 2),
];

/// The bundled sample table (see the module documentation). Deterministic;
/// takes a few milliseconds.
pub fn sample_table() -> PriceTable {
    let rows = generate();
    // The input is a compile-time constant and the generator deterministic:
    // ids are literals of the allowed charset, dates distinct, closes at
    // least one unit of the last decimal; `sample_data_is_valid` proves
    // this output builds.
    PriceTable::from_rows(rows).expect("the bundled sample data is valid by construction")
}

/// Every business day of the sample calendar.
fn business_days() -> impl Iterator<Item = NaiveDate> {
    FIRST_DATE
        .iter_days()
        .take_while(|d| *d <= LAST_DATE)
        .filter(|d| !matches!(d.weekday(), Weekday::Sat | Weekday::Sun))
}

fn generate() -> Vec<(NaiveDate, String, f64)> {
    let days: Vec<NaiveDate> = business_days().collect();
    let mut rng = Shocks::new(SEED);
    let mut market = Garch::new();
    let mut classes = [Garch::new(); AssetClass::ALL.len()];
    let mut class_shock = [0.0; AssetClass::ALL.len()];
    let mut class_vol = [1.0; AssetClass::ALL.len()];
    let mut path: Vec<f64> = INSTRUMENTS.iter().map(|s| s.start).collect();
    let daily: Vec<(f64, f64, f64)> = INSTRUMENTS
        .iter()
        .map(|s| {
            let idio = (1.0 - s.market * s.market - s.class_loading * s.class_loading).sqrt();
            (
                s.drift / TRADING_DAYS_PER_YEAR,
                s.vol / TRADING_DAYS_PER_YEAR.sqrt(),
                idio,
            )
        })
        .collect();

    let mut rows = Vec::with_capacity(days.len() * INSTRUMENTS.len());
    for (t, date) in days.iter().enumerate() {
        if t > 0 {
            let m = market.step(rng.student_t());
            for (c, factor) in classes.iter_mut().enumerate() {
                class_vol[c] = factor.vol();
                class_shock[c] = factor.step(rng.student_t());
            }
            for ((spec, price), &(mu, s, idio)) in INSTRUMENTS.iter().zip(&mut path).zip(&daily) {
                let f = class_shock[spec.class.factor()];
                let eps = class_vol[spec.class.factor()] * rng.student_t();
                let r = mu + s * (spec.market * m + spec.class_loading * f + idio * eps);
                *price *= 1.0 + r.clamp(MIN_RETURN, MAX_RETURN);
            }
        }
        for (spec, price) in INSTRUMENTS.iter().zip(&path) {
            rows.push((*date, spec.id.to_owned(), quote(*price, spec.decimals)));
        }
    }
    rows
}

/// Rounds to `decimals` places, at least one unit of the last place.
///
/// Dividing an integer by an exact power of ten gives the double nearest
/// the decimal, so the CSV export shows e.g. `213.17`, not `213.17000000000002`.
fn quote(price: f64, decimals: u32) -> f64 {
    const POW10: [f64; 10] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];
    let scale = POW10[decimals.min(9) as usize];
    (price * scale).round().max(1.0) / scale
}

/// A GARCH(1,1) variance with unit long-run level.
#[derive(Debug, Clone, Copy)]
struct Garch {
    h: f64,
}

impl Garch {
    fn new() -> Self {
        Garch { h: 1.0 }
    }

    /// Today's volatility.
    fn vol(&self) -> f64 {
        self.h.sqrt()
    }

    /// Scales a unit shock by today's volatility and updates the variance.
    fn step(&mut self, z: f64) -> f64 {
        let x = self.h.sqrt() * z;
        self.h = (GARCH_OMEGA + GARCH_ALPHA * x * x + GARCH_BETA * self.h).min(GARCH_H_MAX);
        x
    }
}

/// SplitMix64 feeding a polar-method normal sampler.
struct Shocks {
    state: u64,
    spare: Option<f64>,
}

impl Shocks {
    fn new(seed: u64) -> Self {
        Shocks {
            state: seed,
            spare: None,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform on [-1, 1), 53 bits.
    fn symmetric_uniform(&mut self) -> f64 {
        const SCALE: f64 = 1.0 / (1u64 << 52) as f64;
        (self.next_u64() >> 11) as f64 * SCALE - 1.0
    }

    /// A standard normal (Marsaglia's polar method; no sin/cos needed).
    fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        loop {
            let u = self.symmetric_uniform();
            let v = self.symmetric_uniform();
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                let k = (-2.0 * ln(s) / s).sqrt();
                self.spare = Some(v * k);
                return u * k;
            }
        }
    }

    /// Student-t with [`T_DOF`] degrees of freedom, scaled to unit variance.
    fn student_t(&mut self) -> f64 {
        let z = self.normal();
        let mut chi2 = 0.0;
        for _ in 0..T_DOF {
            let n = self.normal();
            chi2 += n * n;
        }
        let dof = T_DOF as f64;
        z / (chi2 / dof).sqrt() * ((dof - 2.0) / dof).sqrt()
    }
}

/// Natural logarithm of a positive finite `x` from basic IEEE operations
/// only, so it is bit-identical on every platform (std's `ln` is libm's).
///
/// `x = m·2^e` with `m` in `[√½, √2)`; `ln m = 2·atanh(s)`, `s = (m−1)/(m+1)`,
/// `|s| < 0.172`, whose odd series converges below f64 precision in 13 terms.
fn ln(x: f64) -> f64 {
    const SQRT_2: f64 = std::f64::consts::SQRT_2;
    let (mut x, mut e) = (x, 0i64);
    if x < f64::MIN_POSITIVE {
        // Subnormal: scale into the normal range first (exact).
        x *= (1u64 << 54) as f64;
        e -= 54;
    }
    let bits = x.to_bits();
    e += ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m >= SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut sum = 0.0;
    let mut power = s;
    for k in 0..13 {
        sum += power / (2 * k + 1) as f64;
        power *= s2;
    }
    2.0 * sum + e as f64 * std::f64::consts::LN_2
}

/// Names and asset classes of the bundled instruments, for seeding.
pub fn sample_instrument_info() -> std::collections::HashMap<String, (String, String)> {
    INSTRUMENTS
        .iter()
        .map(|s| {
            (
                s.id.to_owned(),
                (s.id.to_owned(), format!("{:?}", s.class).to_lowercase()),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn returns(t: &PriceTable, id: &str) -> Vec<f64> {
        let w = t.window(&[id], t.last_date(), usize::MAX).unwrap();
        w.series[0]
            .closes
            .windows(2)
            .map(|p| p[1] / p[0] - 1.0)
            .collect()
    }

    fn mean(x: &[f64]) -> f64 {
        x.iter().sum::<f64>() / x.len() as f64
    }

    fn correlation(x: &[f64], y: &[f64]) -> f64 {
        let (mx, my) = (mean(x), mean(y));
        let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
        for (a, b) in x.iter().zip(y) {
            sxy += (a - mx) * (b - my);
            sxx += (a - mx) * (a - mx);
            syy += (b - my) * (b - my);
        }
        sxy / (sxx * syy).sqrt()
    }

    fn annual_vol(r: &[f64]) -> f64 {
        let m = mean(r);
        let var = r.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (r.len() - 1) as f64;
        (var * TRADING_DAYS_PER_YEAR).sqrt()
    }

    #[test]
    fn sample_data_is_valid() {
        let t = sample_table();
        assert_eq!(t.instruments().len(), 24);
        for spec in &INSTRUMENTS {
            assert!(t.contains(spec.id), "{}", spec.id);
            let w = t.window(&[spec.id], t.last_date(), usize::MAX).unwrap();
            assert!(
                w.series[0].closes.iter().all(|c| c.is_finite() && *c > 0.0),
                "{}",
                spec.id
            );
            let loadings = spec.market.powi(2) + spec.class_loading.powi(2);
            assert!(
                loadings <= 1.0,
                "{}: loadings exceed unit variance",
                spec.id
            );
        }
    }

    #[test]
    fn is_deterministic() {
        let (a, b) = (sample_table(), sample_table());
        assert_eq!(a.version(), b.version());
        let mut csv_a = Vec::new();
        a.write_csv(&mut csv_a).unwrap();
        let mut csv_b = Vec::new();
        b.write_csv(&mut csv_b).unwrap();
        assert!(csv_a == csv_b);
    }

    #[test]
    fn version_is_pinned() {
        // The data must not drift between builds or platforms: caches and
        // clients key on it. Change this only with a deliberate data change.
        assert_eq!(sample_table().version(), PINNED_VERSION);
    }

    const PINNED_VERSION: &str = "98f501214d0a14e5";

    #[test]
    fn covers_business_days_2015_to_2018() {
        let t = sample_table();
        assert_eq!(t.first_date(), ymd(2015, 1, 2));
        assert_eq!(t.last_date(), ymd(2018, 12, 31));
        assert_eq!(t.len_dates(), 1042);
        let w = t.window(&[], t.last_date(), usize::MAX).unwrap();
        assert!(
            w.dates
                .iter()
                .all(|d| !matches!(d.weekday(), Weekday::Sat | Weekday::Sun))
        );
        // Fridays roll weekends back; every weekday is present.
        assert_eq!(
            t.resolve_as_of(Some(ymd(2018, 12, 30))).unwrap(),
            ymd(2018, 12, 28)
        );
        assert_eq!(
            t.resolve_as_of(Some(ymd(2017, 7, 4))).unwrap(),
            ymd(2017, 7, 4)
        );
    }

    #[test]
    fn starts_at_the_documented_levels() {
        let t = sample_table();
        let first = t.first_date();
        for spec in &INSTRUMENTS {
            let w = t.window(&[spec.id], first, 0).unwrap();
            assert_eq!(w.series[0].closes, [spec.start], "{}", spec.id);
        }
    }

    #[test]
    fn correlations_have_the_expected_signs() {
        let t = sample_table();
        let spx = returns(&t, "SPX");
        let corr = |id: &str| correlation(&spx, &returns(&t, id));
        assert!(corr("NDX") > 0.5, "SPX/NDX {}", corr("NDX"));
        assert!(corr("TLT") < -0.1, "SPX/TLT {}", corr("TLT"));
        assert!(corr("IEF") < -0.1, "SPX/IEF {}", corr("IEF"));
        assert!(corr("HYG") > 0.2, "SPX/HYG {}", corr("HYG"));
        assert!(corr("AAPL") > 0.3, "SPX/AAPL {}", corr("AAPL"));
        let tlt = returns(&t, "TLT");
        assert!(correlation(&tlt, &returns(&t, "IEF")) > 0.7);
        let eur = returns(&t, "EURUSD");
        assert!(correlation(&eur, &returns(&t, "USDJPY")) < 0.0);
    }

    #[test]
    fn volatilities_are_in_realistic_ranges() {
        let t = sample_table();
        for spec in &INSTRUMENTS {
            let (lo, hi) = match spec.class {
                EquityIndex => (0.12, 0.25),
                Stock => (0.20, 0.60),
                Bond => (0.05, 0.15),
                Fx => (0.06, 0.12),
                Commodity => (0.20, 0.40),
                Crypto => (0.60, 0.90),
            };
            let vol = annual_vol(&returns(&t, spec.id));
            assert!(
                (lo..=hi).contains(&vol),
                "{}: realised vol {vol:.3}",
                spec.id
            );
        }
    }

    #[test]
    fn returns_are_fat_tailed_and_cluster() {
        let t = sample_table();
        let mut clustering = Vec::new();
        for spec in &INSTRUMENTS {
            let r = returns(&t, spec.id);
            let m = mean(&r);
            let var = r.iter().map(|x| (x - m).powi(2)).sum::<f64>() / r.len() as f64;
            let kurt =
                r.iter().map(|x| (x - m).powi(4)).sum::<f64>() / r.len() as f64 / (var * var);
            assert!(kurt > 3.5, "{}: kurtosis {kurt}", spec.id);
            // Volatility clustering: absolute returns are autocorrelated; an
            // i.i.d. series of this length gives 0 ± 0.01 over ten lags.
            let abs: Vec<f64> = r.iter().map(|x| (x - m).abs()).collect();
            let acf = (1..=10)
                .map(|k| correlation(&abs[k..], &abs[..abs.len() - k]))
                .sum::<f64>()
                / 10.0;
            assert!(acf > 0.02, "{}: mean |r| autocorrelation {acf}", spec.id);
            clustering.push(acf);
        }
        assert!(
            mean(&clustering) > 0.08,
            "mean clustering {}",
            mean(&clustering)
        );
    }

    #[test]
    fn ln_matches_std_closely() {
        let mut x = 1e-300;
        while x < 1e300 {
            // Around √2, where the mantissa reduction switches, and others.
            let root2 = std::f64::consts::SQRT_2;
            let below = f64::from_bits(root2.to_bits() - 1);
            for y in [x, x * 1.2345, x * root2, x * below, x * 1.5, x * 1.99] {
                let (ours, std) = (ln(y), y.ln());
                assert!(
                    (ours - std).abs() <= 4e-16 * std.abs().max(1.0),
                    "ln({y}) {ours} vs {std}"
                );
            }
            x *= 7.3;
        }
        assert_eq!(ln(1.0), 0.0);
        let tiny = f64::from_bits(1); // smallest subnormal
        assert!((ln(tiny) - tiny.ln()).abs() < 1e-12);
    }

    #[test]
    fn normals_have_unit_moments() {
        let mut rng = Shocks::new(1);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let m = mean(&xs);
        let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n as f64;
        assert!(
            m.abs() < 0.01 && (var - 1.0).abs() < 0.02,
            "mean {m} var {var}"
        );
        let ts: Vec<f64> = (0..n).map(|_| rng.student_t()).collect();
        let var = ts.iter().map(|x| x * x).sum::<f64>() / n as f64;
        assert!((var - 1.0).abs() < 0.05, "t variance {var}");
    }

    #[test]
    fn splitmix_matches_reference() {
        // Reference values of SplitMix64 seeded with 1234567.
        let mut rng = Shocks::new(1234567);
        let got: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(
            got,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423
            ]
        );
    }

    #[test]
    #[ignore = "timing; run with --ignored --nocapture"]
    fn timing() {
        let start = std::time::Instant::now();
        let t = sample_table();
        eprintln!(
            "sample_table(): {:?}, version {}",
            start.elapsed(),
            t.version()
        );
    }
}

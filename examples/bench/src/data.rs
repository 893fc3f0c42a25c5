//! Benchmark inputs: a synthetic price table and the batches built from it,
//! in both the host's types (for `engine.call`) and the SDK's (for the native
//! call), plus the check that wasm and native answers agree.
//!
//! The bundled sample table has only 24 instruments, so the compute scenario
//! uses its own: `instruments × dates` closes from a fixed-seed generator (a
//! market factor plus noise, like real returns but without their meaning),
//! loaded through the host's own [`PriceTable`] and cut with
//! [`PriceTable::window`] exactly as a request would be.

use anyhow::{Context as _, bail};
use chrono::{Datelike, NaiveDate, Weekday};
use riskhost_engine::bindings as host;
use riskhost_market::{PriceTable, PriceWindow};

/// SplitMix64: a tiny, fixed, seedable generator.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Approximately standard normal (Irwin–Hall: twelve uniforms minus six).
    pub(crate) fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.uniform()).sum::<f64>() - 6.0
    }
}

/// `n` instrument ids, `SYN000`, `SYN001`, … (sorted as strings).
pub(crate) fn instrument_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("SYN{i:03}")).collect()
}

/// A table of `instruments × dates` closes on consecutive weekdays from
/// 2020-01-06, from a fixed seed: every run benchmarks the same data.
pub(crate) fn synthetic_table(instruments: usize, dates: usize) -> anyhow::Result<PriceTable> {
    let ids = instrument_ids(instruments);
    let calendar = weekdays(NaiveDate::from_ymd_opt(2020, 1, 6), dates)?;
    let mut rng = Rng::new(0x5eed_f00d_be0c_0001);
    // Per instrument: start level, daily volatility, market loading.
    let shape: Vec<(f64, f64, f64)> = ids
        .iter()
        .map(|_| {
            (
                10.0 + 490.0 * rng.uniform(),
                0.005 + 0.025 * rng.uniform(),
                -0.3 + 1.2 * rng.uniform(),
            )
        })
        .collect();
    let mut levels: Vec<f64> = shape.iter().map(|s| s.0).collect();
    let mut rows = Vec::with_capacity(instruments * dates);
    for (d, date) in calendar.iter().enumerate() {
        let market = rng.normal();
        for (i, id) in ids.iter().enumerate() {
            if d > 0 {
                let (_, vol, loading) = shape[i];
                let own = (1.0 - loading * loading).max(0.0).sqrt();
                let r = vol * (loading * market + own * rng.normal());
                levels[i] *= 1.0 + r.max(-0.5);
            }
            rows.push((*date, id.clone(), levels[i]));
        }
    }
    PriceTable::from_rows(rows).context("the synthetic price table is invalid")
}

fn weekdays(start: Option<NaiveDate>, n: usize) -> anyhow::Result<Vec<NaiveDate>> {
    let mut date = start.context("invalid start date")?;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        if !matches!(date.weekday(), Weekday::Sat | Weekday::Sun) {
            out.push(date);
        }
        date = date.succ_opt().context("date overflow")?;
    }
    Ok(out)
}

/// One job, independent of the binding types: positions as
/// `(series index, quantity)` and the parameter values in `info()` order.
#[derive(Debug, Clone)]
pub(crate) struct JobSpec {
    pub(crate) id: String,
    pub(crate) positions: Vec<(u32, f64)>,
    pub(crate) params: Vec<f64>,
}

/// The same batch in the host's and in the SDK's types.
pub(crate) struct Batch {
    pub(crate) host_market: host::MarketData,
    pub(crate) host_jobs: Vec<host::Job>,
    pub(crate) sdk_market: riskhost_sdk::MarketData,
    pub(crate) sdk_jobs: Vec<riskhost_sdk::Job>,
}

impl Batch {
    /// Converts a price window as the host's scoring path does (series in
    /// window order, dates as days since 1970-01-01).
    pub(crate) fn new(window: &PriceWindow, jobs: &[JobSpec]) -> Batch {
        let as_of = window.as_of.format("%Y-%m-%d").to_string();
        let dates = window.epoch_days();
        let host_market = host::MarketData {
            as_of: as_of.clone(),
            dates: dates.clone(),
            series: window
                .series
                .iter()
                .map(|s| host::PriceSeries {
                    instrument: s.instrument.clone(),
                    closes: s.closes.clone(),
                })
                .collect(),
        };
        let sdk_market = riskhost_sdk::MarketData {
            as_of,
            dates,
            series: window
                .series
                .iter()
                .map(|s| riskhost_sdk::PriceSeries {
                    instrument: s.instrument.clone(),
                    closes: s.closes.clone(),
                })
                .collect(),
        };
        let host_jobs = jobs
            .iter()
            .enumerate()
            .map(|(k, j)| host::Job {
                portfolio: host::Portfolio {
                    id: j.id.clone(),
                    positions: j
                        .positions
                        .iter()
                        .map(|&(series, quantity)| host::Position { series, quantity })
                        .collect(),
                },
                params: j.params.clone(),
                seed: k as u64,
            })
            .collect();
        let sdk_jobs = jobs
            .iter()
            .enumerate()
            .map(|(k, j)| riskhost_sdk::Job {
                portfolio: riskhost_sdk::Portfolio {
                    id: j.id.clone(),
                    positions: j
                        .positions
                        .iter()
                        .map(|&(series, quantity)| riskhost_sdk::Position { series, quantity })
                        .collect(),
                },
                params: j.params.clone(),
                seed: k as u64,
            })
            .collect();
        Batch {
            host_market,
            host_jobs,
            sdk_market,
            sdk_jobs,
        }
    }

    /// Bytes of closes handed to the model per call.
    pub(crate) fn close_bytes(&self) -> usize {
        self.host_market
            .series
            .iter()
            .map(|s| s.closes.len() * size_of::<f64>())
            .sum()
    }
}

/// `count` portfolios each holding every one of `series` instruments, with
/// different, non-zero quantities (some short) per portfolio.
pub(crate) fn portfolios(count: usize, series: u32, params: &[f64], seed: u64) -> Vec<JobSpec> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|p| JobSpec {
            id: format!("bench-{p:03}"),
            positions: (0..series)
                .map(|s| {
                    let size = 1.0 + (rng.uniform() * 1000.0).floor();
                    let sign = if rng.uniform() < 0.2 { -1.0 } else { 1.0 };
                    (s, sign * size)
                })
                .collect(),
            params: params.to_vec(),
        })
        .collect()
}

/// How closely wasm and native answers agree.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Agreement {
    /// Numbers compared (values and breakdown entries).
    pub(crate) compared: usize,
    /// Of those, bit-for-bit equal.
    pub(crate) identical: usize,
    /// Largest relative difference seen.
    pub(crate) max_relative: f64,
}

impl Agreement {
    pub(crate) fn describe(&self) -> String {
        if self.identical == self.compared {
            format!("wasm = native bit for bit ({} numbers)", self.compared)
        } else {
            format!(
                "wasm = native: {}/{} numbers bit for bit, max rel. diff {:.1e}",
                self.identical, self.compared, self.max_relative
            )
        }
    }
}

/// Largest relative difference accepted between wasm and native.
pub(crate) const TOLERANCE: f64 = 1e-12;

/// Checks that the wasm and native results are the same scores (every job
/// must succeed), bit for bit or within [`TOLERANCE`] relative.
pub(crate) fn compare(
    wasm: &[Result<host::Score, host::ModelError>],
    native: &[Result<riskhost_sdk::Score, riskhost_sdk::ModelError>],
) -> anyhow::Result<Agreement> {
    if wasm.len() != native.len() {
        bail!(
            "wasm returned {} results, native {}",
            wasm.len(),
            native.len()
        );
    }
    let mut agreement = Agreement::default();
    for (job, (w, n)) in wasm.iter().zip(native).enumerate() {
        let (w, n) = match (w, n) {
            (Ok(w), Ok(n)) => (w, n),
            (w, n) => {
                bail!("job {job}: a benchmark job must succeed; wasm gave {w:?}, native {n:?}")
            }
        };
        if unit_name(&w.unit) != native_unit_name(&n.unit) {
            bail!(
                "job {job}: unit {:?} (wasm) vs {:?} (native)",
                w.unit,
                n.unit
            );
        }
        if w.breakdown.len() != n.breakdown.len() {
            bail!(
                "job {job}: {} breakdown entries (wasm) vs {} (native)",
                w.breakdown.len(),
                n.breakdown.len()
            );
        }
        let pairs = std::iter::once(("value", w.value, n.value)).chain(
            w.breakdown
                .iter()
                .zip(&n.breakdown)
                .map(|(a, b)| (a.name.as_str(), a.value, b.value)),
        );
        for (k, (what, a, b)) in pairs.enumerate() {
            if k > 0 && what != n.breakdown[k - 1].name {
                bail!(
                    "job {job}: breakdown entry {k} is {what} (wasm) vs {} (native)",
                    n.breakdown[k - 1].name
                );
            }
            agreement.compared += 1;
            if a.to_bits() == b.to_bits() {
                agreement.identical += 1;
                continue;
            }
            let relative = (a - b).abs() / a.abs().max(b.abs());
            agreement.max_relative = agreement.max_relative.max(relative);
            if relative.is_nan() || relative > TOLERANCE {
                bail!(
                    "job {job}: {what} is {a:e} in wasm but {b:e} natively (relative difference {relative:.1e} > {TOLERANCE:e})"
                );
            }
        }
    }
    Ok(agreement)
}

fn unit_name(unit: &host::Unit) -> &'static str {
    match unit {
        host::Unit::CurrencyAmount => "currency-amount",
        host::Unit::Probability => "probability",
        host::Unit::Ratio => "ratio",
        host::Unit::Index => "index",
        host::Unit::BasisPoints => "basis-points",
    }
}

fn native_unit_name(unit: &riskhost_sdk::Unit) -> &'static str {
    match unit {
        riskhost_sdk::Unit::CurrencyAmount => "currency-amount",
        riskhost_sdk::Unit::Probability => "probability",
        riskhost_sdk::Unit::Ratio => "ratio",
        riskhost_sdk::Unit::Index => "index",
        riskhost_sdk::Unit::BasisPoints => "basis-points",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_table_is_deterministic_and_complete() -> anyhow::Result<()> {
        let a = synthetic_table(3, 20)?;
        let b = synthetic_table(3, 20)?;
        assert_eq!(a.version(), b.version());
        assert_eq!(a.instruments(), ["SYN000", "SYN001", "SYN002"]);
        assert_eq!(a.len_dates(), 20);
        let ids: Vec<&str> = a.instruments().iter().map(String::as_str).collect();
        let w = a.window(&ids, a.last_date(), 10)?;
        assert_eq!(w.dates.len(), 11);
        assert!(
            w.series
                .iter()
                .all(|s| s.closes.iter().all(|c| c.is_finite() && *c > 0.0))
        );
        Ok(())
    }

    #[test]
    fn portfolios_differ_and_hold_every_instrument() {
        let p = portfolios(3, 5, &[0.99, 1.0, 4.0], 1);
        assert_eq!(p.len(), 3);
        assert!(p.iter().all(|j| j.positions.len() == 5));
        assert_ne!(p[0].positions, p[1].positions);
        assert!(p.iter().flat_map(|j| &j.positions).all(|&(_, q)| q != 0.0));
    }
}

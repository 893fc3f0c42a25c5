//! Model compute, wasm vs native.
//!
//! Each example model scores portfolios of 50 positions on 50 distinct
//! instruments over 500 daily returns (confidence 0.99, horizon 1 day), in
//! batches of 1 and of 100 jobs (100 portfolios with different quantities).
//! The wasm side is `ModelEngine::call`, a fresh instance per call as in the
//! product; the native side is the same crate's `Model::score_batch`
//! compiled for the host. Both get the same data and their answers must
//! agree (bit for bit or within 1e-12 relative) before anything is timed.
//! Reported: time per job, and the wasm/native ratio (goal ≤ 1.3×).
//!
//! Batch 1 carries the fixed cost of a call (instantiation, copying the
//! market data into the instance, computing each instrument's returns once,
//! copying results out); batch 100 spreads it over 100 jobs, so comparing
//! the two separates the fixed cost from the per-job cost.

use std::hint::black_box;

use anyhow::Context as _;
use riskhost_engine::Determinism;
use riskhost_market::PriceWindow;

use super::{Context, native};
use crate::data::{self, Batch};
use crate::harness::measure_pair;
use crate::report::{Row, micros, number};

const SCENARIO: &str = "model compute";
pub(crate) const INSTRUMENTS: usize = 50;
pub(crate) const LOOKBACK: usize = 500;
/// More dates than the window needs, so the window is a cut, not the table.
const DATES: usize = LOOKBACK + 21;
const PARAMS: [f64; 3] = [0.99, 1.0, LOOKBACK as f64];
const BATCHES: [usize; 2] = [1, 100];
/// Largest accepted wasm/native ratio of the time per job.
pub(crate) const GOAL_RATIO: f64 = 1.3;

/// The scenario's market: every instrument of the synthetic table over the
/// last `LOOKBACK` returns, cut as the host cuts a request's window.
pub(crate) fn market_window() -> anyhow::Result<PriceWindow> {
    let table = data::synthetic_table(INSTRUMENTS, DATES)?;
    let ids: Vec<&str> = table.instruments().iter().map(String::as_str).collect();
    table
        .window(&ids, table.last_date(), LOOKBACK)
        .context("cannot cut the price window")
}

pub(crate) fn run(ctx: &Context) -> anyhow::Result<Vec<Row>> {
    let window = market_window()?;
    let specs = data::portfolios(BATCHES[1], INSTRUMENTS as u32, &PARAMS, 42);
    let determinism = Determinism {
        as_of_unix_seconds: window
            .as_of
            .and_time(chrono::NaiveTime::MIN)
            .and_utc()
            .timestamp(),
        seed: 0,
    };

    let mut rows = Vec::new();
    for model in &ctx.models {
        let native = native(model.name)?;
        // Per batch size: (wasm, native) median time per job, in µs.
        let mut per_job = Vec::new();
        for jobs in BATCHES {
            let batch = Batch::new(&window, &specs[..jobs]);
            let wasm_results = ctx
                .engine
                .call(
                    &model.loaded,
                    &batch.host_market,
                    &batch.host_jobs,
                    determinism,
                )
                .with_context(|| format!("{}: the wasm call failed", model.name))?
                .results;
            let native_results = native(&batch.sdk_market, &batch.sdk_jobs);
            let agreement = data::compare(&wasm_results, &native_results).with_context(|| {
                format!("{} (batch {jobs}): wasm and native disagree", model.name)
            })?;

            let (native_stats, wasm_stats) = measure_pair(
                ctx.sampling,
                || {
                    Ok(native(
                        black_box(&batch.sdk_market),
                        black_box(&batch.sdk_jobs),
                    ))
                },
                || {
                    ctx.engine
                        .call(
                            &model.loaded,
                            &batch.host_market,
                            &batch.host_jobs,
                            determinism,
                        )
                        .map_err(anyhow::Error::from)
                },
            )?;
            let (native_stats, wasm_stats) = (native_stats.per(jobs), wasm_stats.per(jobs));

            let ratio = wasm_stats.median.as_secs_f64() / native_stats.median.as_secs_f64();
            per_job.push((micros(wasm_stats.median), micros(native_stats.median)));
            let variant = |side: &str| format!("{} · batch {jobs} · {side}", model.name);
            rows.push(
                Row::timed(SCENARIO, variant("native"), native_stats, "µs/job").note(format!(
                    "{INSTRUMENTS} positions, {LOOKBACK} returns, {} KiB of closes per call",
                    batch.close_bytes() / 1024
                )),
            );
            rows.push(
                Row::timed(SCENARIO, variant("wasm"), wasm_stats, "µs/job")
                    .reference(format!(
                        "{ratio:.2}× native ({} µs)",
                        number(micros(native_stats.median))
                    ))
                    .goal(&format!("≤ {GOAL_RATIO}× native"), ratio <= GOAL_RATIO)
                    .note(agreement.describe()),
            );
        }
        // Batch 1 pays the fixed cost of a call once for one job; batch 100
        // spreads it over 100, so the difference is (99/100 of) the fixed cost.
        if let [(wasm_1, native_1), (wasm_100, native_100)] = per_job[..] {
            let fixed = |one: f64, hundred: f64| (one - hundred) * 100.0 / 99.0;
            let (wasm_fixed, native_fixed) = (fixed(wasm_1, wasm_100), fixed(native_1, native_100));
            rows.push(
                Row::reading(
                    SCENARIO,
                    format!("{} · fixed cost per call · wasm", model.name),
                    wasm_fixed,
                    "µs/call",
                )
                .reference(format!(
                    "{:.2}× native {} µs; wasm − native {} µs",
                    wasm_fixed / native_fixed,
                    number(native_fixed),
                    number(wasm_fixed - native_fixed)
                ))
                .goal("≤ 2× native", wasm_fixed <= 2.0 * native_fixed)
                .note("derived: (batch 1 − batch 100 per job) × 100/99".to_owned()),
            );
        }
    }
    Ok(rows)
}

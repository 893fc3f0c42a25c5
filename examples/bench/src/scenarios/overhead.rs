//! Instantiate + call overhead.
//!
//! The smallest job a model accepts (1 position, `lookback_days` = 2, the
//! parameter's minimum, confidence 0.5, horizon 1) in a batch of one, through
//! `ModelEngine::call` and natively. The model's own work is negligible, so
//! the wasm time is what every call pays for a fresh sandboxed instance
//! (store, WASI context, instantiation from the pool, lowering the inputs,
//! lifting the results); the difference from native is that overhead.
//! Goal: at most 20 µs per call over native.
//!
//! The same job is then run against the compute scenario's market data (50
//! series × 501 closes, all sent to the model although the job holds one):
//! the extra time over the small market is the cost of moving that data into
//! the instance, which every call of the compute scenario pays.

use std::hint::black_box;

use anyhow::Context as _;
use riskhost_engine::Determinism;

use super::{Context, native};
use crate::data::{self, Batch, JobSpec};
use crate::harness::measure_pair;
use crate::report::{Row, micros, number};

const SCENARIO: &str = "call overhead";
const PARAMS: [f64; 3] = [0.5, 1.0, 2.0];
/// Largest accepted wasm − native time per call, in µs.
pub(crate) const GOAL_MICROS: f64 = 20.0;

pub(crate) fn run(ctx: &Context) -> anyhow::Result<Vec<Row>> {
    let table = data::synthetic_table(1, 10)?;
    let ids: Vec<&str> = table.instruments().iter().map(String::as_str).collect();
    let window = table
        .window(&ids, table.last_date(), 2)
        .context("cannot cut the price window")?;
    let job = JobSpec {
        id: "overhead".into(),
        positions: vec![(0, 100.0)],
        params: PARAMS.to_vec(),
    };
    let small = Batch::new(&window, std::slice::from_ref(&job));
    let large = Batch::new(&super::compute::market_window()?, &[job]);
    let shapes = [
        ("1 job, 1 position, 2 returns", &small),
        ("same job, market of 50 series × 501 closes", &large),
    ];
    let determinism = Determinism {
        as_of_unix_seconds: 0,
        seed: 0,
    };

    let mut rows = Vec::new();
    for model in &ctx.models {
        // The wasm − native overhead with the small market, once measured.
        let mut base_overhead = None;
        for (shape, batch) in shapes {
            let (mut native_row, mut wasm_row, overhead) =
                measure_shape(ctx, model, shape, batch, determinism)?;
            match base_overhead {
                None => {
                    base_overhead = Some(overhead);
                    wasm_row = wasm_row.goal(
                        &format!("≤ {GOAL_MICROS} µs over native"),
                        overhead <= GOAL_MICROS,
                    );
                }
                Some(base) => {
                    wasm_row.reference = format!(
                        "native + {} µs (small market + {} µs)",
                        number(overhead),
                        number(overhead - base)
                    );
                    native_row.note =
                        "native reads the market in place; wasm copies it into the instance"
                            .to_owned();
                }
            }
            rows.push(native_row);
            rows.push(wasm_row);
        }
    }
    Ok(rows)
}

/// Measures one job shape natively and through the engine: the native row,
/// the wasm row and the difference of their medians in µs.
fn measure_shape(
    ctx: &Context,
    model: &super::Model,
    shape: &str,
    batch: &Batch,
    determinism: Determinism,
) -> anyhow::Result<(Row, Row, f64)> {
    let native = native(model.name)?;
    let call = || {
        ctx.engine.call(
            &model.loaded,
            &batch.host_market,
            &batch.host_jobs,
            determinism,
        )
    };
    let wasm_results = call()
        .with_context(|| format!("{}: the wasm call failed", model.name))?
        .results;
    let agreement = data::compare(&wasm_results, &native(&batch.sdk_market, &batch.sdk_jobs))
        .with_context(|| format!("{}: wasm and native disagree", model.name))?;

    let (native_stats, wasm_stats) = measure_pair(
        ctx.sampling,
        || {
            Ok(native(
                black_box(&batch.sdk_market),
                black_box(&batch.sdk_jobs),
            ))
        },
        || call().map_err(anyhow::Error::from),
    )?;
    let overhead = micros(wasm_stats.median) - micros(native_stats.median);
    let variant = |side: &str| format!("{} · {shape} · {side}", model.name);
    let native_row = Row::timed(SCENARIO, variant("native"), native_stats, "µs/call");
    let wasm_row = Row::timed(SCENARIO, variant("wasm"), wasm_stats, "µs/call")
        .reference(format!("native + {} µs", number(overhead)))
        .note(agreement.describe());
    Ok((native_row, wasm_row, overhead))
}

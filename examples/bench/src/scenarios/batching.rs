//! Scenario 5: dynamic batching on (`--dynamic-batch-max 64`, the default)
//! against off (`--dynamic-batch-max 1`): single `POST /v1/score` requests
//! at 64 connections in a closed loop, every request a new portfolio (a
//! memo miss), so every request is a model call and batching is what
//! differs.

use std::sync::Arc;

use super::{Context, load_row, ratio, score_body};
use crate::loadgen::Target;
use crate::report::{Row, number};
use crate::service::Scratch;

const SCENARIO: &str = "dynamic batching";

pub(crate) fn run(ctx: &Context) -> anyhow::Result<Vec<Row>> {
    let data = Scratch::new("batching")?;
    let dist = ctx.dist_arg();
    let mut outcomes = Vec::new();
    for max in ["1", "64"] {
        let server = ctx.host.serve(
            &data.join(&format!("max-{max}")),
            &[
                "--plugins",
                dist.as_str(),
                "--watch",
                "false",
                "--dynamic-batch-max",
                max,
            ],
        )?;
        let target = Target::post(
            server.addr,
            "/v1/score",
            Arc::new(|n: u64| score_body("var-historical", 1_000_000 + n)),
        );
        let outcome = ctx
            .rt
            .block_on(crate::loadgen::run(&target, ctx.load.closed(64)))?;
        outcomes.push((max, outcome));
    }
    let off = super::http::median(&outcomes[0].1.throughput);
    Ok(outcomes
        .iter()
        .map(|(max, outcome)| {
            let on = *max != "1";
            let row = load_row(
                SCENARIO,
                format!(
                    "{} (--dynamic-batch-max {max}) · 64 conns, all misses",
                    if on { "on" } else { "off" }
                ),
                outcome,
            );
            if on {
                let rps = super::http::median(&outcome.throughput);
                row.reference(format!("{} off ({} req/s)", ratio(rps, off), number(off)))
            } else {
                row.reference("the reference".to_owned())
            }
        })
        .collect())
}

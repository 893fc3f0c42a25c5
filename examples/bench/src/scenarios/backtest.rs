//! Scenario 10: backtests, timed client-side as one `POST /v1/backtests`
//! each, every day a memo miss: 1 model × 1 portfolio × 1,000 days (goal:
//! under 1 s), and 10 portfolios × 2,500 days. The reference is the same
//! scores as single `POST /v1/score` requests as of each day, closed loop at
//! 64 connections, in the same run.
//!
//! The data is a synthetic table of 20 instruments × 2,800 weekdays (the
//! bundled sample holds about 1,040 days), loaded with `--prices`.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use serde_json::{Value, json};

use super::{Context, ratio};
use crate::data::{Rng, instrument_ids, synthetic_table};
use crate::loadgen::{Plan, Stop, Target};
use crate::report::{Row, number};
use crate::service::Scratch;

const SCENARIO: &str = "backtest";
const INSTRUMENTS: usize = 20;
const DATES: usize = 2_800;
const POSITIONS: usize = 10;
/// var-historical's default lookback: the first tested day needs 250 returns.
const LOOKBACK: usize = 250;

/// Portfolio `n`: POSITIONS distinct instruments (3k mod 20 differs for
/// every k < 10), a third of them short.
fn portfolio(rng: &mut Rng, ids: &[String], n: usize) -> Value {
    let positions: Vec<Value> = (0..POSITIONS)
        .map(|k| {
            let id = &ids[(n * 7 + k * 3) % ids.len()];
            let quantity = 1 + (rng.next_u64() % 400) as i64;
            json!({"instrument": id, "quantity": if k % 3 == 2 { -quantity } else { quantity }})
        })
        .collect();
    json!({"id": format!("book-{n}"), "positions": positions})
}

pub(crate) fn run(ctx: &Context) -> anyhow::Result<Vec<Row>> {
    let scratch = Scratch::new("backtest")?;
    let table = synthetic_table(INSTRUMENTS, DATES)?;
    let prices = scratch.join("prices.csv");
    table.write_csv(std::io::BufWriter::new(
        std::fs::File::create(&prices).context("cannot create the prices file")?,
    ))?;
    let calendar = table.calendar().to_vec();
    let dist = ctx.dist_arg();
    let prices_arg = prices.display().to_string();
    let server = ctx.host.serve(
        &scratch.join("data"),
        &[
            "--plugins",
            dist.as_str(),
            "--prices",
            prices_arg.as_str(),
            "--watch",
            "false",
            "--events",
            "none",
            "--cache-max-mib",
            "1024",
        ],
    )?;
    let ids = instrument_ids(INSTRUMENTS);
    let mut rng = Rng::new(11);
    let books: Vec<Value> = (0..10).map(|n| portfolio(&mut rng, &ids, n)).collect();

    let runs = ctx.load.runs.min(3);
    let mut rows = Vec::new();
    for (portfolios, days) in [(1usize, 1_000usize), (10, 2_500)] {
        let (from, to) = (calendar[LOOKBACK], calendar[LOOKBACK + days - 1]);
        let mut times = Vec::new();
        for run in 0..runs {
            // A confidence of its own per run: every day misses the memo.
            let confidence = 0.99 - 0.0001 * (run + 1 + portfolios) as f64;
            let body = json!({"model": "var-historical", "portfolios": &books[..portfolios],
                              "from": from, "to": to, "params": {"confidence": confidence}});
            let started = Instant::now();
            let (status, answer) =
                server.post("/v1/backtests", Bytes::from(serde_json::to_vec(&body)?))?;
            times.push(started.elapsed().as_secs_f64());
            if status != 201 {
                bail!(
                    "POST /v1/backtests: HTTP {status}: {}",
                    String::from_utf8_lossy(&answer)
                );
            }
            check(&answer, portfolios, days)?;
        }
        let row = Row::sampled(
            SCENARIO,
            format!("{portfolios} portfolio(s) × {days} days · var-historical"),
            &times,
            "s",
        );
        let rate = (portfolios * days) as f64 / row.median;

        // The reference: the same (portfolio, day) scores as single requests.
        let bodies: Arc<Vec<Bytes>> = Arc::new(
            (0..portfolios * days)
                .map(|i| {
                    let (p, d) = (i % portfolios, i / portfolios);
                    let body = json!({"model": "var-historical", "portfolio": &books[p],
                                      "as_of": calendar[LOOKBACK + d], "params": {"confidence": 0.98}});
                    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
                })
                .collect(),
        );
        let count = bodies.len() as u64;
        let target = Target::post(
            server.addr,
            "/v1/score",
            Arc::new(move |n: u64| bodies[(n % count) as usize].clone()),
        );
        let plan = Plan {
            connections: 64,
            warm_up: std::time::Duration::ZERO,
            rep: Stop::Count(count),
            reps: 1,
            rate: None,
        };
        let outcome = ctx.rt.block_on(crate::loadgen::run(&target, plan))?;
        let single_rate = outcome.throughput.first().copied().unwrap_or(0.0);
        let mut row = row
            .reference(format!(
                "{} scores/s, {} single requests ({} scores/s at 64 conns, {} errors)",
                number(rate),
                ratio(rate, single_rate),
                number(single_rate),
                outcome.errors
            ))
            .note(format!(
                "one POST, every day a memo miss, timed by the client; {runs} runs"
            ));
        if portfolios == 1 {
            let met = row.median < 1.0;
            row = row.goal("< 1 s", met);
        }
        rows.push(row);
    }
    drop(server);
    Ok(rows)
}

/// Every portfolio of the answer must be tested on every day.
fn check(answer: &[u8], portfolios: usize, days: usize) -> anyhow::Result<()> {
    let answer: Value = serde_json::from_slice(answer)?;
    let tested = answer["portfolios"]
        .as_array()
        .context("backtest answer without portfolios")?;
    if tested.len() != portfolios {
        bail!(
            "{} portfolios in the answer, expected {portfolios}",
            tested.len()
        );
    }
    for p in tested {
        if p["observations"].as_u64() != Some(days as u64) {
            bail!("a portfolio was not tested on {days} days: {}", p["error"]);
        }
    }
    Ok(())
}

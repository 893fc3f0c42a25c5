//! Scenario 13: a risk run (`POST /v1/runs`, `--runs local`) of every
//! portfolio stored in PostgreSQL × 3 models, against the batch API on the
//! same portfolios and data in the same run: evaluations/s of each, the
//! time from submission to the first chunk's results, and the server's
//! RSS as the run grows (the memo bounded to 16 MiB, so memory that grows
//! with the run would be the run's own).
//!
//! The portfolios are scenario 4's (20 positions on the bundled
//! instruments), copied into a schema of their own, `bench_<pid>`.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use serde_json::{Value, json};

use super::batch::{Schema, portfolios};
use super::{Context, ratio};
use crate::report::{Row, number};
use crate::service::{Scratch, Server};

const SCENARIO: &str = "runs";
const MODELS: [&str; 3] = ["var-historical", "var-parametric", "es-historical"];
/// Portfolios per batch request: the batch API's bound.
const PER_BATCH: usize = 10_000;

pub(crate) fn run(ctx: &Context) -> anyhow::Result<Vec<Row>> {
    let n = if ctx.quick { 20_000 } else { 100_000 };
    let cells = n * MODELS.len();
    let portfolios = portfolios(n);
    let schema = Schema::create(ctx, &portfolios)?;
    let data = Scratch::new("runs")?;
    let dist = ctx.dist_arg();
    let serve = |name: &str, chunk_size: &str| {
        ctx.host.serve(
            &data.join(name),
            &[
                "--plugins",
                dist.as_str(),
                "--watch",
                "false",
                "--events",
                "none",
                "--cache-max-mib",
                "16",
                "--data-source",
                "postgres",
                "--postgres-url",
                schema.url.as_str(),
                "--postgres-schema",
                schema.name.as_str(),
                "--run-chunk-size",
                chunk_size,
            ],
        )
    };

    // The batch API: the same portfolios by id, 10,000 per request, one
    // request after another; every cell a miss (a confidence of its own).
    let server = serve("batch", "256")?;
    let started = Instant::now();
    for slice in portfolios.chunks(PER_BATCH) {
        let ids: Vec<Value> = slice.iter().map(|p| json!({"id": p.id})).collect();
        let body = json!({"models": MODELS, "portfolios": ids, "params": {"confidence": 0.981}});
        let answer: Value = serde_json::from_slice(
            &server.post_ok("/v1/score/batch", Bytes::from(serde_json::to_vec(&body)?))?,
        )?;
        let results = answer["results"].as_array().context("no results")?;
        if results.len() != slice.len() * MODELS.len()
            || results.iter().any(|r| r.get("error").is_some())
        {
            bail!("a batch answer is incomplete or has failed cells");
        }
    }
    let batch_secs = started.elapsed().as_secs_f64();
    let batch_rate = cells as f64 / batch_secs;
    drop(server);
    let mut rows = vec![
        Row::reading(
            SCENARIO,
            format!("batch API · {n} stored portfolios × 3 models, {PER_BATCH} per request"),
            batch_secs,
            "s",
        )
        .reference(format!(
            "{} evaluations/s (the reference)",
            number(batch_rate)
        ))
        .note(
            "portfolios by id from PostgreSQL, all misses, requests one after another".to_owned(),
        ),
    ];
    // The run at the default chunk size (1,000) and at 256, each on a
    // fresh server and with a confidence of its own.
    for (k, chunk_size) in ["256", "1000"].into_iter().enumerate() {
        let server = serve(&format!("run-{chunk_size}"), chunk_size)?;
        rows.extend(run_once(
            &server,
            n,
            chunk_size,
            0.982 + 0.001 * k as f64,
            batch_rate,
        )?);
    }
    drop(schema);
    Ok(rows)
}

/// A run of every stored portfolio on `server`, followed by polling its
/// status: its rows.
fn run_once(
    server: &Server,
    n: usize,
    chunk_size: &str,
    confidence: f64,
    batch_rate: f64,
) -> anyhow::Result<Vec<Row>> {
    let rss_before = server.rss_mib()?;
    let body = json!({"models": MODELS, "portfolios": {"all": true}, "params": {"confidence": confidence}});
    let submitted = Instant::now();
    let (status, answer) = server.post("/v1/runs", Bytes::from(serde_json::to_vec(&body)?))?;
    if status != 202 {
        bail!(
            "POST /v1/runs answered {status}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    let planned = submitted.elapsed();
    let run: Value = serde_json::from_slice(&answer)?;
    let id = run["id"].as_str().context("no run id")?.to_owned();
    let mut first_result = None;
    let mut rss_samples: Vec<(f64, f64)> = Vec::new();
    let finished = loop {
        let (_, body) = server.get(&format!("/v1/runs/{id}"))?;
        let view: Value = serde_json::from_slice(&body)?;
        let total = view["chunks"]["total"].as_f64().unwrap_or(1.0);
        let done = view["chunks"]["done"].as_f64().unwrap_or(0.0);
        if done >= 1.0 && first_result.is_none() {
            first_result = Some(submitted.elapsed());
        }
        rss_samples.push((done / total, server.rss_mib()?));
        match view["status"].as_str() {
            Some("completed") => break submitted.elapsed(),
            Some("running" | "planned") => {}
            other => bail!("the run ended {other:?}: {view}"),
        }
        if submitted.elapsed() > Duration::from_secs(1800) {
            bail!("the run did not finish in 30 minutes: {view}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let view: Value = serde_json::from_slice(&server.get(&format!("/v1/runs/{id}"))?.1)?;
    // Every stored portfolio: the bench's and the few `db seed` stores.
    let stored = view["portfolios"].as_u64().unwrap_or(0) as usize;
    let run_cells = stored * MODELS.len();
    if stored < n || view["cells"] != json!({"ok": run_cells, "failed": 0}) {
        bail!(
            "the run scored {} cells, expected {run_cells} scores: {view}",
            view["cells"]
        );
    }
    let run_rate = run_cells as f64 / finished.as_secs_f64();
    let rss_at = |fraction: f64| {
        rss_samples
            .iter()
            .find(|(done, _)| *done >= fraction)
            .map(|(_, rss)| *rss)
            .unwrap_or(0.0)
    };
    let peak = rss_samples.iter().map(|(_, rss)| *rss).fold(0.0, f64::max);
    let chunks = view["chunks"]["total"].as_u64().unwrap_or(0);
    let label = format!("run · chunks of {chunk_size}");
    Ok(vec![
        Row::reading(
            SCENARIO,
            format!("{label} · all stored ({stored}) × 3 models, 2 workers"),
            finished.as_secs_f64(),
            "s",
        )
        .reference(format!(
            "{} evaluations/s, {} the batch API",
            number(run_rate),
            ratio(run_rate, batch_rate)
        ))
        .goal("≥ 0.8× the batch API", run_rate >= 0.8 * batch_rate)
        .note(format!(
            "submit to completed, polled every 20 ms; {chunks} chunks; planning answered in {:.0} ms",
            planned.as_secs_f64() * 1e3
        )),
        Row::reading(
            SCENARIO,
            format!("{label} · submit → first chunk's results"),
            first_result.unwrap_or(finished).as_secs_f64() * 1e3,
            "ms",
        ),
        Row::reading(SCENARIO, format!("{label} · server RSS, peak"), peak, "MiB")
            .reference(format!(
                "{rss_before:.0} MiB before the run; {:.0} at 10 %, {:.0} at 50 %, {:.0} at 90 % of chunks",
                rss_at(0.1),
                rss_at(0.5),
                rss_at(0.9)
            ))
            .note("memo bounded to 16 MiB (--cache-max-mib 16)".to_owned()),
    ])
}

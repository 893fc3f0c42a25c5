//! Scenario 13: a risk run (`POST /v1/runs`) of every portfolio stored in
//! PostgreSQL × 3 models, against the batch API on the same portfolios and
//! data in the same run: evaluations/s of each, the time from submission
//! to the first chunk's results, and the servers' RSS as the run grows
//! (the memo bounded to 16 MiB, so memory that grows with the run would be
//! the run's own). The run goes once on one process (`--runs local`),
//! once on NATS JetStream with one replica and once with two replicas on
//! this machine (`--runs nats`: state in PostgreSQL, results written to
//! ClickHouse, `RISKHOST_BENCH_CLICKHOUSE_URL`, and the NATS at
//! `RISKHOST_BENCH_NATS_URL`, default 127.0.0.1:4222).
//!
//! The portfolios are scenario 4's (20 positions on the bundled
//! instruments), 1,000,000 of them (20,000 with `--quick`), copied into a
//! schema of their own, `bench_<pid>`.

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
    let n = if ctx.quick { 20_000 } else { 1_000_000 };
    let cells = n * MODELS.len();
    let portfolios = portfolios(n);
    let schema = Schema::create(ctx, &portfolios)?;
    let data = Scratch::new("runs")?;
    let dist = ctx.dist_arg();
    let nats = NatsPlace::new();
    let serve = |name: &str, chunk_size: &str, backend: &[&str]| {
        let mut args = vec![
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
        ];
        args.extend_from_slice(backend);
        ctx.host.serve(&data.join(name), &args)
    };

    // The batch API: the same portfolios by id, 10,000 per request, one
    // request after another; every cell a miss (a confidence of its own).
    let server = serve("batch", "1000", &[])?;
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
    // Each run on fresh servers at the default chunk size (1,000), with a
    // confidence of its own, so every cell is a miss.
    let server = serve("local", "1000", &[])?;
    let (local, _) = run_once(&[&server], "local · 1 process", n, 0.982, batch_rate)?;
    rows.extend(local);
    drop(server);
    let one = nats.args("one");
    let server = serve(
        "nats-1",
        "1000",
        &one.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let (nats_one, one_rate) = run_once(&[&server], "nats · 1 replica", n, 0.983, batch_rate)?;
    rows.extend(nats_one);
    drop(server);
    let two = nats.args("two");
    let two: Vec<&str> = two.iter().map(String::as_str).collect();
    let (a, b) = (
        serve("nats-2a", "1000", &two)?,
        serve("nats-2b", "1000", &two)?,
    );
    let (nats_two, two_rate) = run_once(&[&a, &b], "nats · 2 replicas", n, 0.984, batch_rate)?;
    rows.extend(nats_two);
    rows.push(
        Row::reading(
            SCENARIO,
            "nats · 2 replicas against 1 on this 2-core machine".to_owned(),
            two_rate / one_rate,
            "×",
        )
        .goal("≥ 0.95× (no throughput lost)", two_rate >= 0.95 * one_rate),
    );
    drop((a, b));
    drop(schema);
    Ok(rows)
}

/// Where the NATS runs of this scenario live: a stream prefix per pass on
/// the bench's NATS, and one ClickHouse database, dropped at the end.
struct NatsPlace {
    nats: String,
    clickhouse: String,
    database: String,
    prefixes: std::cell::RefCell<Vec<String>>,
}

impl NatsPlace {
    fn new() -> NatsPlace {
        NatsPlace {
            nats: std::env::var("RISKHOST_BENCH_NATS_URL")
                .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned()),
            clickhouse: std::env::var("RISKHOST_BENCH_CLICKHOUSE_URL")
                .unwrap_or_else(|_| "http://127.0.0.1:8123".to_owned()),
            database: format!("bench_runs_{}", std::process::id()),
            prefixes: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// The flags of a pass named `pass`; its replicas share them.
    fn args(&self, pass: &str) -> Vec<String> {
        let prefix = format!("bench-{}-{pass}", std::process::id());
        self.prefixes.borrow_mut().push(prefix.clone());
        [
            "--runs",
            "nats",
            "--nats-url",
            &self.nats,
            "--nats-prefix",
            &prefix,
            "--clickhouse-url",
            &self.clickhouse,
            "--clickhouse-database",
            &self.database,
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

impl Drop for NatsPlace {
    /// Drops the results database and deletes each pass's stream through
    /// the JetStream API, spoken as plain NATS protocol.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let _ = std::process::Command::new("curl")
            .args(["-s", "--data-binary"])
            .arg(format!("DROP DATABASE IF EXISTS {}", self.database))
            .arg(format!("{}/", self.clickhouse))
            .output();
        let Some(address) = self.nats.strip_prefix("nats://") else {
            return;
        };
        for prefix in self.prefixes.borrow().iter() {
            let Ok(mut socket) = std::net::TcpStream::connect(address) else {
                return;
            };
            let _ = socket.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buffer = [0u8; 4096];
            let _ = socket.read(&mut buffer);
            let stream = format!("{}_RUNS", prefix.to_ascii_uppercase());
            let _ = socket.write_all(
                format!("CONNECT {{\"verbose\":false}}\r\nPUB $JS.API.STREAM.DELETE.{stream} _INBOX.bench 0\r\n\r\nPING\r\n")
                    .as_bytes(),
            );
            let _ = socket.read(&mut buffer);
        }
    }
}

/// A run of every stored portfolio submitted to the first of `servers`
/// (which all work it), followed by polling its status: its rows and its
/// evaluations/s.
fn run_once(
    servers: &[&Server],
    label: &str,
    n: usize,
    confidence: f64,
    batch_rate: f64,
) -> anyhow::Result<(Vec<Row>, f64)> {
    let server = servers[0];
    let rss = || -> anyhow::Result<f64> {
        let mut total = 0.0;
        for server in servers {
            total += server.rss_mib()?;
        }
        Ok(total)
    };
    let rss_before = rss()?;
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
        rss_samples.push((done / total, rss()?));
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
    let workers = 2 * servers.len();
    let rows = vec![
        Row::reading(
            SCENARIO,
            format!("run, {label} · all stored ({stored}) × 3 models, chunks of 1,000, {workers} workers"),
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
            format!("run, {label} · submit → first chunk's results"),
            first_result.unwrap_or(finished).as_secs_f64() * 1e3,
            "ms",
        ),
        Row::reading(SCENARIO, format!("run, {label} · RSS of its servers, peak"), peak, "MiB")
            .reference(format!(
                "{rss_before:.0} MiB before the run; {:.0} at 10 %, {:.0} at 50 %, {:.0} at 90 % of chunks",
                rss_at(0.1),
                rss_at(0.5),
                rss_at(0.9)
            ))
            .note("memo bounded to 16 MiB (--cache-max-mib 16)".to_owned()),
    ];
    Ok((rows, run_rate))
}

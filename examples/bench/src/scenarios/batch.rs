//! Scenario 4: 10,000 portfolios × 3 models (20 positions each on the
//! bundled instruments, default parameters otherwise) in one
//! `POST /v1/score/batch`, every cell a memo miss — with the embedded data
//! source (positions inline), and with PostgreSQL (portfolios by id, and
//! positions inline with prices from PostgreSQL) — against the same 30,000
//! evaluations as single `POST /v1/score` requests at 64 connections.
//!
//! PostgreSQL (127.0.0.1:5432, database `test`, or `RISKHOST_BENCH_POSTGRES`)
//! gets a schema of its own, `bench_<pid>`, set up with `riskhost db migrate`
//! and `riskhost db seed`, the 10,000 portfolios copied in with `psql`, and
//! dropped at the end.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use serde_json::{Value, json};

use super::{Context, load_row, ratio};
use crate::data::Rng;
use crate::loadgen::{Plan, Stop, Target};
use crate::report::{Row, number};
use crate::service::Scratch;

const SCENARIO: &str = "batch";
const MODELS: [&str; 3] = ["var-historical", "var-parametric", "es-historical"];
const PORTFOLIOS: usize = 10_000;
const POSITIONS: usize = 20;
const CELLS: usize = PORTFOLIOS * MODELS.len();

pub(crate) struct Portfolio {
    pub(crate) id: String,
    positions: Vec<(String, i64)>,
}

/// `n` portfolios of `POSITIONS` distinct bundled instruments, the same
/// for every run (a fixed seed).
pub(crate) fn portfolios(n: usize) -> Vec<Portfolio> {
    let table = riskhost_market::sample_table();
    portfolios_on(table.instruments(), n)
}

/// `n` portfolios of `POSITIONS` distinct instruments among `names`.
fn portfolios_on(names: &[String], n: usize) -> Vec<Portfolio> {
    let mut rng = Rng::new(7);
    (0..n)
        .map(|i| {
            // A partial Fisher–Yates shuffle picks POSITIONS distinct names.
            let mut pool = names.to_vec();
            let positions = (0..POSITIONS.min(pool.len()))
                .map(|k| {
                    let j = k + (rng.next_u64() as usize) % (pool.len() - k);
                    pool.swap(k, j);
                    let sign = if rng.next_u64().is_multiple_of(2) {
                        1
                    } else {
                        -1
                    };
                    let quantity = sign * (1 + (rng.next_u64() % 500) as i64);
                    (pool[k].clone(), quantity)
                })
                .collect();
            Portfolio {
                id: format!("bench-{i:07}"),
                positions,
            }
        })
        .collect()
}

fn inline(p: &Portfolio) -> Value {
    json!({
        "id": p.id,
        "positions": p.positions.iter()
            .map(|(instrument, quantity)| json!({"instrument": instrument, "quantity": quantity}))
            .collect::<Vec<_>>(),
    })
}

/// The PostgreSQL schema of this run; dropped on drop.
pub(crate) struct Schema {
    pub(crate) url: String,
    pub(crate) name: String,
}

impl Schema {
    pub(crate) fn create(ctx: &Context, portfolios: &[Portfolio]) -> anyhow::Result<Schema> {
        let url = std::env::var("RISKHOST_BENCH_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let schema = Schema {
            url,
            name: format!("bench_{}", std::process::id()),
        };
        for task in ["migrate", "seed"] {
            let out = Command::new(&ctx.host.bin)
                .args(["db", task, "--postgres-url", &schema.url])
                .args(["--postgres-schema", &schema.name])
                .env("RUST_LOG", "warn")
                .output()
                .context("cannot run riskhost db")?;
            if !out.status.success() {
                bail!(
                    "riskhost db {task} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let ids: String = portfolios.iter().map(|p| format!("{}\n", p.id)).collect();
        schema.copy(&format!("{}.portfolios (id)", schema.name), ids)?;
        let mut rows = String::new();
        for p in portfolios {
            for (instrument, quantity) in &p.positions {
                rows.push_str(&format!("{},{instrument},{quantity}\n", p.id));
            }
        }
        schema.copy(&format!("{}.positions", schema.name), rows)?;
        // Fresh statistics: right after a bulk load the planner still
        // thinks the tables empty, and at a million portfolios a batch's
        // lookup by id then took over a minute instead of milliseconds.
        let analyzed = Command::new("psql")
            .args([&schema.url, "-q", "-v", "ON_ERROR_STOP=1", "-c"])
            .arg(format!(
                "ANALYZE {s}.portfolios; ANALYZE {s}.positions",
                s = schema.name
            ))
            .status()
            .context("cannot run psql")?;
        if !analyzed.success() {
            bail!("ANALYZE of the bench schema failed");
        }
        Ok(schema)
    }

    /// `\copy TABLE FROM STDIN CSV` with `csv` as the input.
    fn copy(&self, table: &str, csv: String) -> anyhow::Result<()> {
        let mut child = Command::new("psql")
            .args([&self.url, "-q", "-v", "ON_ERROR_STOP=1", "-c"])
            .arg(format!("\\copy {table} FROM STDIN CSV"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot run psql")?;
        child
            .stdin
            .take()
            .context("no stdin")?
            .write_all(csv.as_bytes())?;
        if !child.wait()?.success() {
            bail!("psql \\copy into {table} failed");
        }
        Ok(())
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([&self.url, "-q", "-c"])
            .arg(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub(crate) fn run(ctx: &Context) -> anyhow::Result<Vec<Row>> {
    let portfolios = portfolios(PORTFOLIOS);
    let schema = Schema::create(ctx, &portfolios)?;
    let data = Scratch::new("batch")?;
    let dist = ctx.dist_arg();
    let common = [
        "--plugins",
        dist.as_str(),
        "--watch",
        "false",
        "--events",
        "none",
        "--cache-max-mib",
        "1024",
    ];
    let embedded = ctx.host.serve(&data.join("embedded"), &common)?;
    let mut pg_args = common.to_vec();
    pg_args.extend([
        "--data-source",
        "postgres",
        "--postgres-url",
        schema.url.as_str(),
        "--postgres-schema",
        schema.name.as_str(),
    ]);
    let postgres = ctx.host.serve(&data.join("postgres"), &pg_args)?;

    let inline_all: Vec<Value> = portfolios.iter().map(inline).collect();
    let by_id: Vec<Value> = portfolios.iter().map(|p| json!({"id": p.id})).collect();
    let variants = [
        ("embedded data, positions inline", &embedded, &inline_all),
        ("PostgreSQL, portfolios by id", &postgres, &by_id),
        (
            "PostgreSQL prices, positions inline",
            &postgres,
            &inline_all,
        ),
    ];
    let runs = ctx.load.runs.min(3);
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for run in 0..runs {
        for (v, (name, server, list)) in variants.iter().enumerate() {
            // A confidence of its own per run and variant: every cell misses.
            let confidence = 0.99 - 0.0001 * (run * variants.len() + v + 1) as f64;
            let body =
                json!({"models": MODELS, "portfolios": list, "params": {"confidence": confidence}});
            let body = Bytes::from(serde_json::to_vec(&body)?);
            let started = Instant::now();
            let answer = server.post_ok("/v1/score/batch", body)?;
            times[v].push(started.elapsed().as_secs_f64());
            check(name, &answer)?;
        }
    }

    // The same evaluations as single requests, closed loop at 64 connections.
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        portfolios
            .iter()
            .flat_map(|p| {
                MODELS.map(|model| {
                    let body = json!({"model": model, "portfolio": inline(p),
                                      "params": {"confidence": 0.98}});
                    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
                })
            })
            .collect(),
    );
    let single = Target::post(
        embedded.addr,
        "/v1/score",
        Arc::new(move |n: u64| bodies[n as usize % CELLS].clone()),
    );
    let plan = Plan {
        connections: 64,
        warm_up: std::time::Duration::ZERO,
        rep: Stop::Count(CELLS as u64),
        reps: 1,
        rate: None,
    };
    let outcome = ctx.rt.block_on(crate::loadgen::run(&single, plan))?;
    let single_rate = outcome.throughput.first().copied().unwrap_or(0.0);

    let mut rows = Vec::new();
    for (v, (name, _, _)) in variants.iter().enumerate() {
        let row = Row::sampled(SCENARIO, format!("{name} · batch API"), &times[v], "s");
        let rate = CELLS as f64 / row.median;
        rows.push(
            row.reference(format!(
                "{} evaluations/s, {} single requests",
                number(rate),
                ratio(rate, single_rate)
            ))
            .note(format!(
                "one POST of {PORTFOLIOS} portfolios × {} models ({POSITIONS} positions), all misses; {runs} runs",
                MODELS.len()
            )),
        );
    }
    let mut row = load_row(
        SCENARIO,
        "embedded data · single requests, 64 conns".to_owned(),
        &outcome,
    );
    row.median = CELLS as f64 / single_rate.max(1e-9);
    row.min = None;
    row.max = None;
    row.unit = "s";
    rows.push(row.reference(format!(
        "{} evaluations/s (the reference)",
        number(single_rate)
    )));
    drop((embedded, postgres));
    drop(schema);
    rows.extend(wide(ctx, &data, &common)?);
    Ok(rows)
}

/// Instruments and dates of the wide batch's synthetic table.
const WIDE_INSTRUMENTS: usize = 50;
const WIDE_DATES: usize = 800;

/// Issue 20's batch: the same 10,000 × 3 cells on a synthetic table of 50
/// instruments × 800 dates (lookback 250), timed by curl (a C client, JSON
/// in and out, the answer written to a file), all misses and then the same
/// body again (all hits), with breakdowns and without. The reference is
/// the model CPU the server's own metrics count for the batch.
fn wide(ctx: &Context, data: &Scratch, common: &[&str]) -> anyhow::Result<Vec<Row>> {
    let table = crate::data::synthetic_table(WIDE_INSTRUMENTS, WIDE_DATES)?;
    let prices = data.join("wide-prices.csv");
    table.write_csv(std::fs::File::create(&prices)?)?;
    let portfolios = portfolios_on(table.instruments(), PORTFOLIOS);
    let prices_arg = prices.display().to_string();
    let mut args = common.to_vec();
    args.extend(["--prices", prices_arg.as_str()]);
    let server = ctx.host.serve(&data.join("wide"), &args)?;
    let list: Vec<Value> = portfolios.iter().map(inline).collect();
    let body_path = data.join("wide-body.json");
    let answer_path = data.join("wide-answer.json");
    let url = format!("http://{}/v1/score/batch", server.addr);

    let runs = ctx.load.runs.min(3);
    // (breakdown, all hits), in the order of `shape_index`.
    let shapes = [(true, false), (true, true), (false, false), (false, true)];
    let shape_index = |breakdown: bool, hit: bool| 2 * usize::from(!breakdown) + usize::from(hit);
    let mut seconds: Vec<Vec<f64>> = vec![Vec::new(); shapes.len()];
    let mut model_cpu: Vec<Vec<f64>> = vec![Vec::new(); shapes.len()];
    let mut answer_bytes = vec![0u64; shapes.len()];
    for run in 0..runs {
        for breakdown in [true, false] {
            // A confidence of its own per run and shape: the first POST misses
            // every cell, the second (the same body) hits every cell.
            let confidence = 0.97 - 0.0001 * (2 * run + usize::from(breakdown)) as f64;
            let body = json!({"models": MODELS, "portfolios": list, "breakdown": breakdown,
                              "params": {"confidence": confidence, "lookback_days": 250}});
            std::fs::write(&body_path, serde_json::to_vec(&body)?)?;
            for hit in [false, true] {
                let shape = shape_index(breakdown, hit);
                let (cpu_before, _) = server.model_cpu(None)?;
                seconds[shape].push(curl_post(&url, &body_path, &answer_path)?);
                model_cpu[shape].push(server.model_cpu(None)?.0 - cpu_before);
                let answer = std::fs::read(&answer_path)?;
                answer_bytes[shape] = answer.len() as u64;
                check("wide batch", &answer)?;
                check_tier(&answer, hit)?;
            }
        }
    }
    drop(server);

    let mut rows = Vec::new();
    let miss_rate = |breakdown: bool| -> f64 {
        let shape = shape_index(breakdown, false);
        CELLS as f64 / Row::sampled("", String::new(), &seconds[shape], "").median
    };
    let with_breakdowns = miss_rate(true);
    for (shape, (breakdown, hit)) in shapes.iter().enumerate() {
        let what = format!(
            "{} instruments × {} dates, lookback 250 · {} · breakdowns {} · timed by curl",
            WIDE_INSTRUMENTS,
            WIDE_DATES,
            if *hit {
                "all hits (the same body again)"
            } else {
                "all misses"
            },
            if *breakdown { "on" } else { "off" },
        );
        let row = Row::sampled(SCENARIO, what, &seconds[shape], "s");
        let rate = CELLS as f64 / row.median;
        let cpu = Row::sampled("", String::new(), &model_cpu[shape], "").median;
        let mut row = row
            .reference(format!(
                "{} evaluations/s; model CPU {} s ({} µs/cell), {} of the time",
                number(rate),
                number(cpu),
                number(cpu * 1e6 / CELLS as f64),
                ratio(cpu, CELLS as f64 / rate),
            ))
            .note(format!(
                "one POST of {PORTFOLIOS} portfolios × {} models ({POSITIONS} positions), answer {} MB; {runs} runs",
                MODELS.len(),
                number(answer_bytes[shape] as f64 / 1e6),
            ));
        if !hit {
            row = if *breakdown {
                row.goal("≥ 60,000 evaluations/s", rate >= 60_000.0)
            } else {
                row.goal(
                    "≥ 2× the same with breakdowns, ≥ 120,000 evaluations/s",
                    rate >= 2.0 * with_breakdowns && rate >= 120_000.0,
                )
            };
        }
        rows.push(row);
    }
    Ok(rows)
}

/// POSTs the file `body` to `url` with curl and writes the answer to
/// `answer`; returns curl's own `time_total` in seconds.
fn curl_post(url: &str, body: &std::path::Path, answer: &std::path::Path) -> anyhow::Result<f64> {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "-o"])
        .arg(answer)
        .args([
            "-w",
            "%{time_total}",
            "-H",
            "content-type: application/json",
        ])
        .args([
            "-H",
            &format!("authorization: Bearer {}", crate::loadgen::bearer_token()),
        ])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(url)
        .output()
        .context("cannot run curl (the batch scenario's client; apt install curl)")?;
    if !out.status.success() {
        bail!(
            "curl POST {url} failed: {} {}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&std::fs::read(answer).unwrap_or_default())
                .chars()
                .take(300)
                .collect::<String>()
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<f64>()
        .with_context(|| {
            format!(
                "curl's time_total: {:?}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
}

/// Every cell came from the memo (`hit`) or none did.
fn check_tier(answer: &[u8], hit: bool) -> anyhow::Result<()> {
    let answer: Value = serde_json::from_slice(answer)?;
    let results = answer["results"].as_array().context("no results")?;
    let cached = results
        .iter()
        .filter(|r| r["cached"] == json!(true))
        .count();
    let expected = if hit { results.len() } else { 0 };
    if cached != expected {
        bail!(
            "{cached} of {} cells were memo hits, expected {expected}",
            results.len()
        );
    }
    Ok(())
}

/// Every cell of a batch answer must be a score.
fn check(name: &str, answer: &[u8]) -> anyhow::Result<()> {
    let answer: Value = serde_json::from_slice(answer)?;
    let results = answer["results"]
        .as_array()
        .context("batch answer without results")?;
    if results.len() != CELLS {
        bail!("{name}: {} results, expected {CELLS}", results.len());
    }
    if let Some(bad) = results.iter().find(|r| r.get("error").is_some()) {
        bail!("{name}: a cell failed: {bad}");
    }
    Ok(())
}

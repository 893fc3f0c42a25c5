//! Scenario 3: `POST /v1/score` on the memo's three paths — L1 hit (in
//! process), L2 hit (Redis `MGET`, the in-process tier disabled) and miss
//! (a model call; with and without the Redis tier) — against the trivial
//! axum endpoint of [`crate::reference`], at 64 and at 1,000 connections in
//! a closed loop, then at 1,000 connections at a fixed rate (half the
//! closed-loop throughput) for latencies free of coordinated omission. Every
//! response's `cache_tier` is counted, so a row that claims L2 hits shows
//! that the answers were L2 hits. One more row, L1 hits from a server with
//! `--access-log all`, prices a log line per answer (the default logs only
//! 4xx and 5xx answers).
//! At 64 connections the miss is also measured against the native model
//! ([`Reference::native`]), whose values must agree with riskhost's first.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, bail};

use super::{Context, load_row, ratio, score_body};
use crate::loadgen::{Outcome, Plan, Target};
use crate::reference::Reference;
use crate::report::{Row, number};
use crate::service::{Redis, Scratch};

const SCENARIO: &str = "HTTP single score";
const MODEL: &str = "var-historical";
/// The first quantity of the miss bodies, far from the fixed body's 10.
const UNIQUE_FROM: u64 = 1_000_000;
/// Positions in the variants of [`run`]; the logging-cost row runs at 64
/// connections only.
const L1_HIT: usize = 0;
const L2_HIT: usize = 1;
const MISS: usize = 2;
const LOGGING_COST: usize = 4;

/// How many answers came from each tier.
#[derive(Default)]
pub(crate) struct Tiers {
    l1: AtomicU64,
    l2: AtomicU64,
    computed: AtomicU64,
}

impl Tiers {
    pub(crate) fn counting(self: &Arc<Self>, target: Target) -> Target {
        let tiers = Arc::clone(self);
        target.inspect(Arc::new(move |body: &[u8], _: std::time::Instant| {
            let body = String::from_utf8_lossy(body);
            let counter = if body.contains(r#""cache_tier":"l1""#) {
                &tiers.l1
            } else if body.contains(r#""cache_tier":"l2""#) {
                &tiers.l2
            } else {
                &tiers.computed
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }))
    }

    pub(crate) fn take(&self) -> String {
        format!(
            "answers (warm-up included): l1 {}, l2 {}, computed {}",
            self.l1.swap(0, Ordering::Relaxed),
            self.l2.swap(0, Ordering::Relaxed),
            self.computed.swap(0, Ordering::Relaxed)
        )
    }
}

pub(crate) fn run(ctx: &Context) -> anyhow::Result<Vec<Row>> {
    let redis = Redis::start()?;
    let data = Scratch::new("http")?;
    let dist = ctx.dist_arg();
    let common = ["--plugins", dist.as_str(), "--watch", "false"];
    let with_redis = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = common.iter().map(|s| s.to_string()).collect();
        args.extend(["--redis-url".into(), redis.url.clone()]);
        args.extend(["--redis-prefix".into(), "bench-http".into()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let tiered_args = with_redis(&[]);
    let tiered = ctx.host.serve(&data.join("tiered"), &refs(&tiered_args))?;
    let no_l1_args = with_redis(&["--cache-max-mib", "0"]);
    let no_l1 = ctx.host.serve(&data.join("no-l1"), &refs(&no_l1_args))?;
    let local = ctx.host.serve(&data.join("local"), &common)?;
    // The same as `tiered` with a `request finished` line per answer.
    let logging_args = with_redis(&["--access-log", "all"]);
    let logging = ctx
        .host
        .serve(&data.join("logging"), &refs(&logging_args))?;
    let reference = Reference::start()?;
    let native = Reference::native(Arc::new(riskhost_market::sample_table()))?;

    let fixed = score_body(MODEL, 10);
    // Computes once and fills both tiers, so the hit rows only hit.
    tiered.post_ok("/v1/score", fixed.clone())?;
    no_l1.post_ok("/v1/score", fixed.clone())?;
    logging.post_ok("/v1/score", fixed.clone())?;
    let agreement = same_value(
        &local.post_ok("/v1/score", score_body(MODEL, 7))?,
        &native_answer(ctx, &native, score_body(MODEL, 7))?,
    )?;

    let unique =
        || -> crate::loadgen::BodyFn { Arc::new(|n: u64| score_body(MODEL, UNIQUE_FROM + n)) };
    let tiers = Arc::new(Tiers::default());
    let reference_target = Target::post_fixed(reference.addr, "/v1/score", fixed.clone());
    let native_target = Target::post(native.addr, "/v1/score", unique());
    let variants: Vec<(&str, Target)> = vec![
        (
            "L1 hit (in-process tier)",
            tiers.counting(Target::post_fixed(tiered.addr, "/v1/score", fixed.clone())),
        ),
        (
            "L2 hit (Redis MGET, in-process tier off)",
            tiers.counting(Target::post_fixed(no_l1.addr, "/v1/score", fixed.clone())),
        ),
        (
            "miss, in-process tier only (model call)",
            tiers.counting(Target::post(local.addr, "/v1/score", unique())),
        ),
        (
            "miss with the Redis tier (model call + SET)",
            tiers.counting(Target::post(tiered.addr, "/v1/score", unique())),
        ),
        (
            "L1 hit with --access-log all (a log line per answer)",
            tiers.counting(Target::post_fixed(logging.addr, "/v1/score", fixed.clone())),
        ),
    ];

    let mut rows = Vec::new();
    for connections in [64, 1000] {
        let plan = ctx.load.closed(connections);
        let base = measure(ctx, &reference_target, plan)?;
        let base_rps = median(&base.throughput);
        rows.push(
            load_row(
                SCENARIO,
                format!("reference: trivial axum JSON endpoint · {connections} conns"),
                &base,
            )
            .reference("1.00× (the ceiling)".to_owned()),
        );
        // The miss's own ceiling, at the goal's 64 connections.
        let native_rps = if connections == 64 {
            let outcome = measure(ctx, &native_target, plan)?;
            let rps = median(&outcome.throughput);
            let mut row = load_row(
                SCENARIO,
                format!("reference: var-historical native, inline in axum · {connections} conns"),
                &outcome,
            )
            .reference(format!(
                "{} reference ({} req/s); the ceiling of a miss",
                ratio(rps, base_rps),
                number(base_rps)
            ));
            row.note = format!("{} · {agreement}", row.note);
            rows.push(row);
            Some(rps)
        } else {
            None
        };
        for (i, (name, target)) in variants.iter().enumerate() {
            if i == LOGGING_COST && connections != 64 {
                continue;
            }
            let outcome = measure(ctx, target, plan)?;
            let rps = median(&outcome.throughput);
            let mut row = load_row(SCENARIO, format!("{name} · {connections} conns"), &outcome)
                .reference(format!(
                    "{} reference ({} req/s)",
                    ratio(rps, base_rps),
                    number(base_rps)
                ));
            if connections == 64 {
                row = issue_goal(row, i, &outcome, rps / base_rps, rps, native_rps);
            }
            row.note = format!("{} · {}", row.note, tiers.take());
            rows.push(row);
            // The fixed-rate check of the platform riskhost replaces
            // (1,000 users, p95 < 200 ms, < 0.1 % errors): L1 hit and miss.
            if connections == 1000 && (i == L1_HIT || i == MISS) {
                let rate = (rps / 2.0).max(100.0);
                let paced = Plan {
                    rate: Some(rate),
                    ..plan
                };
                let outcome = measure(ctx, target, paced)?;
                let p95 = outcome.ms(0.95);
                let mut row = load_row(
                    SCENARIO,
                    format!(
                        "{name} · {connections} conns at a fixed {} req/s",
                        number(rate)
                    ),
                    &outcome,
                )
                .goal("p95 < 200 ms, 0 errors", p95 < 200.0 && outcome.errors == 0)
                .reference(format!(
                    "half the closed-loop rate; latency from each request's due time, p95 {} ms",
                    number(p95)
                ));
                row.note = format!("{} · {}", row.note, tiers.take());
                rows.push(row);
            }
        }
    }
    drop((tiered, no_l1, local, logging));
    Ok(rows)
}

/// The goals of issue 20 at 64 connections: an L1 hit at ≥ 0.6× the
/// trivial endpoint with p99 ≤ 5 ms, an L2 hit at ≥ 0.4×, a miss at ≥ 0.6×
/// the native model. `variant` is a position in the variants of [`run`].
fn issue_goal(
    row: Row,
    variant: usize,
    outcome: &Outcome,
    to_trivial: f64,
    rps: f64,
    native_rps: Option<f64>,
) -> Row {
    let no_errors = outcome.errors == 0;
    match (variant, native_rps) {
        (L1_HIT, _) => row.goal(
            "≥ 0.6× reference, p99 ≤ 5 ms, 0 errors",
            to_trivial >= 0.6 && outcome.ms(0.99) <= 5.0 && no_errors,
        ),
        (L2_HIT, _) => row.goal("≥ 0.4× reference, 0 errors", to_trivial >= 0.4 && no_errors),
        (MISS, Some(native)) => {
            let reference = row.reference.clone();
            row.reference(format!(
                "{reference}; {} native ({} req/s)",
                ratio(rps, native),
                number(native)
            ))
            .goal("≥ 0.6× native, 0 errors", rps >= 0.6 * native && no_errors)
        }
        _ => row,
    }
}

/// Checks that riskhost and the native reference valued one portfolio the
/// same (within the bench's tolerance), and says how closely.
fn same_value(riskhost: &[u8], native: &[u8]) -> anyhow::Result<String> {
    let value = |body: &[u8], who: &str| -> anyhow::Result<f64> {
        let answer: serde_json::Value = serde_json::from_slice(body)?;
        answer["value"]
            .as_f64()
            .with_context(|| format!("{who}'s answer has no value: {answer}"))
    };
    let (ours, theirs) = (value(riskhost, "riskhost")?, value(native, "native")?);
    let relative = (ours - theirs).abs() / theirs.abs().max(f64::MIN_POSITIVE);
    if relative > crate::data::TOLERANCE {
        bail!("riskhost valued the portfolio at {ours}, the native model at {theirs}");
    }
    Ok(if ours.to_bits() == theirs.to_bits() {
        "values equal bit for bit".to_owned()
    } else {
        format!("values agree within {relative:.1e}")
    })
}

fn native_answer(
    ctx: &Context,
    native: &Reference,
    body: bytes::Bytes,
) -> anyhow::Result<bytes::Bytes> {
    let request = crate::loadgen::request(native.addr, hyper::Method::POST, "/v1/score", body);
    let (status, answer) = ctx.rt.block_on(request)?;
    if status != 200 {
        bail!(
            "the native reference answered {status}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    Ok(answer)
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

pub(crate) fn measure(ctx: &Context, target: &Target, plan: Plan) -> anyhow::Result<Outcome> {
    let outcome = ctx.rt.block_on(crate::loadgen::run(target, plan))?;
    if outcome.ok == 0 {
        bail!(
            "no successful request to {}{} (first error: {})",
            target.addr,
            target.path,
            outcome.first_error.as_deref().unwrap_or("none")
        );
    }
    Ok(outcome)
}

pub(crate) fn median(values: &[f64]) -> f64 {
    Row::sampled("", String::new(), values, "").median
}

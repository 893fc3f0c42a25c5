//! Scenario 11: a fleet. Three `riskhost serve` replicas share one model
//! registry in PostgreSQL (`--model-store postgres`, their own schema);
//! while one connection per replica scores `var-historical` in a closed loop,
//! 20 new versions (`--quick`: 5) are uploaded, each through the next
//! replica in turn. Per swap: the time from sending the upload to the first
//! response carrying the new digest from the *last* replica to serve it.
//! Every request of the whole run must succeed.
//!
//! Beside it, what the registry adds to one replica's swap: the upload's
//! round trip with `--model-store local` and with `postgres`, one replica
//! each, the same versions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hyper::Method;

use super::hotswap::{digest_of, wait_for, with_custom_section};
use super::{Context, score_body};
use crate::loadgen::{Stop, Target};
use crate::report::{Row, number};
use crate::service::{Scratch, Server};

const SCENARIO: &str = "fleet";
const MODEL: &str = "var-historical";
const REPLICAS: usize = 3;
/// One closed-loop connection per replica: 3 in all, about scenario 6's 4
/// on its one server, on the same 2 cores that also run the 3 replicas.
const CONNECTIONS_PER_REPLICA: usize = 1;

/// A schema of its own, dropped on drop.
struct Schema {
    url: String,
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args([
                self.url.as_str(),
                "-qc",
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
            ])
            .output();
    }
}

/// `PUT /v1/models/{MODEL}`; the time to the answer.
fn upload(server: &Server, ctx: &Context, bytes: Vec<u8>) -> anyhow::Result<Duration> {
    let sent = Instant::now();
    let (status, body) = ctx.rt.block_on(crate::loadgen::request_typed(
        server.addr,
        Method::PUT,
        &format!("/v1/models/{MODEL}"),
        "application/wasm",
        Bytes::from(bytes),
    ))?;
    if status != 201 {
        bail!(
            "upload: HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(500)])
        );
    }
    Ok(sent.elapsed())
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

pub(crate) fn run(ctx: &Context) -> anyhow::Result<Vec<Row>> {
    let swaps = if ctx.quick { 5 } else { 20 };
    let original = std::fs::read(ctx.dist.join(format!("{MODEL}.wasm")))?;
    let schema = Schema {
        url: std::env::var("RISKHOST_BENCH_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
        name: format!("bench_fleet_{}", std::process::id()),
    };
    let plugins = Scratch::new("fleet-plugins")?;
    let data = Scratch::new("fleet-data")?;
    let plugins_arg = plugins.path().display().to_string();
    let replica = |id: &str, store: &str| {
        let mut args = vec![
            "--plugins",
            plugins_arg.as_str(),
            "--cache-ttl-secs",
            "0",
            "--model-store",
            store,
        ];
        if store == "postgres" {
            args.extend([
                "--postgres-url",
                schema.url.as_str(),
                "--postgres-schema",
                schema.name.as_str(),
                "--replica-id",
                id,
            ]);
        }
        ctx.host.serve(&data.path().join(id), &args)
    };

    // What the registry adds to one replica's swap: one replica alone,
    // local store vs registry, the same sequence of versions.
    let mut added = Vec::new();
    for store in ["local", "postgres"] {
        let alone = replica(&format!("alone-{store}"), store)?;
        let mut times = Vec::new();
        for i in 0..=swaps {
            let bytes = with_custom_section(&original, &format!("alone-{i}"));
            let took = upload(&alone, ctx, bytes)?;
            if i > 0 {
                times.push(took.as_secs_f64() * 1000.0);
            }
        }
        times.sort_by(f64::total_cmp);
        added.push((store, quantile(&times, 0.5)));
    }
    // The single postgres replica's schema is the fleet's too: start clean.
    drop(Schema {
        url: schema.url.clone(),
        name: schema.name.clone(),
    });

    let servers: Vec<Server> = (0..REPLICAS)
        .map(|i| replica(&format!("replica-{i}"), "postgres"))
        .collect::<anyhow::Result<_>>()?;
    let first = with_custom_section(&original, "fleet-0");
    let first_digest = riskhost_engine::ModelEngine::digest(&first);
    upload(&servers[0], ctx, first)?;
    // The load starts once every replica serves the model.
    for server in &servers {
        wait_for(
            || {
                server.get("/v1/models").is_ok_and(|(status, body)| {
                    status == 200 && String::from_utf8_lossy(&body).contains(&first_digest)
                })
            },
            "every replica to serve the first version",
        )?;
    }

    // Per replica: each digest it answered with, first seen when.
    let seen: Vec<Arc<Mutex<HashMap<String, Instant>>>> =
        (0..REPLICAS).map(|_| Arc::default()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = servers
        .iter()
        .zip(&seen)
        .map(|(server, seen)| {
            let recorder = Arc::clone(seen);
            let target = Target::post(
                server.addr,
                "/v1/score",
                Arc::new(|n: u64| score_body(MODEL, 1 + n % 1000)),
            )
            .inspect(Arc::new(move |body: &[u8], at: Instant| {
                if let Some(d) = digest_of(body)
                    && let Ok(mut seen) = recorder.lock()
                {
                    seen.entry(d).or_insert(at);
                }
            }));
            let stop = Arc::clone(&stop);
            ctx.rt.spawn(async move {
                let mut phases = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    phases.push(
                        crate::loadgen::phase(
                            &target,
                            2,
                            Stop::After(Duration::from_millis(250)),
                            None,
                        )
                        .await,
                    );
                }
                phases
            })
        })
        .collect();
    let first_seen = |replica: usize, digest: &str| {
        seen[replica]
            .lock()
            .ok()
            .and_then(|s| s.get(digest).copied())
    };

    let mut convergence = Vec::new();
    for i in 1..=swaps {
        let bytes = with_custom_section(&original, &format!("fleet-{i}"));
        let digest = riskhost_engine::ModelEngine::digest(&bytes);
        let sent = Instant::now();
        upload(&servers[i % REPLICAS], ctx, bytes)?;
        wait_for(
            || (0..REPLICAS).all(|r| first_seen(r, &digest).is_some()),
            "every replica's first answer from the new version",
        )?;
        let last = (0..REPLICAS)
            .filter_map(|r| first_seen(r, &digest))
            .max()
            .context("no replica answered")?;
        convergence.push(last.saturating_duration_since(sent).as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
    for load in loads {
        for phase in ctx.rt.block_on(load).context("a load task failed")? {
            let phase = phase?;
            ok += phase.ok;
            errors += phase.errors;
            first_error = first_error.or(phase.first_error);
        }
    }
    drop(servers);

    convergence.sort_by(f64::total_cmp);
    let p99 = quantile(&convergence, 0.99);
    let note = format!(
        "{swaps} uploads through the replicas in turn, {CONNECTIONS_PER_REPLICA} conn per replica scoring throughout: {} requests, {errors} failed{}",
        ok + errors,
        first_error
            .map(|e| format!(" (first: {})", e.chars().take(120).collect::<String>()))
            .unwrap_or_default()
    );
    let (local, registry) = (added[0].1, added[1].1);
    Ok(vec![
        Row::reading(
            SCENARIO,
            "upload sent → last of 3 replicas answers with it · p50".to_owned(),
            quantile(&convergence, 0.5),
            "ms",
        )
        .reference(format!(
            "min {} ms, max {} ms",
            number(convergence[0]),
            number(convergence[convergence.len() - 1])
        ))
        .note(note.clone()),
        Row::reading(
            SCENARIO,
            "upload sent → last of 3 replicas answers with it · p99".to_owned(),
            p99,
            "ms",
        )
        .goal("≤ 1 s", p99 <= 1000.0)
        .note("LISTEN/NOTIFY, then each replica fetches, compiles, warms up and swaps".to_owned()),
        Row::reading(
            SCENARIO,
            "failed requests during the swaps".to_owned(),
            errors as f64,
            "requests",
        )
        .goal("0", errors == 0)
        .note(note),
        Row::reading(
            SCENARIO,
            "one replica's upload round trip, registry vs local store · p50".to_owned(),
            registry,
            "ms",
        )
        .reference(format!("local store {} ms", number(local)))
        .note(format!(
            "the registry adds {} ms: one transaction with the component's bytes, then the reconcile that applies it",
            number(registry - local)
        )),
    ])
}
